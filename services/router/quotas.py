"""Quota shaping: keep each endpoint within the provider quota it declares (``rpm``, ``tpm``).

Routers count what they send to an endpoint per minute in the same shared counters
as the rate limits (:class:`services.router.windows.SharedWindows`, the same
sliding-window approximation, leases and tolerance). Before an attempt goes to an endpoint
with a quota, the router takes one request (and the request's token estimate, for
``tpm``) from the endpoint's window. When the endpoint is at its quota, the attempt
loop (:mod:`services.router.forward`) skips the target, without counting an attempt
or a breaker failure, and tries the next target of the plan. When every target left
is at its quota, it waits until the soonest one frees up, if that is before the
request's deadline; otherwise it answers 429 ``rate_limited`` with that wait as
``Retry-After``. The upstream never sees the request that would have earned its 429.

Endpoints without a quota cost nothing: one attribute test per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.router.windows import SharedWindows, Ticket, counter_base
from shared.routing import Endpoint


@dataclass(frozen=True, slots=True)
class QuotaCount:
    """One endpoint's present window as this router last saw it (for metrics)."""

    endpoint: str
    requests: int
    tokens: int
    rpm: int | None
    tpm: int | None


def has_quota(endpoint: Endpoint) -> bool:
    return endpoint.rpm is not None or endpoint.tpm is not None


class EndpointQuotas:
    """Per-endpoint request and token counts, shared by every router."""

    def __init__(self, windows: SharedWindows) -> None:
        self.windows = windows
        self._known: dict[str, Endpoint] = {}

    async def take(self, endpoint: Endpoint, estimate: int) -> tuple[Ticket | None, float | None]:
        """``(ticket, 0)`` when the attempt may go; ``(None, seconds)`` when the endpoint is at its
        quota for that long; ``(None, None)`` when the request can never fit (estimate above ``tpm``)."""
        base = counter_base("q", endpoint.name)
        self._known[base] = endpoint
        take = await self.windows.take(base, endpoint.rpm, endpoint.tpm, estimate)
        return take.ticket, take.wait_s

    def give_back(self, ticket: Ticket) -> None:
        """Return what :meth:`take` took for an attempt that did not go (its target's breaker is open)."""
        self.windows.correct_later(ticket, -1, -ticket.tokens)

    def snapshot(self) -> list[QuotaCount]:
        """Present counts against quotas of every endpoint this router sent to, from memory (no I/O)."""
        out = []
        for base, endpoint in self._known.items():
            requests, tokens = self.windows.counts(base)
            out.append(QuotaCount(endpoint.name, requests, tokens, endpoint.rpm, endpoint.tpm))
        return out
