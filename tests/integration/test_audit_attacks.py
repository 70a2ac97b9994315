"""Attacks on the audit log that the chain alone cannot see, against a real nats-server.

The attacker here holds full broker access (no identities on this server), so
it can delete streams and rebuild them from copies: what the broker's
permissions refuse in secure mode (``test_config_attacks.py``) is assumed to
have happened anyway. It does not hold the audit key. Each test runs the
config service's own :class:`ConfigManager` on streams of its own and asks
:class:`AuditVerifier` (what ``modelbus audit verify`` runs) to find the break.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import APIError

from services.config.audit import AuditLog, AuditVerifier, audit_stream_config, next_entry, rfc3339_utc
from services.config.audit_chain import GENESIS, LegacyAuditEntry, encode_entry, legacy_hash
from services.config.audit_key import AuditKey
from services.config.manager import ConfigManager
from services.config.store import ConfigLog
from shared.admin import AuditReport
from shared.errors import ModelbusError
from shared.natsserver import EmbeddedNats
from tests.conftest import run

pytestmark = pytest.mark.timeout(60)

KEY = AuditKey(bytes(range(32)))
ENDPOINT = {"apiVersion": "modelbus.dev/v1", "kind": "ModelEndpoint", "metadata": {"name": "mock"},
            "spec": {"provider": "mock", "default_model": "mock-1"}}  # fmt: skip


def alias(name: str, model: str = "m") -> str:
    doc = {"apiVersion": "modelbus.dev/v1", "kind": "ModelAlias", "metadata": {"name": name},
           "spec": {"targets": [{"endpoint": "mock", "model": model}]}}  # fmt: skip
    return json.dumps(ENDPOINT) + "\n---\n" + json.dumps(doc)


@dataclass
class Service:
    """The config service's state objects on streams private to one test."""

    nc: Client
    manager: ConfigManager
    audit: AuditLog
    config_log: ConfigLog
    clock: Callable[[], datetime]

    async def report(self, *, stream_age_tolerance_s: float = 300.0) -> AuditReport:
        verifier = AuditVerifier(self.audit, self.config_log, stream_age_tolerance_s=stream_age_tolerance_s)
        return await verifier.verify()

    async def restart(self) -> Service:
        """A new config service process on the same streams (it recreates what is missing)."""
        return await open_service(self.nc, self.config_log.stream, self.audit.stream, self.clock)

    async def raw_entries(self) -> list[bytes]:
        js = self.nc.jetstream()
        last = (await js.stream_info(self.audit.stream)).state.last_seq
        return [(await js.get_msg(self.audit.stream, seq=s)).data or b"" for s in range(1, last + 1)]

    async def rebuild_audit_stream(self, keep: slice) -> None:
        """The attack: delete the audit stream, create it again, republish a slice of the old entries."""
        js = self.nc.jetstream()
        entries = await self.raw_entries()
        assert await js.delete_stream(self.audit.stream)
        await js.add_stream(audit_stream_config(self.audit.stream, self.audit.subject))
        for raw in entries[keep]:
            await js.publish(self.audit.subject, raw, stream=self.audit.stream)


async def open_service(
    nc: Client, config_stream: str, audit_stream: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Service:
    js = nc.jetstream()
    config_log = ConfigLog(js, stream=config_stream, subject=f"test.{config_stream.lower()}")
    await config_log.ensure()
    audit = AuditLog(js, KEY, stream=audit_stream, subject=f"test.{audit_stream.lower()}", clock=clock)
    await audit.ensure_stream()
    manager = ConfigManager(nc, config_log, auditor=audit)
    await manager.load()
    return Service(nc, manager, audit, config_log, clock)


@asynccontextmanager
async def service(url: str, clock: Callable[[], datetime] | None = None) -> AsyncIterator[Service]:
    tag = uuid.uuid4().hex[:10].upper()
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield await open_service(nc, f"CFG_{tag}", f"AUD_{tag}", clock or (lambda: datetime.now(UTC)))
    finally:
        await nc.close()


async def secret_entry(s: Service, name: str) -> None:
    """What a secret set appends: an entry with no revision."""
    await s.audit.append("cli:alice", "secret.set", f"secret {name}")


def test_an_untouched_history_verifies_with_every_revision_checked(nats_server: EmbeddedNats) -> None:
    async def scenario() -> AuditReport:
        async with service(nats_server.url) as s:
            await s.manager.apply_text(alias("one"), actor="cli:alice")
            await secret_entry(s, "a")
            await s.manager.apply_text(alias("two"), actor="cli:alice")
            await s.manager.rollback(1, actor="cli:bob")
            return await s.report()

    report = run(scenario())
    assert report.ok, report
    assert (report.entries, report.revisions) == (4, 3)


def test_a_deleted_audit_stream_fails_verification_and_so_does_its_recreation(nats_server: EmbeddedNats) -> None:
    async def scenario() -> tuple[AuditReport, AuditReport]:
        async with service(nats_server.url) as s:
            for name in ("one", "two", "three"):
                await s.manager.apply_text(alias(name), actor="cli:alice")
            assert (await s.report()).ok
            assert await s.nc.jetstream().delete_stream(s.audit.stream)
            deleted = await s.report()
            restarted = await s.restart()  # creates an empty audit stream again
            return deleted, await restarted.report()

    deleted, recreated = run(scenario())
    assert not deleted.ok and deleted.broken_at == 1
    assert deleted.reason is not None and "does not exist" in deleted.reason and "deleted" in deleted.reason
    assert not recreated.ok
    assert (recreated.revision, recreated.reason) == (1, "config revision 1 has no audit entry")


def test_entries_removed_from_the_end_fail_verification_naming_the_revision(nats_server: EmbeddedNats) -> None:
    async def scenario() -> AuditReport:
        async with service(nats_server.url) as s:
            await s.manager.apply_text(alias("one"), actor="cli:alice")  # entry 1
            await secret_entry(s, "a")  # entry 2
            await s.manager.apply_text(alias("two"), actor="cli:alice")  # entry 3
            await secret_entry(s, "b")  # entry 4
            await s.manager.apply_text(alias("three"), actor="cli:alice")  # anchored at 4, entry 5
            await s.rebuild_audit_stream(slice(0, 3))
            return await s.report()

    report = run(scenario())
    assert not report.ok and report.revision == 3 and report.broken_at == 4
    assert report.reason is not None
    assert "committed after audit entry 4, but the audit log ends at entry 3" in report.reason


def test_entries_removed_from_the_start_fail_verification(nats_server: EmbeddedNats) -> None:
    async def scenario() -> AuditReport:
        async with service(nats_server.url) as s:
            for name in ("one", "two", "three"):
                await s.manager.apply_text(alias(name), actor="cli:alice")
            await s.rebuild_audit_stream(slice(1, None))
            return await s.report()

    report = run(scenario())
    assert not report.ok
    assert (report.broken_at, report.reason) == (1, "index 2 where 1 was expected")


def test_trailing_entries_removed_by_rebuilding_the_stream_fail_verification(nats_server: EmbeddedNats) -> None:
    """Secret entries after the newest revision have no anchor; the rebuilt stream's age gives it away.

    One host's clock serves both sides here, so the clock-skew tolerance is 0
    rather than waiting minutes for the rebuild to be late enough.
    """

    async def scenario() -> tuple[AuditReport, AuditReport]:
        async with service(nats_server.url) as s:
            await s.manager.apply_text(alias("one"), actor="cli:alice")
            await secret_entry(s, "a")
            await secret_entry(s, "b")
            before = await s.report(stream_age_tolerance_s=0)
            await s.rebuild_audit_stream(slice(0, 1))
            return before, await s.report(stream_age_tolerance_s=0)

    before, after = run(scenario())
    assert before.ok, before
    assert not after.ok and after.reason is not None
    assert "deleted and rebuilt" in after.reason


def test_an_entry_forged_without_the_key_fails_verification(nats_server: EmbeddedNats) -> None:
    async def scenario() -> AuditReport:
        async with service(nats_server.url) as s:
            await s.manager.apply_text(alias("one"), actor="cli:alice")
            head = (await s.audit.entries())[-1]
            forged = next_entry(
                head, key=AuditKey(b"\x07" * 32), actor="cli:mallory", action="secret.delete", target="x", time="x"
            )
            await s.nc.jetstream().publish(s.audit.subject, encode_entry(forged), stream=s.audit.stream)
            return await s.report()

    report = run(scenario())
    assert not report.ok and report.broken_at == 2
    assert report.reason is not None and report.reason.startswith("sealed with another audit key")


class CrashingAuditor:
    """An audit log whose process dies between a revision's commit and its entry (once)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def append(self, *args: Any, **kwargs: Any) -> object:
        raise ConnectionError("killed")

    async def anchor(self) -> Any:
        return await self.audit.anchor()


def test_a_revision_without_its_audit_entry_fails_until_the_restarted_service_appends_it(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> tuple[AuditReport, bool, AuditReport, list[Any]]:
        async with service(nats_server.url) as s:
            await s.manager.apply_text(alias("one"), actor="cli:alice")
            crashing = ConfigManager(s.nc, s.config_log, auditor=CrashingAuditor(s.audit))
            await crashing.load()
            with pytest.raises(ModelbusError, match="revision 2 was applied, but appending to the audit log failed"):
                await crashing.apply_text(alias("two"), actor="cli:alice")
            missing = await s.report()
            restarted = await s.restart()
            repaired = await restarted.manager.audit_head_revision()
            return missing, repaired, await restarted.report(), await s.audit.entries()

    missing, repaired, after, entries = run(scenario())
    assert not missing.ok
    assert (missing.revision, missing.reason, missing.broken_at) == (2, "config revision 2 has no audit entry", 2)
    assert repaired
    assert after.ok, after
    assert entries[-1].revision == 2 and entries[-1].details["late"] is True


def test_a_deleted_config_stream_fails_verification(nats_server: EmbeddedNats) -> None:
    async def scenario() -> AuditReport:
        async with service(nats_server.url) as s:
            await s.manager.apply_text(alias("one"), actor="cli:alice")
            await s.manager.apply_text(alias("two"), actor="cli:alice")
            assert await s.nc.jetstream().delete_stream(s.config_log.stream)
            restarted = await s.restart()
            await restarted.manager.apply_text(alias("again"), actor="boot")  # revision 1 again, other content
            return await restarted.report()

    report = run(scenario())
    assert not report.ok and report.revision == 1
    assert report.reason is not None and "differs from what audit entry 1 recorded" in report.reason


def test_the_config_and_audit_streams_refuse_deletes_and_purges_even_if_created_unprotected(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> list[str]:
        tag = uuid.uuid4().hex[:10].upper()
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            # What an older config service created: no delete or purge protection.
            await js.add_stream(StreamConfig(name=f"CFG_{tag}", subjects=[f"test.cfg_{tag.lower()}"]))
            s = await open_service(nc, f"CFG_{tag}", f"AUD_{tag}")
            await s.manager.apply_text(alias("one"), actor="cli:alice")
            await s.manager.apply_text(alias("two"), actor="cli:alice")
            refusals: list[str] = []
            for stream in (s.config_log.stream, s.audit.stream):
                with pytest.raises(APIError) as refused:
                    await js.delete_msg(stream, 1)
                refusals.append(str(refused.value.description))
                with pytest.raises(APIError) as refused:
                    await js.purge_stream(stream)
                refusals.append(str(refused.value.description))
            history = await s.manager.history()
            rolled = await s.manager.rollback(1, actor="cli:alice")  # history and rollback never delete
            assert [h.revision for h in history.items] == [2, 1] and rolled.revision == 3
            assert (await s.report()).ok
            return refusals
        finally:
            await nc.close()

    assert run(scenario()) == ["message delete not permitted", "stream purge not permitted"] * 2


def test_a_pre_hmac_deployment_upgrades_to_a_chain_that_verifies(nats_server: EmbeddedNats) -> None:
    """Revisions without anchors and unkeyed entries, as the old config service left them."""

    async def scenario() -> tuple[AuditReport, list[Any]]:
        tag = uuid.uuid4().hex[:10].upper()
        nc = await nats.connect(nats_server.url)
        try:
            old = await open_service(nc, f"CFG_{tag}", f"AUD_{tag}")
            unaudited = ConfigManager(nc, old.config_log)  # no auditor: records carry no anchor
            previous: LegacyAuditEntry | None = None
            for revision, name in enumerate(("one", "two"), start=1):
                await unaudited.apply_text(alias(name), actor="cli:alice")
                entry = LegacyAuditEntry(
                    index=revision, time=rfc3339_utc(datetime.now(UTC)), actor="cli:alice", action="apply",
                    target="2 resource(s)", revision=revision, prev_hash=previous.hash if previous else GENESIS,
                    hash="",
                )  # fmt: skip
                previous = msgspec.structs.replace(entry, hash=legacy_hash(entry))
                await nc.jetstream().publish(old.audit.subject, encode_entry(previous), stream=old.audit.stream)
            new = await old.restart()
            await new.audit.seal_legacy()  # what the config service does at start-up
            await new.manager.apply_text(alias("three"), actor="cli:alice")
            return await new.report(), await new.audit.entries()
        finally:
            await nc.close()

    report, entries = run(scenario())
    assert report.ok, report
    assert (report.entries, report.legacy_entries, report.revisions) == (4, 2, 3)
    assert [e.action for e in entries] == ["apply", "apply", "audit.seal", "apply"]


def test_a_restart_does_not_re_audit_a_revision_whose_log_was_emptied(nats_server: EmbeddedNats) -> None:
    """Only a crash leaves the audit head where the revision saw it; a deleted log must stay reported."""

    async def scenario() -> tuple[bool, AuditReport]:
        async with service(nats_server.url) as s:
            await s.manager.apply_text(alias("one"), actor="cli:alice")
            await secret_entry(s, "a")
            await s.manager.apply_text(alias("two"), actor="cli:alice")  # anchored at entry 2
            assert await s.nc.jetstream().delete_stream(s.audit.stream)
            restarted = await s.restart()
            repaired = await restarted.manager.audit_head_revision()
            return repaired, await restarted.report()

    repaired, report = run(scenario())
    assert not repaired
    assert not report.ok and report.revision == 1
