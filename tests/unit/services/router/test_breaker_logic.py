"""The breaker state machine, driven by a hand-moved clock: no network, no sleeps."""

from __future__ import annotations

import pytest

from services.router.breakers import PROBE_RETRY_HINT_S, BreakerBook, breaker_key, parse_breaker_key

KEY = ("openai", "gpt-4o-mini")
OTHER = ("mock", "mock-1")


def fail(book: BreakerBook, now: float, key: tuple[str, str] = KEY) -> bool:
    """A failure under the test limits: 3 failures in 10 s open for 30 s."""
    return book.record_failure(key, now, threshold=3, window_s=10.0, cooldown_s=30.0)


def opened_book(at: float = 100.0) -> BreakerBook:
    book = BreakerBook()
    fail(book, at)
    fail(book, at)
    assert fail(book, at)
    return book


def test_fewer_failures_than_the_threshold_keep_the_target_in_use() -> None:
    book = BreakerBook()
    assert not fail(book, 1.0)
    assert not fail(book, 2.0)
    assert book.check(KEY, 2.5).kind == "allow"
    assert book.open_keys(2.5) == []


def test_threshold_failures_within_the_window_open_the_breaker() -> None:
    book = BreakerBook()
    fail(book, 1.0)
    fail(book, 5.0)
    assert fail(book, 10.5)  # all three within 10 s
    decision = book.check(KEY, 10.5)
    assert decision.kind == "skip" and not decision.allowed
    assert decision.retry_after_s == pytest.approx(30.0)
    assert book.check(OTHER, 10.5).kind == "allow"  # per endpoint and model


def test_failures_older_than_the_window_do_not_count() -> None:
    book = BreakerBook()
    fail(book, 0.0)
    fail(book, 1.0)
    assert not fail(book, 10.5)  # the first fell out of the window
    assert fail(book, 10.6)  # 1.0, 10.5, 10.6


def test_successes_between_failures_do_not_reset_the_window_count() -> None:
    book = BreakerBook()
    fail(book, 1.0)
    assert not book.record_success(KEY, 1.5)
    fail(book, 2.0)
    assert fail(book, 3.0)


def test_an_open_breaker_skips_with_a_retry_after_that_counts_down() -> None:
    book = opened_book(at=100.0)
    first = book.check(KEY, 101.0)
    later = book.check(KEY, 120.0)
    assert first.kind == later.kind == "skip"
    assert first.retry_after_s == pytest.approx(29.0)
    assert later.retry_after_s == pytest.approx(10.0)
    assert book.retry_after([KEY], 120.0) == pytest.approx(10.0)


def test_failures_during_the_cooldown_do_not_extend_it() -> None:
    book = opened_book(at=100.0)
    assert not fail(book, 110.0)  # a request sent before the breaker opened
    assert book.check(KEY, 130.0).kind == "probe"


def test_after_the_cooldown_exactly_one_caller_gets_the_probe() -> None:
    book = opened_book(at=100.0)
    assert book.check(KEY, 130.0).kind == "probe"
    second = book.check(KEY, 130.01)
    assert second.kind == "skip"
    assert 0 < second.retry_after_s <= PROBE_RETRY_HINT_S
    assert book.check(KEY, 131.0).kind == "skip"


def test_a_successful_probe_closes_the_breaker_and_forgets_old_failures() -> None:
    book = opened_book(at=100.0)
    assert book.check(KEY, 130.0).kind == "probe"
    assert book.record_success(KEY, 130.5)
    assert book.check(KEY, 130.6).kind == "allow"
    assert book.open_keys(130.6) == []
    assert not fail(book, 131.0)  # counting starts afresh
    assert not fail(book, 131.0)


def test_a_failed_probe_reopens_the_breaker_for_a_full_cooldown() -> None:
    book = opened_book(at=100.0)
    assert book.check(KEY, 130.0).kind == "probe"
    assert fail(book, 131.0)  # one failure is enough while half-open
    decision = book.check(KEY, 131.0)
    assert decision.kind == "skip"
    assert decision.retry_after_s == pytest.approx(30.0)
    assert book.check(KEY, 161.0).kind == "probe"


def test_a_probe_that_never_reports_lets_another_probe_through_after_a_timeout() -> None:
    book = BreakerBook(probe_timeout_s=5.0)
    fail(book, 100.0)
    fail(book, 100.0)
    fail(book, 100.0)
    assert book.check(KEY, 130.0).kind == "probe"  # its request is then cancelled
    assert book.check(KEY, 134.9).kind == "skip"
    assert book.check(KEY, 135.0).kind == "probe"
    assert book.check(KEY, 135.1).kind == "skip"


def test_the_probe_timeout_defaults_to_the_cooldown() -> None:
    book = opened_book(at=100.0)
    assert book.check(KEY, 130.0).kind == "probe"
    assert book.check(KEY, 159.9).kind == "skip"
    assert book.check(KEY, 160.0).kind == "probe"


def test_successes_during_the_cooldown_do_not_close_the_breaker() -> None:
    book = opened_book(at=100.0)
    assert not book.record_success(KEY, 110.0)
    assert book.check(KEY, 110.0).kind == "skip"


def test_a_remote_open_makes_this_router_skip_until_the_shared_time() -> None:
    book = BreakerBook()
    book.apply_remote_open(KEY, 50.0, cooldown_s=30.0)
    decision = book.check(KEY, 40.0)
    assert decision.kind == "skip"
    assert decision.retry_after_s == pytest.approx(10.0)
    assert book.check(KEY, 50.0).kind == "probe"
    assert book.check(KEY, 50.1).kind == "skip"


def test_a_remote_open_that_already_ended_means_half_open() -> None:
    book = BreakerBook()
    book.apply_remote_open(KEY, 10.0, cooldown_s=30.0)
    assert book.check(KEY, 12.0).kind == "probe"


def test_the_echo_of_an_own_opening_keeps_the_probe_that_was_handed_out() -> None:
    book = opened_book(at=100.0)
    assert book.check(KEY, 130.0).kind == "probe"
    book.apply_remote_open(KEY, 130.0 + 0.001, cooldown_s=30.0)
    assert book.check(KEY, 130.5).kind == "skip"
    assert book.record_success(KEY, 130.6)


def test_a_remote_close_reopens_the_target_and_clears_its_failures() -> None:
    book = opened_book(at=100.0)
    book.apply_remote_close(KEY)
    assert book.check(KEY, 101.0).kind == "allow"
    assert not fail(book, 101.0)
    book.apply_remote_close(OTHER)  # unknown keys are fine
    assert book.check(OTHER, 101.0).kind == "allow"


def test_retry_after_is_the_soonest_of_the_targets_and_zero_if_one_is_usable() -> None:
    book = opened_book(at=100.0)
    book.apply_remote_open(OTHER, 110.0, cooldown_s=30.0)
    assert book.retry_after([KEY, OTHER], 105.0) == pytest.approx(5.0)
    assert book.retry_after([KEY, ("mock", "closed")], 105.0) == 0.0
    assert book.retry_after([], 105.0) == 0.0


def test_open_keys_lists_open_and_half_open_breakers_for_the_health_view() -> None:
    book = opened_book(at=100.0)
    book.apply_remote_open(OTHER, 90.0, cooldown_s=30.0)
    listed = {key: (round(wait, 3), half_open) for key, wait, half_open in book.open_keys(105.0)}
    assert listed == {KEY: (25.0, False), OTHER: (0.0, True)}


def test_a_changed_threshold_applies_to_the_next_failure() -> None:
    book = BreakerBook()
    fail(book, 1.0)
    fail(book, 1.0)
    assert book.record_failure(KEY, 1.0, threshold=2, window_s=10.0, cooldown_s=5.0)
    assert book.check(KEY, 1.0).retry_after_s == pytest.approx(5.0)


@pytest.mark.parametrize(
    "target",
    [("openai", "gpt-4o-mini"), ("team/ep", "models/gemini-1.5.pro:latest"), ("a.b", ""), ("ünï", "*>")],
)
def test_breaker_keys_are_valid_kv_keys_and_round_trip(target: tuple[str, str]) -> None:
    kv_key = breaker_key(target)
    assert kv_key and all(c.isalnum() or c in "-_" for c in kv_key)
    assert parse_breaker_key(kv_key) == target
