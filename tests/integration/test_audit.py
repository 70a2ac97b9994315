"""The audit log against a real nats-server: appends, durability, concurrency and tampering.

Every test writes to its own stream and subject, so tests never see each
other's entries although they share the module's server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import APIError

from services.config.audit import (
    AuditChainBroken,
    AuditEntry,
    AuditLog,
    audit_stream_config,
    decode_entry,
    encode_entry,
    entry_hash,
)
from shared.natsserver import EmbeddedNats
from tests.conftest import run

pytestmark = pytest.mark.timeout(60)


def fresh_names() -> tuple[str, str]:
    """A stream and subject no other test uses."""
    tag = uuid.uuid4().hex[:12]
    return f"AUDIT_TEST_{tag.upper()}", f"test.audit.{tag}"


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


async def append_many(log: AuditLog, count: int, actor: str = "cli:alice") -> list[AuditEntry]:
    return [
        await log.append(actor, "apply", f"ModelEndpoint e{i}", revision=i + 1, details={"resources": 1})
        for i in range(count)
    ]


def test_twenty_appended_entries_form_a_chain_that_verifies(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            log = AuditLog(nc.jetstream(), stream=stream, subject=subject)
            appended = await append_many(log, 20)
            report = await log.verify()
            listed = await log.entries()

        assert report.ok, report.describe()
        assert (report.checked, report.head_index, report.head_hash) == (20, 20, appended[-1].hash)
        assert listed == appended
        assert [e.index for e in listed] == list(range(1, 21))
        assert all(b.prev_hash == a.hash for a, b in pairwise(listed))
        assert listed[4].revision == 5 and listed[4].target == "ModelEndpoint e4"

    run(scenario())


def test_entries_can_be_listed_newest_first_or_paged_from_an_index(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            log = AuditLog(nc.jetstream(), stream=stream, subject=subject)
            assert await log.entries() == []
            await append_many(log, 10)
            newest = await log.entries(limit=3)
            page = await log.entries(since=4, limit=3)
            rest = await log.entries(since=9)

        assert [e.index for e in newest] == [8, 9, 10]
        assert [e.index for e in page] == [4, 5, 6]
        assert [e.index for e in rest] == [9, 10]

    run(scenario())


def test_entries_survive_a_new_connection_and_the_chain_continues(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            first = await append_many(AuditLog(nc.jetstream(), stream=stream, subject=subject), 3)
        async with connection(nats_server.url) as nc:
            log = AuditLog(nc.jetstream(), stream=stream, subject=subject)
            assert await log.entries() == first
            fourth = await log.append("cli:bob", "rollback", "3 resources", revision=2)
            report = await log.verify()

        assert (fourth.index, fourth.prev_hash) == (4, first[-1].hash)
        assert report.ok and report.checked == 4

    run(scenario())


def test_entries_survive_a_server_restart(tmp_path: Path) -> None:
    """File storage: the log outlives the nats-server process, not just the connection."""
    stream, subject = fresh_names()

    async def write(url: str) -> list[AuditEntry]:
        async with connection(url) as nc:
            return await append_many(AuditLog(nc.jetstream(), stream=stream, subject=subject), 5)

    async def read(url: str) -> tuple[list[AuditEntry], bool]:
        async with connection(url) as nc:
            log = AuditLog(nc.jetstream(), stream=stream, subject=subject)
            return await log.entries(), (await log.verify()).ok

    with EmbeddedNats(tmp_path / "nats", log_file=None) as server:
        written = run(write(server.url))
    with EmbeddedNats(tmp_path / "nats", log_file=None) as server:
        listed, ok = run(read(server.url))
    assert listed == written
    assert ok


@pytest.mark.parametrize("logs_per_connection", [1, 5])
def test_concurrent_appends_from_two_connections_form_one_unforked_chain(
    nats_server: EmbeddedNats, logs_per_connection: int
) -> None:
    """Appenders in different processes race; the expected-last-sequence check makes losers retry."""

    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc1, connection(nats_server.url) as nc2:
            logs = [
                AuditLog(nc.jetstream(), stream=stream, subject=subject)
                for nc in (nc1, nc2)
                for _ in range(logs_per_connection)
            ]
            appended = await asyncio.gather(
                *(
                    logs[i % len(logs)].append(f"log{i % len(logs)}", "apply", f"call {i}", revision=i)
                    for i in range(50)
                )
            )
            report = await logs[0].verify()
            listed = await logs[-1].entries()

        assert report.ok, report.describe()
        assert report.checked == 50
        assert sorted(e.index for e in appended) == list(range(1, 51))
        assert sorted(listed, key=lambda e: e.index) == sorted(appended, key=lambda e: e.index)
        assert {e.actor for e in listed} == {f"log{i}" for i in range(len(logs))}

    run(scenario())


def test_the_stream_the_log_creates_refuses_to_delete_entries(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            log = AuditLog(js, stream=stream, subject=subject)
            await append_many(log, 3)
            with pytest.raises(APIError, match="message delete not permitted"):
                await js.delete_msg(stream, 2)
            with pytest.raises(APIError):
                await js.purge_stream(stream)
            config = (await js.stream_info(stream)).config
            report = await log.verify()

        assert report.ok and report.checked == 3
        assert config.storage == "file" and config.discard == "new"
        assert (config.max_msgs, config.max_bytes, config.max_age) == (-1, -1, 0)

    run(scenario())


def test_a_message_deleted_from_the_middle_is_reported_as_a_gap_at_its_sequence(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            # A stream created by hand without the delete protection the log would have set.
            await js.add_stream(audit_stream_config(stream, subject).evolve(deny_delete=False))
            log = AuditLog(js, stream=stream, subject=subject)
            await append_many(log, 10)
            assert await js.delete_msg(stream, 6)
            report = await log.verify()

        assert not report.ok and report.broken is not None
        assert (report.broken.sequence, report.broken.index) == (6, 6)
        assert report.broken.reason == "missing entry (gap at sequence 6)"
        assert report.checked == 5

    run(scenario())


def test_a_deleted_newest_entry_is_reported_and_blocks_further_appends(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            await js.add_stream(audit_stream_config(stream, subject).evolve(deny_delete=False))
            log = AuditLog(js, stream=stream, subject=subject)
            await append_many(log, 4)
            assert await js.delete_msg(stream, 4)
            report = await log.verify()
            with pytest.raises(AuditChainBroken, match="newest audit entry"):
                await log.append("cli:alice", "apply", "ModelEndpoint x")

        assert report.broken is not None
        assert report.broken.reason == "missing entry (gap at sequence 4)"
        assert report.checked == 3

    run(scenario())


def test_a_republished_copy_with_a_changed_actor_is_a_hash_mismatch_at_its_sequence(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            log = AuditLog(js, stream=stream, subject=subject)
            await append_many(log, 5)
            original = await js.get_msg(stream, seq=3)
            doc = json.loads(original.data or b"")
            doc["actor"] = "cli:mallory"  # hash left as it was
            ack = await js.publish(subject, json.dumps(doc).encode(), stream=stream)
            report = await log.verify()

        assert ack.seq == 6
        assert not report.ok and report.broken is not None
        assert (report.broken.sequence, report.broken.reason) == (6, "hash mismatch")
        assert report.checked == 5

    run(scenario())


def test_a_republished_copy_with_a_recomputed_hash_does_not_fit_the_chain(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            log = AuditLog(js, stream=stream, subject=subject)
            await append_many(log, 5)
            original = decode_entry((await js.get_msg(stream, seq=3)).data or b"")
            forged = msgspec.structs.replace(original, actor="cli:mallory", hash="")
            forged = msgspec.structs.replace(forged, hash=entry_hash(forged))
            await js.publish(subject, encode_entry(forged), stream=stream)
            report = await log.verify()

        assert report.broken is not None
        assert (report.broken.sequence, report.broken.index) == (6, 6)
        assert report.broken.reason == "index 3 where 6 was expected"

    run(scenario())


def test_a_secret_carrying_details_key_is_refused_and_nothing_is_appended(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            log = AuditLog(js, stream=stream, subject=subject)
            await log.append("boot", "boot", "3 resources", revision=1)
            with pytest.raises(ValueError, match="api_key: looks like a secret value"):
                await log.append(
                    "cli:alice", "secret.set", "secret llm-providers/openai", details={"api_key": "sk-live-123"}
                )
            state = (await js.stream_info(stream)).state
            following = await log.append(
                "cli:alice", "secret.set", "secret llm-providers/openai", details={"secret_name": "openai"}
            )
            stored = b"".join([(await js.get_msg(stream, seq=s)).data or b"" for s in (1, 2)])

        assert state.messages == 1
        assert following.index == 2
        assert b"sk-live-123" not in stored

    run(scenario())
