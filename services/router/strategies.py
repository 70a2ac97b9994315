"""Selection strategies: the order in which a route's targets are tried.

:func:`order_targets` returns every target of a route, best first. The router
sends the request to the first and, on a retryable error, moves down the list.
A strategy is set per alias; aliases that set none use the routing defaults
(Aegis ``llm_selection``).

==============  ==========================================  ===============================================
Strategy        First choice                                With several stateless routers
==============  ==========================================  ===============================================
failover        ``default_provider``'s targets, then the    Deterministic: every router picks the same.
                declared order
prefer-local    targets whose endpoint keeps data on the    Deterministic: every router picks the same.
                host (``locality: local``), then the rest
round-robin     the next target in a per-route rotation     Rotates per router: N routers may pick the
                                                            same target at the same moment, but each
                                                            spreads its own requests evenly, so the
                                                            overall spread is even over time.
weighted        a random target, proportional to            Random per request, so the proportions hold
                ``weight``; fallbacks drawn the same way    overall in expectation, whatever the number
                without replacement                         of routers.
least-latency   unmeasured targets (declared order), then   Each router uses its own observations (no
                the lowest latency EWMA (time to first      shared state): two routers can disagree
                token for streams)                          briefly.
least-busy      the fewest requests in flight               Each router counts only its own requests:
                                                            two routers can disagree briefly.
==============  ==========================================  ===============================================

Where two targets tie, declared order decides. This module is pure: the
per-router state it reads or advances (:class:`TargetStats`,
:class:`Rotation`, the random generator) is passed in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Never, NoReturn

from services.router.stats import TargetStats
from services.router.table import ResolvedTarget
from shared.routing import Strategy

DEFAULT_MAX_ROUTES = 4096


class Rotation:
    """Per-route round-robin counters of one router.

    Not thread-safe: the router calls it from its single asyncio thread.
    """

    __slots__ = ("_counters", "_max_routes")

    def __init__(self, *, max_routes: int = DEFAULT_MAX_ROUTES) -> None:
        self._counters: dict[str, int] = {}
        self._max_routes = max_routes

    def next_start(self, route_name: str, n: int) -> int:
        """Index, below ``n``, at which this request's rotation starts; advances the counter."""
        counters = self._counters
        count = counters.get(route_name)
        if count is None:
            # Forgetting positions only restarts rotations at the first target,
            # which is harmless; it keeps request-named routes from piling up.
            if len(counters) >= self._max_routes:
                counters.clear()
            count = 0
        start = count % n
        counters[route_name] = start + 1
        return start


def order_targets(
    strategy: Strategy,
    targets: Sequence[ResolvedTarget],
    *,
    route_name: str,
    default_provider: str | None,
    stats: TargetStats,
    rotation: Rotation,
    rng: random.Random,
    streaming: bool,
) -> list[ResolvedTarget]:
    """All of ``targets`` in the order to try them: the first is the pick, the rest the fallbacks.

    ``route_name`` keys the round-robin rotation, ``default_provider`` (an
    endpoint name) leads failover, ``streaming`` makes least-latency compare
    time to first token. Raises :class:`ValueError` for a strategy it does
    not know, which config validation rules out.
    """
    match strategy:
        case "failover":
            return _failover(targets, default_provider)
        case "prefer-local":
            return _prefer_local(targets)
        case "round-robin":
            return _round_robin(targets, route_name, rotation)
        case "weighted":
            return _weighted(targets, rng)
        case "least-latency":
            return _least_latency(targets, stats, streaming)
        case "least-busy":
            return _least_busy(targets, stats)
        case _:
            _unknown_strategy(strategy)


def _unknown_strategy(strategy: Never) -> NoReturn:
    # Typed ``Never`` so that mypy flags a strategy added to the literal but not
    # handled above; at run time an unvalidated string still fails loudly.
    raise ValueError(f"unknown routing strategy {strategy!r}")


def _failover(targets: Sequence[ResolvedTarget], default_provider: str | None) -> list[ResolvedTarget]:
    if default_provider is None:
        return list(targets)
    first = [t for t in targets if t.endpoint.name == default_provider]
    if not first:
        return list(targets)
    first.extend(t for t in targets if t.endpoint.name != default_provider)
    return first


def _prefer_local(targets: Sequence[ResolvedTarget]) -> list[ResolvedTarget]:
    local = [t for t in targets if t.endpoint.locality == "local"]
    if len(local) == len(targets) or not local:
        return list(targets)
    local.extend(t for t in targets if t.endpoint.locality != "local")
    return local


def _round_robin(targets: Sequence[ResolvedTarget], route_name: str, rotation: Rotation) -> list[ResolvedTarget]:
    n = len(targets)
    if n < 2:  # nothing to rotate; keeps single-target routes out of the counters
        return list(targets)
    start = rotation.next_start(route_name, n)
    return [*targets[start:], *targets[:start]]


def _weighted(targets: Sequence[ResolvedTarget], rng: random.Random) -> list[ResolvedTarget]:
    """Successive weighted draws without replacement, so fallbacks are weight-biased too."""
    if len(targets) < 2:
        return list(targets)
    remaining = list(targets)
    weights = [t.weight for t in remaining]
    ordered: list[ResolvedTarget] = []
    while len(remaining) > 1:
        point = rng.random() * sum(weights)
        last = len(weights) - 1
        i = 0
        # Rounding can leave ``point`` at or past the final sum; the last target takes it.
        while i < last and point >= weights[i]:
            point -= weights[i]
            i += 1
        ordered.append(remaining.pop(i))
        del weights[i]
    ordered.append(remaining[0])
    return ordered


def _least_latency(targets: Sequence[ResolvedTarget], stats: TargetStats, streaming: bool) -> list[ResolvedTarget]:
    """Unmeasured targets first, so they get measured; then ascending latency EWMA."""
    unmeasured: list[ResolvedTarget] = []
    measured: list[tuple[float, ResolvedTarget]] = []
    for t in targets:
        ewma = stats.latency_ewma(t.key, streaming=streaming)
        if ewma is None:
            unmeasured.append(t)
        else:
            measured.append((ewma, t))
    if measured:
        measured.sort(key=_first)  # stable: ties keep declared order
        unmeasured.extend(t for _, t in measured)
    return unmeasured


def _first(pair: tuple[float, ResolvedTarget]) -> float:
    return pair[0]


def _least_busy(targets: Sequence[ResolvedTarget], stats: TargetStats) -> list[ResolvedTarget]:
    in_flight = stats.in_flight
    return sorted(targets, key=lambda t: in_flight(t.key))  # stable: ties keep declared order
