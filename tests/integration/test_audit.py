"""The audit log against a real nats-server: appends, durability, concurrency and tampering.

Every test writes to its own stream and subject, so tests never see each
other's entries although they share the module's server. The config log
checked against it (deleted, truncated, rebuilt streams) is in
``test_audit_attacks.py``.
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
from nats.js import JetStreamContext
from nats.js.errors import APIError

from services.config.audit import (
    AuditChainBroken,
    AuditEntry,
    AuditLog,
    LegacyAuditEntry,
    audit_stream_config,
    decode_entry,
    encode_entry,
    entry_mac,
    legacy_hash,
    next_entry,
)
from services.config.audit_key import AuditKey
from shared.natsserver import EmbeddedNats
from tests.conftest import run

KEY = AuditKey(bytes(range(32)))
MAC_MISMATCH = "MAC mismatch: the entry was changed or forged without the audit key"

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


async def publish_unprotected(js: JetStreamContext, stream: str, subject: str, count: int) -> None:
    """A chain written straight into a stream created by hand without delete protection
    (as an old or hand-made stream would be), bypassing the log that would protect it."""
    await js.add_stream(audit_stream_config(stream, subject).evolve(deny_delete=False))
    previous: AuditEntry | None = None
    for i in range(count):
        previous = next_entry(
            previous, key=KEY, actor="cli:alice", action="apply", target=f"e{i}", time="2025-01-31T12:00:00.000000Z"
        )
        await js.publish(subject, encode_entry(previous), stream=stream)


def test_twenty_appended_entries_form_a_chain_that_verifies(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            log = AuditLog(nc.jetstream(), KEY, stream=stream, subject=subject)
            appended = await append_many(log, 20)
            report = await log.verify()
            listed = await log.entries()

        assert report.ok, report.describe()
        assert (report.checked, report.head_index, report.head_mac) == (20, 20, appended[-1].mac)
        assert listed == appended
        assert [e.index for e in listed] == list(range(1, 21))
        assert all(isinstance(b, AuditEntry) and b.prev_mac == a.link for a, b in pairwise(listed))
        assert listed[4].revision == 5 and listed[4].target == "ModelEndpoint e4"

    run(scenario())


def test_entries_can_be_listed_newest_first_or_paged_from_an_index(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            log = AuditLog(nc.jetstream(), KEY, stream=stream, subject=subject)
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
            first = await append_many(AuditLog(nc.jetstream(), KEY, stream=stream, subject=subject), 3)
        async with connection(nats_server.url) as nc:
            log = AuditLog(nc.jetstream(), KEY, stream=stream, subject=subject)
            assert await log.entries() == first
            fourth = await log.append("cli:bob", "rollback", "3 resources", revision=2)
            report = await log.verify()

        assert (fourth.index, fourth.prev_mac) == (4, first[-1].link)
        assert report.ok and report.checked == 4

    run(scenario())


def test_entries_survive_a_server_restart(tmp_path: Path) -> None:
    """File storage: the log outlives the nats-server process, not just the connection."""
    stream, subject = fresh_names()

    async def write(url: str) -> list[AuditEntry]:
        async with connection(url) as nc:
            return await append_many(AuditLog(nc.jetstream(), KEY, stream=stream, subject=subject), 5)

    async def read(url: str) -> tuple[list[AuditEntry | LegacyAuditEntry], bool]:
        async with connection(url) as nc:
            log = AuditLog(nc.jetstream(), KEY, stream=stream, subject=subject)
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
                AuditLog(nc.jetstream(), KEY, stream=stream, subject=subject)
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
            log = AuditLog(js, KEY, stream=stream, subject=subject)
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
            await publish_unprotected(js, stream, subject, 10)
            log = AuditLog(js, KEY, stream=stream, subject=subject)
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
            await publish_unprotected(js, stream, subject, 4)
            log = AuditLog(js, KEY, stream=stream, subject=subject)
            assert await js.delete_msg(stream, 4)
            report = await log.verify()
            with pytest.raises(AuditChainBroken, match="newest audit entry"):
                await log.append("cli:alice", "apply", "ModelEndpoint x")

        assert report.broken is not None
        assert report.broken.reason == "missing entry (gap at sequence 4)"
        assert report.checked == 3

    run(scenario())


def test_a_republished_copy_with_a_changed_actor_is_a_mac_mismatch_at_its_sequence(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            log = AuditLog(js, KEY, stream=stream, subject=subject)
            await append_many(log, 5)
            original = await js.get_msg(stream, seq=3)
            doc = json.loads(original.data or b"")
            doc["actor"] = "cli:mallory"  # seal left as it was
            ack = await js.publish(subject, json.dumps(doc).encode(), stream=stream)
            report = await log.verify()

        assert ack.seq == 6
        assert not report.ok and report.broken is not None
        assert (report.broken.sequence, report.broken.reason) == (6, MAC_MISMATCH)
        assert report.checked == 5

    run(scenario())


def test_a_republished_copy_resealed_with_the_key_does_not_fit_the_chain(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            log = AuditLog(js, KEY, stream=stream, subject=subject)
            await append_many(log, 5)
            original = decode_entry((await js.get_msg(stream, seq=3)).data or b"")
            assert isinstance(original, AuditEntry)
            forged = msgspec.structs.replace(original, actor="cli:mallory", mac="")
            forged = msgspec.structs.replace(forged, mac=entry_mac(KEY, forged))
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
            log = AuditLog(js, KEY, stream=stream, subject=subject)
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


def test_an_appended_well_chained_forgery_without_the_key_is_refused(nats_server: EmbeddedNats) -> None:
    """The attack the unkeyed chain let through: the next entry, correctly linked, hashed with SHA-256."""

    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            log = AuditLog(js, KEY, stream=stream, subject=subject)
            appended = await append_many(log, 3)
            head = appended[-1]
            forged = LegacyAuditEntry(
                index=4, time=head.time, actor="cli:mallory", action="apply", target="x", prev_hash=head.mac, hash=""
            )
            forged = msgspec.structs.replace(forged, hash=legacy_hash(forged))
            await js.publish(subject, encode_entry(forged), stream=stream)
            keyed = AuditEntry(
                index=4, time=head.time, actor="cli:mallory", action="apply", target="x",
                key_id=KEY.key_id, prev_mac=head.mac, mac="0" * 64,
            )  # fmt: skip
            other_stream, other_subject = fresh_names()
            other = AuditLog(js, KEY, stream=other_stream, subject=other_subject)
            for entry in await append_many(other, 3):
                await js.publish(other_subject, encode_entry(entry), stream=other_stream)  # copies: 4..6 duplicate
            await js.publish(other_subject, encode_entry(keyed), stream=other_stream)
            report, other_report = await log.verify(), await other.verify()

        assert report.broken is not None
        assert (report.broken.sequence, report.broken.reason) == (
            4,
            "unkeyed (pre-HMAC) entry after keyed entries: forged",
        )
        assert other_report.broken is not None and other_report.broken.sequence == 4
        assert other_report.broken.reason == "index 1 where 4 was expected"

    run(scenario())


def test_a_stream_created_without_protection_is_protected_when_the_log_opens_it(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            await js.add_stream(audit_stream_config(stream, subject).evolve(deny_delete=False, deny_purge=False))
            await AuditLog(js, KEY, stream=stream, subject=subject).ensure_stream()
            config = (await js.stream_info(stream)).config
            with pytest.raises(APIError, match="can not cancel deny message deletes"):
                await js.update_stream(config.evolve(deny_delete=False))

        assert config.deny_delete and config.deny_purge

    run(scenario())


def test_a_pre_hmac_chain_is_sealed_once_and_then_verifies_with_its_legacy_entries_counted(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> None:
        stream, subject = fresh_names()
        async with connection(nats_server.url) as nc:
            js = nc.jetstream()
            await js.add_stream(audit_stream_config(stream, subject))
            previous: LegacyAuditEntry | None = None
            for i in range(3):  # what the unkeyed code wrote
                entry = LegacyAuditEntry(
                    index=i + 1, time="2025-01-31T12:00:00.000000Z", actor="boot", action="boot",
                    target="3 resources", revision=i + 1, prev_hash=previous.hash if previous else "0" * 64, hash="",
                )  # fmt: skip
                previous = msgspec.structs.replace(entry, hash=legacy_hash(entry))
                await js.publish(subject, encode_entry(previous), stream=stream)
            log = AuditLog(js, KEY, stream=stream, subject=subject)
            seal = await log.seal_legacy()
            again = await log.seal_legacy()
            report = await log.verify()

        assert seal is not None and again is None and previous is not None
        assert (seal.index, seal.action, seal.prev_mac) == (4, "audit.seal", previous.hash)
        assert report.ok and (report.checked, report.legacy) == (4, 3)

    run(scenario())
