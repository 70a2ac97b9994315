"""The window arithmetic of rate limits and quotas, and whose request a limit counts (no network)."""

from __future__ import annotations

import random
import re

import pytest

from services.router.ratelimits import value_of
from services.router.windows import (
    LEASE_SHARE,
    WINDOW_S,
    admits,
    counter_base,
    lease_block,
    room,
    wait_s,
    weighted,
    window_of,
)
from shared import headers as H
from shared.routing import RateLimit

KEY_LIMIT = RateLimit(name="per-key", scope="key", rpm=10)
AGENT_LIMIT = RateLimit(name="per-agent", scope="agent", rpm=10)
TEAM_LIMIT = RateLimit(name="per-team", scope="namespace", tpm=1000)


def test_windows_are_calendar_minutes() -> None:
    assert window_of(0) == 0
    assert window_of(59.999) == 0
    assert window_of(60) == 1
    assert window_of(1_700_000_030) == 1_700_000_030 // 60


def test_the_previous_minute_fades_linearly_through_the_present_one() -> None:
    assert weighted(10, 3, 0) == 13
    assert weighted(10, 3, 30) == 8
    assert weighted(10, 3, WINDOW_S) == 3


def test_a_request_that_reaches_the_limit_exactly_is_admitted_and_the_next_is_not() -> None:
    assert admits(10, 0, 9, 1, 0)
    assert not admits(10, 0, 10, 1, 0)
    assert admits(1000, 0, 900, 100, 12)
    assert not admits(1000, 0, 900, 101, 12)


def test_room_is_the_most_that_fits_now() -> None:
    assert room(10, 0, 7, 0) == 3
    assert room(10, 10, 0, 30) == 5
    assert room(10, 0, 12, 0) == 0
    for limit, previous, current, elapsed in [(10, 10, 0, 30), (1000, 333, 17, 41.5), (7, 3, 2, 59.9)]:
        fits = room(limit, previous, current, elapsed)
        assert admits(limit, previous, current, fits, elapsed)
        assert not admits(limit, previous, current, fits + 1, elapsed)


def test_routers_lease_a_64th_of_a_limit_and_nothing_below_128() -> None:
    assert LEASE_SHARE == 64
    assert lease_block(8) == 1
    assert lease_block(127) == 1
    assert lease_block(128) == 2
    assert lease_block(64_000) == 1000


def test_a_request_that_fits_now_waits_nothing() -> None:
    assert wait_s(10, 4, 5, 1, 30) == 0


def test_a_request_larger_than_the_limit_can_never_fit() -> None:
    assert wait_s(100, 0, 0, 101, 0) is None


def test_when_only_the_previous_minute_is_in_the_way_the_wait_is_until_its_weight_falls_enough() -> None:
    # 10 last minute, none now, limit 10: one more fits once 10 * (1 - f) <= 9, f = 0.1: at 6 s.
    assert wait_s(10, 10, 0, 1, 0) == pytest.approx(6.0)
    assert wait_s(10, 10, 0, 1, 2.5) == pytest.approx(3.5)


def test_a_full_present_minute_waits_for_the_next_minute_and_part_of_it() -> None:
    # 10 admitted this minute, 15 s in: the next minute starts in 45 s with 10 fading; 1 fits at f = 0.1.
    assert wait_s(10, 0, 10, 1, 15) == pytest.approx(45 + 6)
    # A tpm limit: 1000 used, a request of 250 needs the old 1000 to fade to 750: f = 0.25.
    assert wait_s(1000, 0, 1000, 250, 0) == pytest.approx(60 + 15)


def test_the_computed_wait_is_the_first_moment_the_request_fits() -> None:
    """Whatever the counts, the request fits at the computed time and not a little before."""
    rng = random.Random(7)
    for _ in range(2000):
        limit = rng.randint(1, 50)
        previous, current = rng.randint(0, 60), rng.randint(0, 60)
        cost = rng.randint(1, limit)
        elapsed = rng.uniform(0, WINDOW_S)
        wait = wait_s(limit, previous, current, cost, elapsed)
        assert wait is not None

        case = (limit, previous, current, cost, elapsed)
        assert fits_after(*case, wait + 1e-6), (case, wait)
        if wait > 1e-3:
            assert not fits_after(*case, wait - 1e-3), (case, wait)


def fits_after(limit: int, previous: int, current: int, cost: int, elapsed: float, t: float) -> bool:
    """Whether the request fits ``t`` seconds from now if nothing else is admitted."""
    at = elapsed + t
    if at < WINDOW_S:
        return admits(limit, previous, current, cost, at)
    return admits(limit, current, 0, cost, at - WINDOW_S)  # the next minute, nothing new in it


def test_counter_keys_are_valid_kv_keys_whatever_the_names() -> None:
    for name, value in [("team/limit", "ns/agent name"), ("ünï", "a.b.c"), ("x", ""), ("*", ">")]:
        key = f"{counter_base('r', name, value)}.{window_of(1e9)}"
        assert re.fullmatch(r"[-/_=.a-zA-Z0-9]+", key), key
        assert "*" not in key and ">" not in key
    assert counter_base("r", "a", "b.c") != counter_base("r", "a.b", "c")


def test_a_key_limit_counts_the_gateway_key_name_only_from_the_gateway() -> None:
    assert value_of(KEY_LIMIT, "_INBOX_gateway.abc.1", {H.KEY: "team-a"}) == "team-a"
    assert value_of(KEY_LIMIT, "_INBOX_gateway.abc.1", {}) == "gateway"
    # A client claiming a key is counted as itself, never as the key it names.
    assert value_of(KEY_LIMIT, "_INBOX_client.billing.xyz.2", {H.KEY: "team-a"}) == "client.billing"
    assert value_of(KEY_LIMIT, "_INBOX.xyz.3", {H.KEY: "team-a"}) is None


def test_agent_and_namespace_limits_count_the_agent_header() -> None:
    headers = {H.AGENT: "research/summarizer"}
    assert value_of(AGENT_LIMIT, "_INBOX.x", headers) == "research/summarizer"
    assert value_of(TEAM_LIMIT, "_INBOX.x", headers) == "research"
    assert value_of(TEAM_LIMIT, "_INBOX.x", {H.AGENT: "bare"}) is None
    assert value_of(AGENT_LIMIT, "_INBOX.x", {}) is None
