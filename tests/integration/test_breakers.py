"""Shared circuit breakers against a real nats-server: each SharedBreakers on its
own connection plays one router, so what one router learns reaches the others
only through the KV bucket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client
from nats.js.api import StorageType
from nats.js.errors import KeyNotFoundError

from services.router.breakers import (
    Decision,
    SharedBreakers,
    breaker_key,
    ensure_breakers_bucket,
)
from shared.natsserver import EmbeddedNats
from shared.routing import RoutingDefaults
from shared.subjects import BREAKERS_BUCKET
from tests.conftest import run

FAST = RoutingDefaults(breaker_failures=3, breaker_window_s=10.0, breaker_cooldown_s=0.3)
SLOW = RoutingDefaults(breaker_failures=3, breaker_window_s=10.0, breaker_cooldown_s=30.0)


@asynccontextmanager
async def router(url: str, name: str) -> AsyncIterator[SharedBreakers]:
    """One router's breakers on a connection of its own."""
    nc: Client = await nats.connect(url)
    breakers = SharedBreakers(nc, router_id=name)
    try:
        await breakers.start(timeout_s=5.0)
        yield breakers
    finally:
        await breakers.stop()
        await nc.close()


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``predicate`` until true; the seconds it took."""
    start = time.perf_counter()
    deadline = start + timeout_s
    while not predicate():
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.0005)
    return time.perf_counter() - start


async def wait_for_decision(breakers: SharedBreakers, key: tuple[str, str], kind: str, timeout_s: float) -> Decision:
    """Poll ``decide`` until it says ``kind``; every other answer must be ``skip``
    (asking hands out the probe, so a wrong answer must not slip by)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        decision = breakers.decide(key)
        if decision.kind == kind:
            return decision
        assert decision.kind == "skip", f"expected skip until {kind}, got {decision}"
        assert time.perf_counter() < deadline, f"timed out waiting for {kind}"
        await asyncio.sleep(0.005)


async def open_breaker(breakers: SharedBreakers, key: tuple[str, str], defaults: RoutingDefaults) -> None:
    for _ in range(defaults.breaker_failures):
        await breakers.failure(key, defaults)
    assert breakers.decide(key).kind == "skip"


def test_a_breaker_one_router_opens_is_skipped_by_another_within_milliseconds(nats_server: EmbeddedNats) -> None:
    key = ("openai", "propagation")

    async def scenario() -> None:
        async with router(nats_server.url, "a") as a, router(nats_server.url, "b") as b:
            for _ in range(SLOW.breaker_failures - 1):
                await a.failure(key, SLOW)
            assert a.decide(key).kind == b.decide(key).kind == "allow"
            start = time.perf_counter()
            await a.failure(key, SLOW)
            await wait_for(lambda: not b.decide(key).allowed, 1.0, "router b to skip")
            took_ms = (time.perf_counter() - start) * 1000
            print(f"\nbreaker propagation router a -> router b: {took_ms:.2f} ms")
            assert took_ms < 1000
            assert 29 < b.retry_after([key]) <= 30
            # The module shares one server, so other tests' breakers may be listed too.
            (listed,) = [o for o in b.open_breakers() if (o.endpoint, o.model) == key]
            assert (listed.endpoint, listed.model, listed.state) == ("openai", "propagation", "open")
            assert 29 < listed.retry_after_s <= 30

    run(scenario())


def test_a_successful_probe_after_the_cooldown_closes_the_breaker_for_every_router(
    nats_server: EmbeddedNats,
) -> None:
    key = ("mock", "probe-success")

    async def scenario() -> None:
        async with router(nats_server.url, "a") as a, router(nats_server.url, "b") as b:
            await open_breaker(a, key, FAST)
            await wait_for(lambda: not b.decide(key).allowed, 1.0, "router b to skip")
            # After the cooldown, router b lets exactly one probe through.
            await wait_for_decision(b, key, "probe", timeout_s=5.0)
            assert b.decide(key).kind == "skip"
            # Router a sends its own probe, which succeeds: both close.
            await wait_for_decision(a, key, "probe", timeout_s=5.0)
            await a.success(key)
            assert a.decide(key).kind == "allow"
            await wait_for(lambda: b.decide(key).kind == "allow", 1.0, "router b to close")
            assert [o for o in b.open_breakers() if (o.endpoint, o.model) == key] == []

    run(scenario())


def test_a_failed_probe_reopens_the_breaker_for_every_router(nats_server: EmbeddedNats) -> None:
    key = ("mock", "probe-failure")
    reopen = RoutingDefaults(breaker_failures=3, breaker_window_s=10.0, breaker_cooldown_s=30.0)

    async def scenario() -> None:
        async with router(nats_server.url, "a") as a, router(nats_server.url, "b") as b:
            await open_breaker(a, key, FAST)
            await wait_for(lambda: not b.decide(key).allowed, 1.0, "router b to skip")
            await wait_for_decision(b, key, "probe", timeout_s=5.0)
            await b.failure(key, reopen)  # the probe failed; this time the cooldown is long
            await wait_for(lambda: a.retry_after([key]) > 29, 1.0, "router a to reopen for a full cooldown")
            assert a.decide(key).kind == "skip"

    run(scenario())


def test_a_router_that_starts_late_sees_breakers_that_are_already_open(nats_server: EmbeddedNats) -> None:
    key = ("anthropic", "late-start")

    async def scenario() -> None:
        async with router(nats_server.url, "a") as a:
            await open_breaker(a, key, SLOW)
            async with router(nats_server.url, "c") as c:
                decision = c.decide(key)  # no waiting: start() returns once the bucket is read
                assert decision.kind == "skip"
                assert 29 < decision.retry_after_s <= 30

    run(scenario())


def test_an_open_breaker_leaves_the_bucket_on_its_own_after_the_cooldown(nats_server: EmbeddedNats) -> None:
    key = ("ollama", "expiry")

    async def scenario() -> None:
        observer = await nats.connect(nats_server.url)
        try:
            kv = await ensure_breakers_bucket(observer)
            async with router(nats_server.url, "a") as a:
                await open_breaker(a, key, FAST)
                opened = time.perf_counter()
                entry = await kv.get(breaker_key(key))
                assert b'"router_id":"a"' in (entry.value or b"")
                # The TTL is whole seconds, ceil(0.3 s cooldown + 0.5 s margin) = 1 s.
                deadline = opened + 5.0
                while True:
                    try:
                        await kv.get(breaker_key(key))
                    except KeyNotFoundError:
                        break
                    assert time.perf_counter() < deadline, "the breaker entry did not expire"
                    await asyncio.sleep(0.05)
                print(f"\nbreaker entry expired {time.perf_counter() - opened:.2f} s after opening")
        finally:
            await observer.close()

    run(scenario())


def test_the_breakers_bucket_is_created_once_in_memory_with_per_message_ttl(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await ensure_breakers_bucket(nc)
            await ensure_breakers_bucket(nc)  # idempotent
            info = await nc.jetstream().stream_info(f"KV_{BREAKERS_BUCKET}")
            assert info.config.allow_msg_ttl
            assert info.config.storage == StorageType.MEMORY
            assert info.config.max_msgs_per_subject == 1
        finally:
            await nc.close()

    run(scenario())
