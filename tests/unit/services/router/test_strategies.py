"""Selection strategies: which target a request tries first, and in what order it falls back."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, get_args

import msgspec
import pytest

from services.router.stats import TargetStats
from services.router.strategies import Rotation, order_targets
from services.router.table import ResolvedTarget
from shared.routing import Endpoint, Locality, Strategy


def target(endpoint: str, model: str = "m", *, locality: Locality = "remote", weight: float = 1.0) -> ResolvedTarget:
    return ResolvedTarget(
        endpoint=Endpoint(name=endpoint, provider="openai-compatible", locality=locality),
        model=model,
        subject="modelbus.test.provider",
        endpoint_raw=msgspec.Raw(b"{}"),
        weight=weight,
    )


def order(
    strategy: Any,
    targets: Sequence[ResolvedTarget],
    *,
    route_name: str = "fast",
    default_provider: str | None = None,
    stats: TargetStats | None = None,
    rotation: Rotation | None = None,
    rng: random.Random | None = None,
    streaming: bool = False,
) -> list[str]:
    """Endpoint names (``endpoint:model`` where the model is not ``m``) in the order to try them."""
    ordered = order_targets(
        strategy,
        targets,
        route_name=route_name,
        default_provider=default_provider,
        stats=stats or TargetStats(),
        rotation=rotation or Rotation(),
        rng=rng or random.Random(0),
        streaming=streaming,
    )
    return [t.endpoint.name if t.model == "m" else f"{t.endpoint.name}:{t.model}" for t in ordered]


def measure(
    stats: TargetStats, t: ResolvedTarget, *, latency_s: float | None = None, ttft_s: float | None = None
) -> None:
    stats.start(t.key)
    stats.finish(t.key, latency_s=latency_s, ttft_s=ttft_s, error_status=None)


def assert_binomial_share(hits: int, n: int, p: float) -> None:
    """``hits / n`` lies within four standard deviations of ``p`` (fails by chance about once in 16,000)."""
    tolerance = 4 * math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= tolerance, f"share {hits / n:.4f}, expected {p} ± {tolerance:.4f}"


ABC = (target("a"), target("b"), target("c"))
ALL_STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)


# ---------------------------------------------------------------- every strategy


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_every_strategy_returns_each_target_exactly_once(strategy: Strategy) -> None:
    targets = (*ABC, target("d", locality="local", weight=5), target("a", "other"))
    assert sorted(order(strategy, targets, default_provider="c")) == ["a", "a:other", "b", "c", "d"]


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_a_single_target_is_the_only_choice(strategy: Strategy) -> None:
    assert order(strategy, [target("solo")]) == ["solo"]


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_no_targets_gives_nothing_to_try(strategy: Strategy) -> None:
    assert order(strategy, []) == []


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy 'fastest'"):
        order("fastest", ABC)


# ---------------------------------------------------------------- failover


def test_failover_tries_the_default_provider_first_then_the_declared_order() -> None:
    assert order("failover", ABC, default_provider="b") == ["b", "a", "c"]


def test_failover_moves_every_model_of_the_default_provider_forward_in_declared_order() -> None:
    targets = (target("a"), target("b", "x"), target("c"), target("b", "y"))
    assert order("failover", targets, default_provider="b") == ["b:x", "b:y", "a", "c"]


def test_failover_without_a_matching_default_provider_keeps_the_declared_order() -> None:
    assert order("failover", ABC) == ["a", "b", "c"]
    assert order("failover", ABC, default_provider="elsewhere") == ["a", "b", "c"]


# ---------------------------------------------------------------- prefer-local


def test_prefer_local_tries_local_endpoints_first_keeping_order_within_each_group() -> None:
    targets = (
        target("cloud-1"),
        target("ollama", locality="local"),
        target("cloud-2"),
        target("mock", locality="local"),
    )
    assert order("prefer-local", targets) == ["ollama", "mock", "cloud-1", "cloud-2"]


def test_prefer_local_with_only_remote_endpoints_keeps_the_declared_order() -> None:
    assert order("prefer-local", ABC) == ["a", "b", "c"]


# ---------------------------------------------------------------- round-robin


def test_round_robin_starts_consecutive_requests_at_consecutive_targets() -> None:
    rotation = Rotation()
    assert [order("round-robin", ABC, rotation=rotation) for _ in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_round_robin_spreads_first_picks_evenly_over_three_rounds() -> None:
    rotation = Rotation()
    firsts = Counter(order("round-robin", ABC, rotation=rotation)[0] for _ in range(3 * len(ABC)))
    assert firsts == {"a": 3, "b": 3, "c": 3}


def test_round_robin_rotates_each_route_independently() -> None:
    rotation = Rotation()
    pair = (target("x"), target("y"))
    picks = [
        (order("round-robin", ABC, route_name="fast", rotation=rotation)[0],
         order("round-robin", pair, route_name="smart", rotation=rotation)[0])
        for _ in range(3)
    ]  # fmt: skip
    assert picks == [("a", "x"), ("b", "y"), ("c", "x")]


def test_round_robin_survives_a_route_shrinking_between_revisions() -> None:
    rotation = Rotation()
    for _ in range(2):
        order("round-robin", ABC, rotation=rotation)
    assert order("round-robin", ABC[:2], rotation=rotation)[0] in {"a", "b"}


def test_round_robin_forgets_positions_rather_than_growing_without_bound() -> None:
    rotation = Rotation(max_routes=2)
    for name in ("r1", "r2", "r3"):  # the third route clears the counters
        order("round-robin", ABC, route_name=name, rotation=rotation)
    assert order("round-robin", ABC, route_name="r1", rotation=rotation)[0] == "a"  # restarted, not "b"
    assert order("round-robin", ABC, route_name="r3", rotation=rotation)[0] == "b"  # kept rotating


# ---------------------------------------------------------------- weighted


def test_weighted_picks_first_in_proportion_to_weight() -> None:
    targets = (target("light", weight=1), target("heavy", weight=3))
    rng = random.Random(1234)
    draws = 4000
    heavy_first = sum(order("weighted", targets, rng=rng)[0] == "heavy" for _ in range(draws))
    assert_binomial_share(heavy_first, draws, 0.75)
    assert 0.72 <= heavy_first / draws <= 0.78


def test_weighted_fallbacks_are_weight_biased_too() -> None:
    # With weights 1:1:2, when "heavy" is not drawn first it is drawn second with probability 2/3.
    targets = (target("a", weight=1), target("b", weight=1), target("heavy", weight=2))
    rng = random.Random(99)
    orders = [order("weighted", targets, rng=rng) for _ in range(4000)]
    heavy_not_first = [o for o in orders if o[0] != "heavy"]
    assert_binomial_share(len(heavy_not_first), len(orders), 0.5)
    assert_binomial_share(sum(o[1] == "heavy" for o in heavy_not_first), len(heavy_not_first), 2 / 3)


# ---------------------------------------------------------------- least-latency


def test_least_latency_tries_unmeasured_targets_first_then_the_fastest() -> None:
    stats = TargetStats()
    a, b, c, d = (*ABC, target("d"))
    measure(stats, a, latency_s=0.9)
    measure(stats, c, latency_s=0.2)
    assert order("least-latency", (a, b, c, d), stats=stats) == ["b", "d", "c", "a"]


def test_least_latency_ranks_streams_by_time_to_first_token() -> None:
    stats = TargetStats()
    a, b, c = ABC
    measure(stats, a, latency_s=0.5, ttft_s=0.4)
    measure(stats, b, latency_s=3.0, ttft_s=0.1)  # slow to finish, quick to start
    measure(stats, c, latency_s=0.3)  # never streamed: its total latency stands in
    assert order("least-latency", ABC, stats=stats, streaming=False) == ["c", "a", "b"]
    assert order("least-latency", ABC, stats=stats, streaming=True) == ["b", "c", "a"]


def test_least_latency_keeps_declared_order_on_ties() -> None:
    stats = TargetStats()
    for t in ABC:
        measure(stats, t, latency_s=0.5)
    assert order("least-latency", ABC, stats=stats) == ["a", "b", "c"]


# ---------------------------------------------------------------- least-busy


def test_least_busy_tries_the_target_with_fewest_requests_in_flight_first() -> None:
    stats = TargetStats()
    a, b, c = ABC
    for t, n in ((a, 3), (b, 1), (c, 2)):
        for _ in range(n):
            stats.start(t.key)
    assert order("least-busy", ABC, stats=stats) == ["b", "c", "a"]
    stats.finish(a.key, latency_s=None, ttft_s=None, error_status=None)
    stats.finish(a.key, latency_s=None, ttft_s=None, error_status=None)
    stats.finish(a.key, latency_s=None, ttft_s=None, error_status=None)
    assert order("least-busy", ABC, stats=stats) == ["a", "b", "c"]


def test_least_busy_keeps_declared_order_on_ties() -> None:
    stats = TargetStats()
    stats.start(ABC[0].key)
    assert order("least-busy", ABC, stats=stats) == ["b", "c", "a"]
