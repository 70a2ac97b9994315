"""shared.jetstream against a real nats-server: replicas, ensure helpers and the state keeper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType, StreamConfig, StreamInfo, StreamState
from nats.js.errors import NotFoundError

from shared.jetstream import (
    InvalidReplicas,
    JetStreamSetupError,
    StateKeeper,
    ensure_kv,
    ensure_replicas,
    ensure_stream,
    js_replicas,
    stream_missing,
)
from shared.natsserver import EmbeddedNats
from tests.conftest import run


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    nats_server = EmbeddedNats(tmp_path / "nats")
    nats_server.start()
    try:
        yield nats_server
    finally:
        nats_server.stop()


async def _connect(url: str) -> Client:
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.25)


async def _until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- the setting


@pytest.mark.parametrize(("raw", "value"), [("", 1), ("1", 1), ("3", 3), (" 5 ", 5)])
def test_the_replica_setting_defaults_to_one_and_reads_whole_numbers(raw: str, value: int) -> None:
    assert js_replicas({"MODELBUS_JS_REPLICAS": raw}) == value
    assert js_replicas({}) == 1


@pytest.mark.parametrize("raw", ["0", "6", "-1", "3.0", "three", "٣", "1_0", "+3"])
def test_an_invalid_replica_setting_is_refused_naming_the_variable_and_the_range(raw: str) -> None:
    with pytest.raises(InvalidReplicas) as caught:
        js_replicas({"MODELBUS_JS_REPLICAS": raw})
    assert "MODELBUS_JS_REPLICAS" in str(caught.value) and "1 to 5" in str(caught.value)


# ---------------------------------------------------------------- ensure


def test_ensure_stream_creates_once_and_leaves_other_settings_of_an_existing_stream_alone(
    server: EmbeddedNats,
) -> None:
    async def scenario() -> None:
        nc = await _connect(server.url)
        js = nc.jetstream()
        config = StreamConfig(name="T1", subjects=["t1.>"], storage=StorageType.FILE, max_msgs=10)
        first = await ensure_stream(js, config, replicas=1)
        assert first.created and not first.updated and first.info.config.num_replicas == 1
        await js.update_stream(StreamConfig(name="T1", subjects=["t1.>"], storage=StorageType.FILE, max_msgs=99))
        again = await ensure_stream(js, config, replicas=1)
        assert not again.created and not again.updated
        assert again.info.config.max_msgs == 99  # not "fixed" back: only the replica count is managed
        await nc.close()

    run(scenario())


def test_two_processes_creating_the_same_stream_at_once_both_succeed(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        a, b = await _connect(server.url), await _connect(server.url)
        config = StreamConfig(name="RACE", subjects=["race"], storage=StorageType.MEMORY)
        results = await asyncio.gather(*(ensure_stream(nc.jetstream(), config, replicas=1) for nc in (a, b)))
        # nats-server answers an identical create with the existing stream, so both may see "created".
        assert {r.info.config.name for r in results} == {"RACE"} and any(r.created for r in results)
        assert (await a.jetstream().stream_info("RACE")).config.subjects == ["race"]
        await a.close()
        await b.close()

    run(scenario())


def test_more_replicas_than_a_single_server_can_hold_is_a_clear_start_up_error(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await _connect(server.url)
        with pytest.raises(JetStreamSetupError) as caught:
            await ensure_stream(nc.jetstream(), StreamConfig(name="R3", subjects=["r3"]), replicas=3)
        message = str(caught.value)
        assert "R3" in message and "3 replica" in message and "MODELBUS_JS_REPLICAS=1" in message
        _, ensured = await ensure_kv(nc.jetstream(), KeyValueConfig(bucket="kv1"), replicas=1)
        assert ensured.created
        with pytest.raises(JetStreamSetupError):
            await ensure_replicas(nc.jetstream(), "KV_kv1", replicas=3)
        assert await ensure_replicas(nc.jetstream(), "KV_absent", replicas=1) is None
        await nc.close()

    run(scenario())


def test_ensure_kv_opens_a_bucket_that_exists_and_says_so(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await _connect(server.url)
        config = KeyValueConfig(bucket="kv2", storage=StorageType.MEMORY, history=1)
        kv, ensured = await ensure_kv(nc.jetstream(), config, replicas=1)
        assert ensured.created
        await kv.put("k", b"v")
        again, ensured = await ensure_kv(nc.jetstream(), config, replicas=1)
        assert not ensured.created and (await again.get("k")).value == b"v"
        await nc.close()

    run(scenario())


def test_a_missing_stream_is_told_apart_from_a_missing_key(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await _connect(server.url)
        js = nc.jetstream()
        kv, _ = await ensure_kv(js, KeyValueConfig(bucket="kv3"), replicas=1)
        with pytest.raises(NotFoundError) as key_missing:
            await kv.get("absent")
        assert not stream_missing(key_missing.value)
        await js.delete_key_value("kv3")
        # nats-py reports kv.get() on a deleted bucket as a missing key; writes and info tell the truth.
        for operation in (kv.put("k", b"v"), kv.create("k2", b"v"), js.stream_info("KV_kv3")):
            with pytest.raises(Exception) as caught:
                await operation
            assert stream_missing(caught.value), caught.value
        assert not stream_missing(nats.errors.TimeoutError())
        await nc.close()

    run(scenario())


# ---------------------------------------------------------------- the keeper


def test_the_keeper_repairs_after_a_server_restart_and_brings_a_lost_memory_bucket_back(
    server: EmbeddedNats,
) -> None:
    """A memory bucket is lost with its server: the repair after the reconnect makes it again."""
    config = KeyValueConfig(bucket="mem", storage=StorageType.MEMORY, history=1)

    async def scenario() -> None:
        nc = await _connect(server.url)
        reasons: list[str] = []

        async def repair(reason: str) -> None:
            reasons.append(reason)
            await ensure_kv(nc.jetstream(), config, replicas=1)

        await ensure_kv(nc.jetstream(), config, replicas=1)
        keeper = StateKeeper(nc, "test", repair, check_every_s=60)
        keeper.start()
        server.kill()
        await asyncio.to_thread(server.restart)
        started = time.monotonic()
        await asyncio.wait_for(keeper.healed.wait(), 15)
        assert reasons[0] == "reconnected"
        assert time.monotonic() - started < 3.0
        kv = await nc.jetstream().key_value("mem")
        await kv.put("k", b"back")
        await keeper.stop()
        await nc.close()

    run(scenario())


def test_a_poke_runs_the_repair_and_a_failing_repair_is_retried_until_it_succeeds(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await _connect(server.url)
        calls: list[str] = []

        async def repair(reason: str) -> None:
            calls.append(reason)
            if len(calls) < 3:
                raise RuntimeError("JetStream not ready")

        keeper = StateKeeper(nc, "test", repair, check_every_s=60)
        keeper.start()
        keeper.poke()
        await asyncio.wait_for(keeper.healed.wait(), 10)
        assert calls == ["missing", "missing", "missing"] and keeper.repairs == 1
        await keeper.stop()
        await nc.close()

    run(scenario())


def test_the_keeper_checks_periodically_while_nothing_happens(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await _connect(server.url)
        calls: list[str] = []

        async def repair(reason: str) -> None:
            calls.append(reason)

        keeper = StateKeeper(nc, "test", repair, check_every_s=0.2)
        keeper.start()
        await _until(lambda: len(calls) >= 2)
        assert set(calls) == {"check"} and not keeper.healed.is_set()
        await keeper.stop()
        await nc.close()

    run(scenario())


class _SlowJetStream:
    """A JetStream context that times out ``misses`` times before it answers (a cluster electing leaders)."""

    def __init__(self, misses: int) -> None:
        self.misses = misses
        self.asked = 0

    async def stream_info(self, name: str) -> StreamInfo:
        self.asked += 1
        if self.asked <= self.misses:
            raise nats.errors.TimeoutError
        return StreamInfo(
            config=StreamConfig(name=name),
            state=StreamState(messages=0, bytes=0, first_seq=0, last_seq=0, consumer_count=0),
        )


def test_a_stream_lookup_asks_again_while_a_starting_cluster_does_not_answer() -> None:
    from shared import jetstream

    slow = _SlowJetStream(misses=2)
    info = run(jetstream._info(slow, "S", patience_s=10))  # type: ignore[arg-type]
    assert info is not None and info.config.name == "S"
    assert slow.asked == 3


def test_a_stream_lookup_gives_up_with_the_timeout_after_its_patience() -> None:
    from shared import jetstream

    silent = _SlowJetStream(misses=1000)
    with pytest.raises(nats.errors.TimeoutError):
        run(jetstream._info(silent, "S", patience_s=0.3))  # type: ignore[arg-type]
    assert 1 < silent.asked < 10
