"""The reply protocol in one place: deadlines, terminators, keepalives, time limits.

Every process that answers a request builds its reply headers here, and every
process that waits for one reads them here (docs/contract.md, "Replies").

* **One final answer per request.** A non-streamed request gets one message
  with ``Modelbus-Status``; a stream gets chunks numbered from 0 by
  ``Modelbus-Seq`` and ends with the one message carrying ``Modelbus-Stream:
  end`` (:func:`stream_end`). An error terminator (status other than 200) ends
  a stream whatever its sequence number.
* **Keepalives.** Streams always, and non-streamed requests that send
  ``Modelbus-Keepalive: 1``, get a bodiless :func:`keepalive` message whenever
  nothing else was sent for :data:`KEEPALIVE_S`; a client that hears nothing for
  :data:`MAX_SILENCE_S` may take the request for lost.
* **Heartbeats.** A provider worker tells its router it is alive every
  :data:`HEARTBEAT_S` while a call is in flight; a router that hears nothing for
  :data:`LOST_AFTER_S` asks the workers what became of the call (:data:`ASK_S`;
  the outcome may have been lost on the way) and, with no answer, takes the
  worker for lost. A worker that may already be
  taken for lost (silent for :data:`FENCE_AFTER_S`, or reconnected) stops
  answering the client directly (it is *fenced*).
* **Deadlines.** ``Modelbus-Timeout-Ms`` is ASCII digits only, from 1 to
  :data:`MAX_TIMEOUT_MS` (:func:`parse_timeout_ms`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from shared import headers as H
from shared.errors import InvalidRequest

HEARTBEAT_S = 0.25
"""How often a provider worker signals a call in flight to its router."""
FENCE_AFTER_S = 0.6
"""A worker silent towards its router this long no longer delivers directly."""
LOST_AFTER_S = 1.0
"""A router that hears nothing about an attempt this long asks the workers about it."""
ASK_S = 0.25
"""How long a router waits for a worker to say what became of a silent attempt; with no
answer it takes the worker for lost (``services/providers/outcomes.py``)."""
DEADLINE_GRACE_S = 1.0
"""How long a router waits past the deadline for a worker's own answer before it answers 408."""
KEEPALIVE_S = 1.0
"""Whoever holds a request sends a keepalive when it sent nothing else this long."""
MAX_SILENCE_S = 5.0
"""The contract's longest silence on a request that gets keepalives."""
CLIENT_GRACE_S = 2.0
"""How long past its own deadline a client waits for the router's answer (which may be a 408)."""
MAX_TIMEOUT_MS = 3_600_000
"""The longest ``Modelbus-Timeout-Ms`` accepted: one hour."""
_MAX_TIMEOUT_DIGITS = len(str(MAX_TIMEOUT_MS))

KEEPALIVE_HEADERS: Mapping[str, str] = {H.KEEPALIVE: "1"}
"""The headers of a keepalive message (no body, no sequence number, no status)."""


def parse_timeout_ms(raw: str | None) -> int | None:
    """The value of ``Modelbus-Timeout-Ms``, ``None`` when absent.

    Only ASCII digits are accepted (no sign, space, underscore or other
    scripts' digits), from 1 to :data:`MAX_TIMEOUT_MS`; anything else raises a
    400 that names the header.
    """
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest(
            f"{H.TIMEOUT_MS} must be a whole number of milliseconds in ASCII digits, got {raw[:40]!r}",
            param=H.TIMEOUT_MS,
        )
    digits = raw.lstrip("0")
    value = int(digits) if digits and len(digits) <= _MAX_TIMEOUT_DIGITS else (0 if not digits else MAX_TIMEOUT_MS + 1)
    if not 1 <= value <= MAX_TIMEOUT_MS:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise InvalidRequest(
            f"{H.TIMEOUT_MS} must be between 1 and {MAX_TIMEOUT_MS} ms, got {shown}", param=H.TIMEOUT_MS
        )
    return value


def timeout_s(headers: Mapping[str, str], default_ms: int) -> float:
    """The time a request may take, in seconds: its header, or ``default_ms``."""
    ms = parse_timeout_ms(headers.get(H.TIMEOUT_MS))
    return (ms if ms is not None else default_ms) / 1000


def time_left_s(headers: Mapping[str, str], cap_ms: int) -> float:
    """A worker's time limit: the tighter of ``cap_ms`` and the time left the caller sent.

    A malformed value from the caller counts as absent (the router sends only
    what it parsed itself).
    """
    try:
        ms = parse_timeout_ms(headers.get(H.TIMEOUT_MS))
    except InvalidRequest:
        ms = None
    return (cap_ms if ms is None else min(cap_ms, ms)) / 1000


def stream_end(seq: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers that make a message a stream's terminator at position ``seq``."""
    out = dict(extra) if extra else {}
    out[H.STREAM] = H.STREAM_END
    out[H.SEQ] = str(seq)
    return out


def chunk_headers(seq: int) -> dict[str, str]:
    """The headers of stream chunk number ``seq``."""
    return {H.SEQ: str(seq)}


def is_keepalive(headers: Mapping[str, str] | None) -> bool:
    """Whether a message is a keepalive (skip it)."""
    return bool(headers) and headers.get(H.KEEPALIVE) == "1"  # type: ignore[union-attr]


def is_stream_end(headers: Mapping[str, str] | None) -> bool:
    """Whether a message ends its stream."""
    return bool(headers) and headers.get(H.STREAM) == H.STREAM_END  # type: ignore[union-attr]


def status_of(headers: Mapping[str, str] | None, default: int = 0) -> int:
    """``Modelbus-Status`` as a number; ``default`` when absent, 0 when unreadable."""
    raw = headers.get(H.STATUS) if headers else None
    if raw is None:
        return default
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) == 3 else 0


def is_no_responders(headers: Mapping[str, str] | None, data: bytes) -> bool:
    """Whether a message is the server's "no responders" status on a request's reply subject."""
    return bool(headers) and headers.get("Status") == "503" and not data  # type: ignore[union-attr]


class _StreamFlag(msgspec.Struct):
    stream: bool = False


_stream_flag = msgspec.json.Decoder(_StreamFlag)
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true\b')


def wants_stream(body: bytes) -> bool:
    """Whether a request body asks for a stream, even when the body is invalid.

    An error for a request that failed validation must still end the stream
    the client waits for, so this reads only ``stream`` and, for a body that is
    not JSON at all, looks for ``"stream": true`` in the bytes.
    """
    try:
        return _stream_flag.decode(body).stream
    except msgspec.ValidationError:
        return False  # "stream" has another type: the client cannot be streaming
    except msgspec.DecodeError:
        return _STREAM_TRUE.search(body) is not None
