"""The load generator and its statistics, without any server."""

from __future__ import annotations

import asyncio

import pytest

from bench.load import (
    LoadResult,
    RequestFailed,
    Send,
    cdf_points,
    closed_loop,
    distribution,
    interleaved,
    percentile,
    rotated,
    split,
)


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]
    assert percentile(samples, 50) == pytest.approx(2.5)
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 4.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_samples_and_out_of_range_quantiles() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_of_nothing_is_all_unmeasured() -> None:
    assert set(distribution([]).values()) == {None}
    assert distribution([1.0, 3.0])["mean_ms"] == 2.0


def test_cdf_points_are_sorted_and_end_at_one() -> None:
    xs, ys = cdf_points([3.0, 1.0, 2.0, 2.0])
    assert xs == [1.0, 2.0, 2.0, 3.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]


def test_rotation_puts_every_contender_first_once_per_cycle() -> None:
    names = ["direct", "litellm", "modelbus"]
    orders = [rotated(names, i) for i in range(3)]
    assert [order[0] for order in orders] == names
    assert all(sorted(order) == sorted(names) for order in orders)
    assert rotated(names, 3) == names


def test_split_shares_add_up_to_the_total() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(2000, 7)) == 2000
    assert split(2, 4) == [1, 1, 0, 0]


def test_failures_are_counted_and_never_stop_the_load() -> None:
    calls = 0

    async def every_third_fails() -> None:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise RequestFailed("HTTP 500: boom")
        await asyncio.sleep(0)

    result = asyncio.run(closed_loop(every_third_fails, 4, requests=30))
    assert calls == 30
    assert result.errors == 10
    assert len(result.latencies_ms) == 20
    assert result.error_samples == ["RequestFailed: HTTP 500: boom"]


def test_a_duration_budget_stops_starting_requests_and_a_stop_event_ends_the_load() -> None:
    async def quick() -> None:
        await asyncio.sleep(0.001)

    timed = asyncio.run(closed_loop(quick, 2, duration_s=0.05))
    assert timed.latencies_ms and timed.errors == 0

    async def stopped() -> LoadResult:
        stop = asyncio.Event()
        task = asyncio.create_task(closed_loop(quick, 3, stop=stop))
        await asyncio.sleep(0.02)
        stop.set()
        return await task

    assert asyncio.run(stopped()).latencies_ms


def test_closed_loop_wants_exactly_one_budget() -> None:
    async def noop() -> None:
        return None

    with pytest.raises(ValueError):
        asyncio.run(closed_loop(noop, 1))
    with pytest.raises(ValueError):
        asyncio.run(closed_loop(noop, 1, requests=1, duration_s=1.0))


def test_interleaved_rounds_rotate_the_order_and_merge_each_contenders_runs() -> None:
    order: list[str] = []

    def sender(name: str) -> Send:
        async def send() -> None:
            order.append(name)

        return send

    async def one_round(send: Send, _round: int) -> LoadResult:
        return await closed_loop(send, 1, requests=2)

    totals = asyncio.run(interleaved({"x": sender("x"), "y": sender("y")}, 2, one_round))
    assert order == ["x", "x", "y", "y", "y", "y", "x", "x"]
    assert {name: len(result.latencies_ms) for name, result in totals.items()} == {"x": 4, "y": 4}
