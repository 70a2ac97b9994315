"""Rate limit counters shared by two routers through a real nats-server's KV (compare-and-swap).

Each "router" is a :class:`RateLimiter` on its own connection, with a clock the test sets,
so that a window boundary falls exactly where a test wants it and never by chance.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from services.router import windows
from services.router.quotas import EndpointQuotas
from services.router.ratelimits import RateLimiter
from services.router.windows import REFUSE_FROM_CACHE_S, WINDOW_S, SharedWindows
from shared import headers as H
from shared.errors import NoRouteAvailable, RateLimited
from shared.natsserver import EmbeddedNats
from shared.routing import Endpoint, RateLimit
from shared.subjects import RATE_LIMITS_BUCKET
from tests.conftest import run

pytestmark = pytest.mark.timeout(60)

MINUTE = 29_000_000 * WINDOW_S
"""The start of some minute (unix seconds)."""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Routers = tuple[RateLimiter, RateLimiter, Clock]


@asynccontextmanager
async def two_routers(url: str, now: float) -> AsyncIterator[Routers]:
    a: Client = await nats.connect(url)
    b: Client = await nats.connect(url)
    clock = Clock(now)
    try:
        yield RateLimiter(SharedWindows(a, clock)), RateLimiter(SharedWindows(b, clock)), clock
    finally:
        await a.close()
        await b.close()


def with_routers(
    nats_server: EmbeddedNats, now: float, body: Callable[[RateLimiter, RateLimiter, Clock], Coroutine[Any, Any, None]]
) -> None:
    async def main() -> None:
        async with two_routers(nats_server.url, now) as (a, b, clock):
            await asyncio.wait_for(body(a, b, clock), timeout=30)

    run(main())


def agent_limit(**limits: int) -> tuple[RateLimit, dict[str, str]]:
    """A limit on a fresh agent (so tests never share a counter) and that agent's headers."""
    agent = f"research/bot-{uuid.uuid4().hex[:8]}"
    return RateLimit(name=f"limit-{uuid.uuid4().hex[:8]}", scope="agent", **limits), {H.AGENT: agent}  # type: ignore[arg-type]


async def outcome(limiter: RateLimiter, limit: RateLimit, headers: dict[str, str], estimate: int = 10) -> Any:
    try:
        return await limiter.admit([limit], "_INBOX.x", headers, estimate)
    except RateLimited as err:
        return err


def test_two_routers_under_concurrent_load_admit_exactly_the_limit_in_one_minute(nats_server: EmbeddedNats) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        limit, headers = agent_limit(rpm=20)
        results = await asyncio.gather(*(outcome((a, b)[i % 2], limit, headers) for i in range(60)))
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert len(results) - len(refused) == 20
        for err in refused:
            assert (err.http_status, err.code, err.retryable) == (429, "rate_limited", True)
            # 15 s in, 20 admitted: the next minute begins in 45 s, and one more fits once the 20
            # have faded to 19, 3 s into it.
            assert err.retry_after == pytest.approx(45 + 3, abs=0.01)
            assert f"rate limit {limit.name!r} (agent {headers[H.AGENT]!r}) allows 20 requests per minute" in (
                err.message
            )
        conflicts = a.windows.conflicts + b.windows.conflicts
        assert conflicts > 0  # the two routers did contend, and no admission was lost or doubled
        # What each router last saw, for metrics, from memory: the last count it read or wrote.
        (seen,) = a.snapshot()
        assert (seen.name, seen.scope, seen.value, seen.rpm, seen.tpm) == (
            limit.name,
            "agent",
            headers[H.AGENT],
            20,
            None,
        )
        assert 1 <= seen.requests <= 20

    with_routers(nats_server, MINUTE + 15, body)


def test_a_busy_limit_is_leased_in_blocks_and_still_never_exceeded(nats_server: EmbeddedNats) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        limit, headers = agent_limit(rpm=640)  # leases of 640 // 64 = 10
        results = await asyncio.gather(*(outcome((a, b)[i % 2], limit, headers) for i in range(1000)))
        admitted = sum(1 for r in results if not isinstance(r, RateLimited))
        assert 640 - 2 * 10 <= admitted <= 640  # at most one unused block per router is lost
        writes = a.windows.writes + b.windows.writes
        assert writes <= admitted / 5, writes  # about one write per block, not per request

    with_routers(nats_server, MINUTE + 20, body)


def test_the_previous_minute_counts_on_another_router_and_frees_up_as_computed(nats_server: EmbeddedNats) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        limit, headers = agent_limit(rpm=10)
        for _ in range(10):
            await a.admit([limit], "_INBOX.x", headers, 1)
        clock.now = MINUTE + WINDOW_S + 3  # 3 s into the next minute: the 10 weigh 9.5
        err = await outcome(b, limit, headers)
        assert isinstance(err, RateLimited)
        assert err.retry_after is not None
        assert err.retry_after == pytest.approx(3.0, abs=0.01)  # at 6 s they weigh 9: one fits
        clock.now += err.retry_after
        assert isinstance(await outcome(b, limit, headers), list)  # admitted
        assert isinstance(await outcome(a, limit, headers), RateLimited)

    with_routers(nats_server, MINUTE + 40, body)


def test_tokens_are_reserved_at_admission_and_corrected_to_the_real_usage(nats_server: EmbeddedNats) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        limit, headers = agent_limit(tpm=1000)
        first = await a.admit([limit], "_INBOX.x", headers, 300)
        await b.admit([limit], "_INBOX.x", headers, 300)
        await a.admit([limit], "_INBOX.x", headers, 300)
        err = await outcome(b, limit, headers, 300)
        assert isinstance(err, RateLimited) and "900 tokens" in err.message
        a.windows.settle(first, 50)  # the first answer used 50 of its 300
        await a.windows.drain()
        # b refused on a count it read just now; it reads again once that is REFUSE_FROM_CACHE_S old.
        await asyncio.sleep(REFUSE_FROM_CACHE_S)
        assert not isinstance(await outcome(b, limit, headers, 300), RateLimited)  # 650 + 300 fits
        too_big = await outcome(a, limit, headers, 1001)
        assert isinstance(too_big, RateLimited)
        assert not too_big.retryable and too_big.retry_after is None

    with_routers(nats_server, MINUTE + 5, body)


def test_a_request_under_two_limits_refused_by_one_is_counted_by_neither(nats_server: EmbeddedNats) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        wide, headers = agent_limit(rpm=100)
        narrow = RateLimit(name=f"narrow-{uuid.uuid4().hex[:6]}", scope="namespace", match="research", rpm=1)
        await a.admit([wide, narrow], "_INBOX.x", headers, 1)
        with pytest.raises(RateLimited):
            await b.admit([wide, narrow], "_INBOX.x", headers, 1)
        await b.windows.drain()
        for _ in range(99):
            await b.admit([wide], "_INBOX.x", headers, 1)  # 1 + 99: the refused one was taken back
        with pytest.raises(RateLimited):
            await a.admit([wide], "_INBOX.x", headers, 1)

    with_routers(nats_server, MINUTE + 1, body)


def test_endpoint_quotas_count_per_endpoint_across_routers(nats_server: EmbeddedNats) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        endpoint = Endpoint(name=f"katan-{uuid.uuid4().hex[:6]}", provider="openai-compatible", rpm=3, tpm=100)
        qa, qb = EndpointQuotas(a.windows), EndpointQuotas(b.windows)
        taken = [await (qa, qb)[i % 2].take(endpoint, 10) for i in range(4)]
        assert [ticket is not None for ticket, _ in taken] == [True, True, True, False]
        assert taken[3][1] == pytest.approx(30 + 20, abs=0.01)  # 30 s to the next minute, 3 fade to 2 at 20 s
        assert (await qa.take(endpoint, 101))[1] is None  # more than the tpm quota itself: never
        (seen,) = qb.snapshot()
        assert (seen.endpoint, seen.rpm, seen.tpm) == (endpoint.name, 3, 100)

    with_routers(nats_server, MINUTE + 30, body)


def test_limits_that_do_not_apply_never_touch_the_bucket(nats_server: EmbeddedNats) -> None:
    """Watched at the broker: no JetStream API request at all, and the same watch sees one when a limit applies."""

    async def main() -> None:
        router: Client = await nats.connect(nats_server.url)
        watcher: Client = await nats.connect(nats_server.url)
        try:
            api = await watcher.subscribe("$JS.API.>")
            await watcher.flush()
            limiter = RateLimiter(SharedWindows(router))
            other = RateLimit(name="other", scope="agent", match="someone/else", rpm=1)
            keyed = RateLimit(name="keyed", scope="key", rpm=1)
            for _ in range(20):
                assert await limiter.admit([other, keyed], "_INBOX.x", {H.AGENT: "research/bot"}, 10) == []
            await router.flush()
            with pytest.raises(nats.errors.TimeoutError):
                await api.next_msg(timeout=0.3)
            await limiter.admit([RateLimit(name="mine", scope="agent", rpm=5)], "_INBOX.x", {H.AGENT: "a"}, 1)
            msg = await api.next_msg(timeout=2)
            assert RATE_LIMITS_BUCKET in msg.subject
        finally:
            await router.close()
            await watcher.close()

    run(main())


def test_a_bucket_that_disappeared_is_created_again_and_counting_goes_on(nats_server: EmbeddedNats) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        limit, headers = agent_limit(rpm=3)
        await a.admit([limit], "_INBOX.x", headers, 1)
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().delete_key_value(RATE_LIMITS_BUCKET)
        finally:
            await nc.close()
        # A wiped store forgets the counts; the routers go on counting in a new bucket.
        for limiter in (b, a, b):
            await limiter.admit([limit], "_INBOX.x", headers, 1)
        with pytest.raises(RateLimited):
            await a.admit([limit], "_INBOX.x", headers, 1)

    with_routers(nats_server, MINUTE + 30, body)


def test_a_counter_other_routers_keep_contending_answers_a_retryable_503_not_an_internal_error(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(a: RateLimiter, b: RateLimiter, clock: Clock) -> None:
        limit, headers = agent_limit(rpm=10)
        await a.admit([limit], "_INBOX.x", headers, 1)  # a knows the counter at revision 1
        await b.admit([limit], "_INBOX.x", headers, 1)  # b moves it on: a's revision is stale
        monkeypatch.setattr(windows, "MAX_CAS_ATTEMPTS", 1)
        a.windows._leases.clear()  # a must write again, on its stale revision: one conflict, no tries left
        with pytest.raises(NoRouteAvailable) as caught:
            await a.admit([limit], "_INBOX.x", headers, 1)
        assert caught.value.retryable and caught.value.http_status == 503
        assert caught.value.code == "rate_limits_unavailable" and caught.value.retry_after == 1.0

    with_routers(nats_server, MINUTE + 25, body)
