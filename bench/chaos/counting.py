"""Counting at the wire: what each message is, what became of each request, and one fault's figures.

Everything here is pure (no network, no clock): the load generator records
every message that reaches a request's reply subject with its arrival time,
and these functions turn those records into the table ``make chaos`` prints.

A **final answer** is, for a non-streamed request, a message with
``Modelbus-Status`` and no ``Modelbus-Stream`` header; for a stream, the one
message with ``Modelbus-Stream: end``. A NATS *no responders* status (``Status:
503`` from the server itself, no modelbus headers) is a final answer too: the
client learns at once that nobody took the request. Keepalives
(``Modelbus-Keepalive: 1``) and provider heartbeats are never answers.

Each request lands in exactly one category, checked in this order:

``duplicated``
    two or more final answers (whatever their statuses).
``never``
    no final answer by its deadline + :data:`NEVER_GRACE_S`, and no silence of
    :data:`MAX_SILENCE_S` that the contract would let a client act on.
``lost_silence``
    no final answer by then, but the stack promised keepalives and the request
    heard nothing for :data:`MAX_SILENCE_S`: a client following the contract
    gives up with a clear, retryable error (the bundled client raises
    ``RequestLost``). Shown apart from ``error`` so both stay visible.
``bad_stream``
    one final answer, status 200, but the stream's ``Modelbus-Seq`` numbers were
    not exactly 0..n in arrival order (a gap, a repeat, a reorder): a wrong
    answer dressed as a right one.
``ok``
    one final answer with status 200 (and, for streams, every seq in order).
``error``
    one final answer with an error status: a clear error.

The header names are spelled out here rather than imported from
``shared.headers``: the harness checks the contract from outside, so a mistake
in the contract module cannot hide itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_SILENCE_S = 5.0
"""The contract's longest silence between messages of a request that still runs (``MAX_SILENCE_S``)."""
NEVER_GRACE_S = 3.0
"""A request with no final answer by its deadline plus this long is *never answered*."""
DUPLICATE_GRACE_S = 1.5
"""Messages are still recorded this long after a request's deadline, so late second answers are seen
(the router may answer up to 1 s after the deadline when a provider's outcome is late)."""
AFTER_FAULT_WINDOW_S = 2.0
"""The latency column covers requests started within this long after the fault."""

STATUS = "Modelbus-Status"
STREAM = "Modelbus-Stream"
STREAM_END = "end"
SEQ = "Modelbus-Seq"
KEEPALIVE = "Modelbus-Keepalive"
HEARTBEAT = "Modelbus-Heartbeat"
REQUEST_ID = "Modelbus-Request-Id"
NATS_STATUS = "Status"
"""The header nats-py fills from a status line the server itself sent (``503`` = no responders)."""


class Kind(StrEnum):
    """What one message on a reply subject is."""

    FINAL = "final"
    CHUNK = "chunk"
    KEEPALIVE = "keepalive"
    HEARTBEAT = "heartbeat"
    NO_RESPONDERS = "no_responders"
    OTHER = "other"
    """Anything else: e.g. an error without a terminator on a stream."""


class Outcome(StrEnum):
    """What became of one request (see the module docstring for the exact rules)."""

    OK = "ok"
    ERROR = "error"
    LOST_SILENCE = "lost_silence"
    NEVER = "never"
    DUPLICATED = "duplicated"
    BAD_STREAM = "bad_stream"


FAILURES = (Outcome.NEVER, Outcome.DUPLICATED, Outcome.BAD_STREAM)
"""Outcomes that break the contract outright; ``make chaos`` exits non-zero when any is counted."""


@dataclass(frozen=True)
class WireMessage:
    """One message as it arrived on a request's reply subject (the body is not kept, only its size)."""

    at: float
    """Arrival time, ``time.monotonic()`` seconds."""
    kind: Kind
    status: int | None = None
    """``Modelbus-Status`` (or the NATS status of a no-responders message)."""
    seq: int | None = None
    """``Modelbus-Seq``, when present and a number."""
    request_id: str | None = None
    """The ``Modelbus-Request-Id`` it echoed, if any."""
    size: int = 0


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def classify_message(headers: Mapping[str, str] | None, body_size: int, *, streamed: bool, at: float) -> WireMessage:
    """Turn one received message into a :class:`WireMessage` (its headers decide its kind)."""
    hdrs: Mapping[str, str] = headers or {}
    status = _int_or_none(hdrs.get(STATUS))
    seq = _int_or_none(hdrs.get(SEQ))
    request_id = hdrs.get(REQUEST_ID)
    kind: Kind
    if STATUS not in hdrs and hdrs.get(NATS_STATUS) == "503" and body_size == 0:
        kind, status = Kind.NO_RESPONDERS, 503
    elif hdrs.get(KEEPALIVE) == "1":
        kind = Kind.KEEPALIVE
    elif HEARTBEAT in hdrs:
        kind = Kind.HEARTBEAT
    elif streamed:
        if hdrs.get(STREAM) == STREAM_END:
            kind = Kind.FINAL
        elif SEQ in hdrs:
            kind = Kind.CHUNK
        else:
            kind = Kind.OTHER
    elif STATUS in hdrs and STREAM not in hdrs:
        kind = Kind.FINAL
    else:
        kind = Kind.OTHER
    return WireMessage(at=at, kind=kind, status=status, seq=seq, request_id=request_id, size=body_size)


@dataclass
class RequestRecord:
    """One request the load generator sent and every message its reply subject received."""

    request_id: str
    streamed: bool
    started: float
    """When it was published, ``time.monotonic()`` seconds."""
    timeout_s: float
    """The ``Modelbus-Timeout-Ms`` it carried, in seconds."""
    messages: list[WireMessage] = field(default_factory=list)

    @property
    def deadline(self) -> float:
        """``started + timeout_s``."""
        return self.started + self.timeout_s

    @property
    def cutoff(self) -> float:
        """After this, a request without a final answer is *never answered*."""
        return self.deadline + NEVER_GRACE_S

    def finals(self) -> list[WireMessage]:
        """Its final answers in arrival order (no responders included)."""
        return [m for m in self.messages if m.kind in (Kind.FINAL, Kind.NO_RESPONDERS)]

    def first_final(self) -> WireMessage | None:
        """The first final answer that arrived by :attr:`cutoff`, if any."""
        for message in self.finals():
            if message.at <= self.cutoff:
                return message
        return None

    def longest_silence(self, until: float) -> float:
        """The longest gap with no message at all, from the publish to ``until`` (or the first final)."""
        end = until
        final = self.first_final()
        if final is not None:
            end = min(end, final.at)
        last, longest = self.started, 0.0
        for message in self.messages:
            if message.at > end:
                break
            longest = max(longest, message.at - last)
            last = message.at
        return max(longest, end - last)

    def silent_since(self, now: float) -> float:
        """Seconds since the last message (or the publish), for a client deciding to give up."""
        last = self.messages[-1].at if self.messages else self.started
        return now - last


def _stream_in_order(record: RequestRecord, final: WireMessage) -> bool:
    """Every content message numbered 0..n-1 in arrival order, and the 200 terminator numbered n."""
    expected = 0
    for message in record.messages:
        if message is final:
            return message.seq == expected
        if message.kind is Kind.CHUNK:
            if message.seq != expected:
                return False
            expected += 1
    return False


def outcome_of(record: RequestRecord, *, keepalives_promised: bool) -> Outcome:
    """The one category ``record`` falls in (rules in the module docstring)."""
    finals = record.finals()
    if len(finals) >= 2:
        return Outcome.DUPLICATED
    final = record.first_final()
    if final is None:
        if keepalives_promised and record.longest_silence(record.cutoff) >= MAX_SILENCE_S:
            return Outcome.LOST_SILENCE
        return Outcome.NEVER
    if final.status != 200:
        return Outcome.ERROR
    if record.streamed and not _stream_in_order(record, final):
        return Outcome.BAD_STREAM
    return Outcome.OK


def answered_at(record: RequestRecord) -> float | None:
    """When its first final answer arrived (by the cutoff), or ``None``."""
    final = record.first_final()
    return None if final is None else final.at


# ---------------------------------------------------------------- one fault's figures


def nearest_rank(samples: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile by nearest rank: the smallest sample at or above ``q`` % of them.

    ``math.inf`` stands for "no answer" and sorts last, so a p99 is infinite
    as soon as more than 1 % of the samples never got one. ``None`` for no samples.
    """
    ordered = sorted(samples)
    if not ordered:
        return None
    if not 0.0 < q <= 100.0:
        raise ValueError(f"percentile must be within (0, 100], got {q}")
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


def recovery_s(records: Sequence[RequestRecord], outcomes: Mapping[str, Outcome], fault_at: float) -> float | None:
    """Seconds from the fault until requests succeed again.

    Precisely: among requests started at or after the fault, take the last one
    (by start time) that did not end :attr:`Outcome.OK`; recovery is its start
    minus the fault time. From that moment on, every request that started
    succeeded. ``0.0`` when every request started after the fault succeeded;
    ``None`` (not recovered) when no request started after that last failure,
    or none started after the fault at all.
    """
    after = sorted((r for r in records if r.started >= fault_at), key=lambda r: r.started)
    if not after:
        return None
    failed = [r for r in after if outcomes[r.request_id] is not Outcome.OK]
    if not failed:
        return 0.0
    last = failed[-1]
    if last is after[-1]:
        return None
    return last.started - fault_at


@dataclass(frozen=True)
class FaultFigures:
    """One row of the chaos table, plus the detail behind it."""

    sent: int
    counts: dict[str, int]
    """Requests per :class:`Outcome` value."""
    streamed_counts: dict[str, int]
    """The same for the streamed requests alone (the rest were not streamed)."""
    no_responders: int
    """Requests whose only final answer was NATS's own no-responders status (counted as errors)."""
    strays: int
    """Messages after a request's final answer that were not a second final (chunks, keepalives)."""
    leaked_heartbeats: int
    """Provider heartbeats that reached a client's reply subject (they are router-only)."""
    misrouted: int
    """Messages whose ``Modelbus-Request-Id`` named another request."""
    silence_breaches: int
    """Answered requests that went :data:`MAX_SILENCE_S` or longer without any message first."""
    recovery_s: float | None
    after_fault_started: int
    """Requests started within :data:`AFTER_FAULT_WINDOW_S` after the fault."""
    after_fault_p99_ms: float | None
    """p99 (nearest rank) of their latency to a final answer; ``inf`` stands for no answer."""
    in_flight_at_fault: int
    """Requests started before the fault with no final answer before it."""
    in_flight_ok: int
    in_flight_p99_s: float | None
    """p99 (nearest rank) of the time from the fault to an OK answer of those; ``inf`` for any other ending."""
    retryable_at_fault: int = 0
    """Those of :attr:`in_flight_at_fault` with no stream content before the fault: a retry on a healthy
    alternative can still answer them (a stream that has sent content cannot start again elsewhere)."""
    retryable_ok: int = 0
    retryable_p99_s: float | None = None
    """p99 of the time from the fault to an OK answer of the retryable ones; the target "answered within 2 s"."""

    @property
    def failed(self) -> bool:
        """Whether any request broke the contract outright (never answered, duplicated, bad stream)."""
        return any(self.counts.get(o.value, 0) for o in FAILURES)

    def as_json(self) -> dict[str, Any]:
        """JSON values (``inf`` becomes ``None`` with an ``..._unanswered`` flag)."""

        def finite(value: float | None) -> float | None:
            return None if value is None or math.isinf(value) else round(value, 4)

        return {
            "sent": self.sent,
            **{outcome.value: self.counts.get(outcome.value, 0) for outcome in Outcome},
            "streamed": {outcome.value: self.streamed_counts.get(outcome.value, 0) for outcome in Outcome},
            "no_responders": self.no_responders,
            "strays": self.strays,
            "leaked_heartbeats": self.leaked_heartbeats,
            "misrouted": self.misrouted,
            "silence_breaches": self.silence_breaches,
            "recovery_s": finite(self.recovery_s),
            "recovered": self.recovery_s is not None,
            "after_fault_started": self.after_fault_started,
            "after_fault_p99_ms": finite(self.after_fault_p99_ms),
            "after_fault_p99_unanswered": self.after_fault_p99_ms is not None and math.isinf(self.after_fault_p99_ms),
            "in_flight_at_fault": self.in_flight_at_fault,
            "in_flight_ok": self.in_flight_ok,
            "in_flight_p99_s": finite(self.in_flight_p99_s),
            "in_flight_p99_unanswered": self.in_flight_p99_s is not None and math.isinf(self.in_flight_p99_s),
            "retryable_at_fault": self.retryable_at_fault,
            "retryable_ok": self.retryable_ok,
            "retryable_p99_s": finite(self.retryable_p99_s),
            "retryable_p99_unanswered": self.retryable_p99_s is not None and math.isinf(self.retryable_p99_s),
            "contract_broken": self.failed,
        }


def figures(records: Sequence[RequestRecord], fault_at: float, *, keepalives_promised: bool) -> FaultFigures:
    """Count one fault's records (see the module docstring and :func:`recovery_s`)."""
    outcomes = {r.request_id: outcome_of(r, keepalives_promised=keepalives_promised) for r in records}
    counts = {outcome.value: 0 for outcome in Outcome}
    streamed_counts = dict(counts)
    for record in records:
        outcome = outcomes[record.request_id]
        counts[outcome.value] += 1
        if record.streamed:
            streamed_counts[outcome.value] += 1
    no_responders = strays = leaked = misrouted = breaches = 0
    for record in records:
        finals = record.finals()
        if len(finals) == 1 and finals[0].kind is Kind.NO_RESPONDERS:
            no_responders += 1
        if finals:
            strays += sum(
                1 for m in record.messages if m.at > finals[0].at and m.kind not in (Kind.FINAL, Kind.NO_RESPONDERS)
            )
        leaked += sum(1 for m in record.messages if m.kind is Kind.HEARTBEAT)
        misrouted += sum(1 for m in record.messages if m.request_id not in (None, record.request_id))
        if finals and record.longest_silence(finals[0].at) >= MAX_SILENCE_S:
            breaches += 1

    def latency_ms(record: RequestRecord) -> float:
        at = answered_at(record)
        return math.inf if at is None else (at - record.started) * 1000.0

    window = [r for r in records if fault_at <= r.started < fault_at + AFTER_FAULT_WINDOW_S]
    in_flight = [r for r in records if r.started < fault_at and ((at := answered_at(r)) is None or at >= fault_at)]

    retryable = [r for r in in_flight if not any(m.kind is Kind.CHUNK and m.at < fault_at for m in r.messages)]

    def to_ok_s(record: RequestRecord) -> float:
        at = answered_at(record)
        if at is None or outcomes[record.request_id] is not Outcome.OK:
            return math.inf
        return at - fault_at

    return FaultFigures(
        sent=len(records),
        counts=counts,
        streamed_counts=streamed_counts,
        no_responders=no_responders,
        strays=strays,
        leaked_heartbeats=leaked,
        misrouted=misrouted,
        silence_breaches=breaches,
        recovery_s=recovery_s(records, outcomes, fault_at),
        after_fault_started=len(window),
        after_fault_p99_ms=nearest_rank((latency_ms(r) for r in window), 99),
        in_flight_at_fault=len(in_flight),
        in_flight_ok=sum(1 for r in in_flight if outcomes[r.request_id] is Outcome.OK),
        in_flight_p99_s=nearest_rank((to_ok_s(r) for r in in_flight), 99),
        retryable_at_fault=len(retryable),
        retryable_ok=sum(1 for r in retryable if outcomes[r.request_id] is Outcome.OK),
        retryable_p99_s=nearest_rank((to_ok_s(r) for r in retryable), 99),
    )
