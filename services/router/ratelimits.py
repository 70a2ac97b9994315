"""Rate limits (requests and tokens per minute per key, agent or namespace), shared by every router.

Each RateLimit counts, per value of its scope (every value, or only ``match``), the requests and
tokens of each calendar minute in the shared counters of :mod:`services.router.windows`: the
**sliding-window approximation** (the previous minute weighs ``1 - elapsed / 60``), updated with
compare-and-swap, capacity leased in blocks of ``limit // 64``.

Tolerance, for a limit ``L`` with ``R`` routers:

* In every calendar minute, admitted requests are at most ``L``, exactly, however many routers
  (every admission, or lease of a block, is a conditional write checked against ``L``).
* Under saturation a minute admits at least ``L - R * (L // 64)``: capacity a router leased and
  did not use by the minute's end is lost (for ``L < 128`` there are no leases, nothing is lost).
* Over any 60 s span not aligned to the minute, the approximation assumes the previous minute's
  requests were spread evenly; in the worst case (all of them at its very end) such a span may
  hold up to ``2 L``. Steady traffic stays within ``L`` plus about one request.
* ``tpm`` reserves the estimate (the prompt estimate plus ``max_tokens``, or
  :data:`OUTPUT_ESTIMATE` without it) and is corrected to the real usage after the answer: tokens
  may exceed ``L`` by what the requests in flight used beyond their estimates.
* Windows follow each router's wall clock: routers whose clocks differ by ``s`` seconds disagree
  on the window for ``s`` seconds around each minute.

A refusal is a 429 ``rate_limited`` whose ``retry_after`` is when the window frees enough room
for this request if nothing else is admitted meanwhile (:func:`services.router.windows.wait_s`),
not a guess. A request under several limits that one refuses is counted by none.

Cost: nothing when no limit applies (the router tests an empty tuple; no I/O). When one does:
nothing for a request its router's lease holds; otherwise one KV write (compare-and-swap on the
revision last seen; a conflict with another router costs one read and one more write), plus one
read of the previous minute per value and minute. Token corrections go in the background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from services.router.windows import SharedWindows, Take, Ticket, counter_base
from shared import headers as H
from shared.errors import RateLimited
from shared.routing import RateLimit
from shared.usage import GATEWAY_CALLER, caller_of, namespace_of

OUTPUT_ESTIMATE = 256
"""Output tokens reserved against a ``tpm`` limit for a request that sets no ``max_tokens``."""


# ------------------------------------------------------------------ rate limits


class LimitCount(msgspec.Struct, kw_only=True, frozen=True):
    """One limited value's present window as this router last saw it (for metrics)."""

    name: str
    scope: str
    value: str
    requests: int
    tokens: int
    rpm: int | None
    tpm: int | None


def value_of(limit: RateLimit, reply: str, headers: Mapping[str, str]) -> str | None:
    """The key, agent or namespace a request is counted under for ``limit`` (``None``: not limited).

    ``key`` is the gateway key name for requests from the gateway (the only caller whose
    ``Modelbus-Key`` is trusted), else the broker identity of the reply inbox."""
    if limit.scope == "key":
        caller = caller_of(reply)
        if caller == GATEWAY_CALLER:
            return headers.get(H.KEY) or caller
        return caller
    agent = headers.get(H.AGENT)
    return agent if limit.scope == "agent" else namespace_of(agent)


class RateLimiter:
    """Admits requests under the RateLimits of the current table."""

    def __init__(self, windows: SharedWindows) -> None:
        self.windows = windows
        self._known: dict[str, tuple[RateLimit, str]] = {}

    async def admit(
        self, limits: Sequence[RateLimit], reply: str, headers: Mapping[str, str], estimate: int
    ) -> list[Ticket]:
        """Count the request under every applying limit, or refuse it (429) and count it under none."""
        tickets: list[Ticket] = []
        for limit in limits:
            value = value_of(limit, reply, headers)
            if value is None or (limit.match is not None and value != limit.match):
                continue
            base = counter_base("r", limit.name, value)
            if base not in self._known and len(self._known) < 10_000:
                self._known[base] = (limit, value)
            try:
                take = await self.windows.take(base, limit.rpm, limit.tpm, estimate)
            except BaseException:
                self._undo(tickets)
                raise
            if take.ticket is None:
                self._undo(tickets)
                raise _refusal(limit, value, take, estimate)
            tickets.append(take.ticket)
        return tickets

    def _undo(self, tickets: Sequence[Ticket]) -> None:
        for ticket in tickets:
            self.windows.correct_later(ticket, -1, -ticket.tokens)

    def snapshot(self) -> list[LimitCount]:
        """Present counts against limits of every value this router has seen, from memory (no I/O)."""
        out = []
        for base, (limit, value) in self._known.items():
            requests, tokens = self.windows.counts(base)
            out.append(
                LimitCount(
                    name=limit.name,
                    scope=limit.scope,
                    value=value,
                    requests=requests,
                    tokens=tokens,
                    rpm=limit.rpm,
                    tpm=limit.tpm,
                )
            )
        return out


def _refusal(limit: RateLimit, value: str, take: Take, estimate: int) -> RateLimited:
    per = []
    if limit.rpm is not None:
        per.append(f"{limit.rpm} requests")
    if limit.tpm is not None:
        per.append(f"{limit.tpm} tokens")
    what = f"rate limit {limit.name!r} ({limit.scope} {value!r}) allows {' and '.join(per)} per minute"
    if take.wait_s is None:
        return RateLimited(
            f"{what}; this request needs ~{estimate} tokens, more than the limit itself",
            code="rate_limited",
            retryable=False,
        )
    return RateLimited(
        f"{what}; this minute has {take.requests} requests and {take.tokens} tokens; retry in {take.wait_s:.3f}s",
        code="rate_limited",
        retry_after=take.wait_s,
    )
