"""Per-target stats: in-flight counts, latency averages, outcomes, bounded keys."""

from __future__ import annotations

import pytest

from services.router.stats import TargetSnapshot, TargetStats

A = ("openai", "gpt-4o-mini")
B = ("mock", "mock-1")


def ok(stats: TargetStats, key: tuple[str, str], latency_s: float | None = None, ttft_s: float | None = None) -> None:
    stats.start(key)
    stats.finish(key, latency_s=latency_s, ttft_s=ttft_s, error_status=None)


def test_first_latency_sample_sets_the_average_and_the_next_blends_by_alpha() -> None:
    stats = TargetStats()
    ok(stats, A, latency_s=1.0)
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(1.0)
    ok(stats, A, latency_s=2.0)
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(1.2)  # 0.8 * 1.0 + 0.2 * 2.0
    ok(stats, A, latency_s=2.0)
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(1.36)


def test_alpha_is_configurable() -> None:
    stats = TargetStats(alpha=0.5)
    ok(stats, A, latency_s=1.0)
    ok(stats, A, latency_s=3.0)
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(2.0)


def test_alpha_outside_zero_to_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="alpha"):
        TargetStats(alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        TargetStats(alpha=1.5)


def test_unmeasured_target_has_no_average() -> None:
    stats = TargetStats()
    assert stats.latency_ewma(A, streaming=False) is None
    assert stats.latency_ewma(A, streaming=True) is None
    ok(stats, A)  # finished without a known latency
    assert stats.latency_ewma(A, streaming=False) is None


def test_streams_use_time_to_first_token_and_fall_back_to_total_latency() -> None:
    stats = TargetStats()
    ok(stats, A, latency_s=2.0)
    assert stats.latency_ewma(A, streaming=True) == pytest.approx(2.0)  # no stream measured yet
    ok(stats, A, ttft_s=0.3)
    assert stats.latency_ewma(A, streaming=True) == pytest.approx(0.3)
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(2.0)


def test_in_flight_counts_started_and_not_finished_attempts() -> None:
    stats = TargetStats()
    stats.start(A)
    stats.start(A)
    stats.start(B)
    assert (stats.in_flight(A), stats.in_flight(B)) == (2, 1)
    stats.finish(A, latency_s=None, ttft_s=None, error_status=None)
    assert stats.in_flight(A) == 1


def test_in_flight_never_goes_negative() -> None:
    stats = TargetStats()
    stats.finish(A, latency_s=None, ttft_s=None, error_status=None)  # finish without a start
    assert stats.in_flight(A) == 0
    stats.start(A)
    stats.finish(A, latency_s=None, ttft_s=None, error_status=502)
    stats.finish(A, latency_s=None, ttft_s=None, error_status=502)
    assert stats.in_flight(A) == 0
    assert stats.in_flight(B) == 0  # never seen


def test_errors_are_counted_with_the_last_status() -> None:
    stats = TargetStats()
    ok(stats, A, latency_s=0.1)
    for status in (429, 503):
        stats.start(A)
        stats.finish(A, latency_s=None, ttft_s=None, error_status=status)
    (snap,) = stats.snapshot()
    assert (snap.successes, snap.errors, snap.last_error_status) == (1, 2, 503)


def test_a_fast_failure_does_not_make_a_target_look_faster() -> None:
    stats = TargetStats()
    stats.start(A)
    stats.finish(A, latency_s=0.001, ttft_s=None, error_status=500)
    assert stats.latency_ewma(A, streaming=False) is None  # a failure never seeds the average
    ok(stats, A, latency_s=1.0)
    stats.start(A)
    stats.finish(A, latency_s=0.001, ttft_s=None, error_status=500)
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(1.0)


def test_a_slow_failure_makes_a_target_look_slower() -> None:
    stats = TargetStats()
    ok(stats, A, latency_s=1.0, ttft_s=0.5)
    stats.start(A)
    stats.finish(A, latency_s=11.0, ttft_s=10.5, error_status=504)
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(3.0)
    assert stats.latency_ewma(A, streaming=True) == pytest.approx(2.5)


def test_snapshot_reports_every_target_in_milliseconds_sorted_by_key() -> None:
    stats = TargetStats()
    ok(stats, A, latency_s=0.25)
    ok(stats, B, ttft_s=0.5)  # binary-exact, so milliseconds compare exactly
    stats.start(B)
    assert stats.snapshot() == [
        TargetSnapshot(
            endpoint="mock",
            model="mock-1",
            in_flight=1,
            latency_ewma_ms=None,
            ttft_ewma_ms=500.0,
            errors=0,
            successes=1,
            last_error_status=None,
        ),
        TargetSnapshot(
            endpoint="openai",
            model="gpt-4o-mini",
            in_flight=0,
            latency_ewma_ms=250.0,
            ttft_ewma_ms=None,
            errors=0,
            successes=1,
            last_error_status=None,
        ),
    ]


def test_reading_an_unknown_target_does_not_create_it() -> None:
    stats = TargetStats()
    stats.in_flight(A)
    stats.latency_ewma(A, streaming=True)
    assert stats.snapshot() == []


def test_keys_stay_bounded_by_dropping_the_least_recently_used_idle_ones() -> None:
    stats = TargetStats(max_keys=8)
    for i in range(100):
        ok(stats, ("byo", f"model-{i}"), latency_s=0.1)
    kept = [s.model for s in stats.snapshot()]
    assert len(kept) <= 8
    assert "model-99" in kept
    assert "model-0" not in kept


def test_targets_with_requests_in_flight_are_never_dropped() -> None:
    stats = TargetStats(max_keys=4)
    stats.start(A)
    stats.start(B)
    for i in range(50):
        ok(stats, ("byo", f"model-{i}"))
    assert (stats.in_flight(A), stats.in_flight(B)) == (1, 1)
    assert len(stats.snapshot()) <= 4


def test_a_recently_used_target_outlives_newer_idle_ones() -> None:
    stats = TargetStats(max_keys=4)
    ok(stats, A, latency_s=0.5)
    for i in range(20):
        ok(stats, ("byo", f"model-{i}"))
        ok(stats, A)  # keeps A recently used
    assert stats.latency_ewma(A, streaming=False) == pytest.approx(0.5)
