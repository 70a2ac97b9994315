"""Self-healing state: a nats-server killed and restarted on the same port and store.

Each router here is the real router classes on a connection of its own (as the
router process wires them), so what one learns reaches the others only
through NATS. Nothing is restarted but the server: the breakers bucket
(memory storage, lost with the server) must come back and be shared again,
budgets and run pins (file storage) must keep their values, and the config
follower must see a new revision at once, not after the ~10 s an ordered
consumer takes to notice its consumer died. A wiped JetStream store is
survived too: the config service makes its streams anew and routers follow.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from services.config.audit import AuditLog
from services.config.audit_key import AuditKey
from services.config.manager import ConfigManager
from services.config.service import config_state_keeper, ensure_runs_bucket
from services.config.store import ConfigLog
from services.router.breakers import SharedBreakers
from services.router.budgets import Budgets
from services.router.follower import TableFollower
from services.router.pins import RunPins
from shared.bus import RECONNECT_WAIT_S, server_urls
from shared.natsserver import EmbeddedNats
from shared.routing import Budget, RoutingDefaults
from shared.subjects import BREAKERS_BUCKET, CONFIG_STREAM
from tests.conftest import run

SLOW = RoutingDefaults(breaker_failures=2, breaker_window_s=30.0, breaker_cooldown_s=60.0)
BUDGET = Budget(name="team/budget:max_tokens_per_run", scope="run", period="run", max_tokens=10_000)
HEAL_WITHIN_S = 3.0
"""From the server accepting connections again to the state working again."""


def _endpoint(name: str) -> str:
    spec = {"provider": "mock", "default_model": "m"}
    return json.dumps(
        {"apiVersion": "modelbus.dev/v1", "kind": "ModelEndpoint", "metadata": {"name": name}, "spec": spec}
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    nats_server = EmbeddedNats(tmp_path / "nats")
    nats_server.start()
    try:
        yield nats_server
    finally:
        nats_server.stop()


async def connect(url: str) -> Client:
    """A service's connection: reconnects forever, quickly (as shared.bus configures them)."""
    return await nats.connect(
        servers=server_urls(url),
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,
    )


@asynccontextmanager
async def breakers_of(url: str, name: str) -> AsyncIterator[SharedBreakers]:
    nc = await connect(url)
    breakers = SharedBreakers(nc, router_id=name)
    try:
        await breakers.start(timeout_s=5.0)
        yield breakers
    finally:
        await breakers.stop()
        await nc.close()


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str) -> float:
    """Poll ``predicate`` until true; the seconds it took."""
    start = time.monotonic()
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout_s, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.02)


async def crash_and_restart(server: EmbeddedNats) -> float:
    """kill -9 the server, start it on the same port and store; the monotonic time it was back."""
    server.kill()
    await asyncio.to_thread(server.restart)
    return time.monotonic()


async def open_breaker(breakers: SharedBreakers, key: tuple[str, str]) -> None:
    for _ in range(SLOW.breaker_failures):
        await breakers.failure(key, SLOW)
    assert breakers.decide(key).kind == "skip"


def test_the_breakers_bucket_comes_back_after_a_nats_restart_and_is_shared_again(server: EmbeddedNats) -> None:
    before, after = ("openai", "before-restart"), ("openai", "after-restart")

    async def scenario() -> None:
        probe = await connect(server.url)
        async with breakers_of(server.url, "a") as a, breakers_of(server.url, "b") as b:
            await open_breaker(a, before)
            await wait_until(lambda: b.decide(before).kind == "skip", 2.0, "b to see a's breaker")
            back = await crash_and_restart(server)

            async def bucket_exists() -> bool:
                try:
                    await probe.jetstream().stream_info(f"KV_{BREAKERS_BUCKET}")
                    return True
                except Exception:
                    return False

            recreated = await wait_until(bucket_exists, HEAL_WITHIN_S, "the breakers bucket to exist again")
            await wait_until(lambda: a.keeper.healed.is_set() and b.keeper.healed.is_set(), 5.0, "both watches")
            await open_breaker(a, after)
            shared = await wait_until(lambda: b.decide(after).kind == "skip", 2.0, "b to see a breaker opened now")
            print(f"\nbreakers bucket back {recreated:.2f}s after the restart; shared in {shared * 1000:.0f} ms")
            assert time.monotonic() - back < HEAL_WITHIN_S + 2.0
        # A router started now learns both from the bucket: a shared what it knew when the bucket came back.
        async with breakers_of(server.url, "c") as c:
            assert c.decide(after).kind == "skip" and c.decide(before).kind == "skip"
        await probe.close()

    run(scenario())


def test_budgets_and_run_pins_keep_their_values_and_work_at_once_after_a_nats_restart(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        config_nc, router_nc = await connect(server.url), await connect(server.url)
        await ensure_runs_bucket(config_nc)
        pins, budgets = RunPins(router_nc), Budgets(router_nc)
        assert await pins.revision_for("run-1", 7, 3600) == 7
        await budgets.charge(BUDGET, "run-1", 120)
        await crash_and_restart(server)
        started = time.monotonic()
        assert await RunPins(router_nc).revision_for("run-1", 9, 3600) == 7  # read from the bucket, not a cache
        assert await pins.revision_for("run-2", 9, 3600) == 9
        await budgets.charge(BUDGET, "run-1", 30)
        assert (await budgets.entry(BUDGET, "run-1")).spent_tokens == 150
        took = time.monotonic() - started
        print(f"\npins and budgets answered {took:.2f}s after the restart")
        assert took < HEAL_WITHIN_S
        await config_nc.close()
        await router_nc.close()

    run(scenario())


async def _apply(manager: ConfigManager, name: str, timeout_s: float = 10.0) -> int:
    """Apply one endpoint, riding out a JetStream that is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = await manager.apply_text(_endpoint(name), actor="test")
            return int(result.revision)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_a_router_sees_a_new_revision_right_after_a_nats_restart(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        config_nc, router_nc = await connect(server.url), await connect(server.url)
        config_log = ConfigLog(config_nc.jetstream())
        await config_log.ensure()
        manager = ConfigManager(config_nc, config_log)
        await manager.load()
        first = await _apply(manager, "before")
        follower = TableFollower(router_nc, "r1", lambda: 0)
        await follower.start(10.0)
        assert follower.current is not None and follower.current.revision == first
        await crash_and_restart(server)
        second = await _apply(manager, "after")
        started = time.monotonic()
        took = await wait_until(
            lambda: follower.current is not None and follower.current.revision == second, 5.0, "the new revision"
        )
        print(f"\nrevision {second} reached the router {took * 1000:.0f} ms after its commit")
        assert time.monotonic() - started < 2.0
        await follower.stop()
        await config_nc.close()
        await router_nc.close()

    run(scenario())


def test_a_wiped_jetstream_store_is_made_anew_and_routers_follow_it(server: EmbeddedNats) -> None:
    """The worst case: the server comes back without its store. The config service's keeper makes
    the config log, audit stream and run-pin bucket again; a router follows the new log."""

    async def scenario() -> None:
        config_nc, router_nc = await connect(server.url), await connect(server.url)
        js = config_nc.jetstream()
        config_log = ConfigLog(js)
        await config_log.ensure()
        await ensure_runs_bucket(config_nc)
        audit = AuditLog(js, AuditKey(bytes(range(32))))
        await audit.ensure_stream()
        keeper = config_state_keeper(config_nc, config_log, audit)
        keeper.start()
        manager = ConfigManager(config_nc, config_log)
        await manager.load()
        await _apply(manager, "before")
        follower = TableFollower(router_nc, "r1", lambda: 0)
        await follower.start(10.0)
        server.kill()
        shutil.rmtree(server.data_dir / "jetstream")
        await asyncio.to_thread(server.restart)

        async def config_stream_back() -> bool:
            try:
                await router_nc.jetstream().stream_info(CONFIG_STREAM)
                return True
            except (NotFoundError, Exception):
                return False

        await wait_until(config_stream_back, HEAL_WITHIN_S, "the config stream to be made again")
        await wait_until(lambda: keeper.healed.is_set(), 5.0, "the config keeper")
        pins = RunPins(router_nc)
        assert await pins.revision_for("run-x", 1, 60) == 1  # the run-pin bucket is back too
        await manager.load()  # the service starts over from the (empty) new log
        revision = await _apply(manager, "after")
        await wait_until(
            lambda: follower.current is not None and follower.current.revision == revision, 5.0, "the new log"
        )
        await keeper.stop()
        await follower.stop()
        await config_nc.close()
        await router_nc.close()

    run(scenario())
