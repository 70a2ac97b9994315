"""One request on its way through the router (:class:`Call`), and what the forwarder needs of the
router's per-target statistics and shared breakers (:class:`Stats`, :class:`Breakers`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from nats.aio.msg import Msg

from services.router.breakers import Decision
from services.router.budgets import Hold
from services.router.ledger import Outcome
from services.router.table import ResolvedTarget, Route
from services.router.windows import Ticket
from shared.mux import Signal
from shared.routing import RoutingDefaults

Key = tuple[str, str]


class Stats(Protocol):
    def start(self, key: Key) -> None: ...
    def finish(self, key: Key, *, latency_s: float | None, ttft_s: float | None, error_status: int | None) -> None: ...


class Breakers(Protocol):
    def decide(self, key: Key) -> Decision: ...
    async def failure(self, key: Key, defaults: RoutingDefaults) -> None: ...
    async def success(self, key: Key) -> None: ...


@dataclass
class Call:
    """One request on its way through the plan."""

    msg: Msg
    reply: str
    request_id: str
    route: Route
    plan: list[ResolvedTarget]
    deadline: float
    revision: int
    defaults: RoutingDefaults
    router_id: str
    signal: Signal
    """Keepalives to the client while the router holds the request (between attempts)."""
    streaming: bool = False
    format: str | None = None
    """``Modelbus-Format`` of the request: the body is a client's own, in that API's format."""
    operation: str | None = None
    """``Modelbus-Operation``: ``count_tokens``, or ``None`` for a chat request."""
    credential: str | None = None
    run_id: str | None = None
    budget_hold: Hold | None = None
    """What the request reserves of its budgets; settled by the router once the answer is out."""
    tried: list[str] = field(default_factory=list)
    outcome: Outcome = field(default_factory=lambda: Outcome(asyncio.get_running_loop().time()))
    """What the final answer was, for the usage ledger (:mod:`services.router.ledger`)."""
    started: float = field(default_factory=time.perf_counter)
    """``time.perf_counter()`` when the router took the request (``loop.time()`` may tick in whole
    milliseconds, too coarse for ``Modelbus-Overhead-Ms``)."""
    attempts_s: float = 0.0
    """Time spent in attempts that ended (upstream time for ``Modelbus-Overhead-Ms``)."""
    tokens_estimate: int = 0
    """Prompt estimate plus ``max_tokens``: what rate limits and endpoint quotas reserve."""
    limit_tickets: list[Ticket] = field(default_factory=list)
    """What the RateLimits counted for this request (corrected to the real usage after)."""
    quota_tickets: list[Ticket] = field(default_factory=list)
    """What each attempt took from its endpoint's quota, in order."""

    def left(self) -> float:
        return self.deadline - time.monotonic()
