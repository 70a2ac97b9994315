"""The audit log in JetStream: append with compare-and-set, verify by walking the streams.

See :mod:`services.config.audit_chain` for the entry format and
:mod:`services.config.audit_verify` for what verification checks; their names
are re-exported here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, Header, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

from services.config.audit_chain import (
    _WRONG_LAST_SEQUENCE,
    GENESIS,
    GENESIS_HASH,
    MAX_DETAILS,
    MAX_TEXT,
    AnyEntry,
    AuditChainBroken,
    AuditEntry,
    AuditError,
    DetailValue,
    LegacyAuditEntry,
    canonical_bytes,
    check_details,
    check_fields,
    decode_entry,
    encode_entry,
    entry_mac,
    is_secret_carrier,
    legacy_hash,
    next_entry,
    rfc3339_utc,
)
from services.config.audit_key import AuditKey
from services.config.audit_verify import (
    STREAM_AGE_TOLERANCE_S,
    AnchorChecker,
    BrokenLink,
    ChainVerifier,
    RecordFacts,
    VerifyReport,
    check_stream_age,
    verify_chain,
)
from services.config.store import ConfigLog
from services.config.streams import StreamReadError, protect, scan
from shared.admin import AuditAnchor, AuditReport
from shared.jetstream import Ensured, ensure_stream
from shared.subjects import AUDIT_STREAM, AUDIT_SUBJECT

__all__ = [
    "GENESIS",
    "GENESIS_HASH",
    "MAX_DETAILS",
    "MAX_TEXT",
    "AnyEntry",
    "AuditChainBroken",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditVerifier",
    "BrokenLink",
    "ChainVerifier",
    "DetailValue",
    "LegacyAuditEntry",
    "VerifyReport",
    "audit_stream_config",
    "canonical_bytes",
    "check_details",
    "check_fields",
    "decode_entry",
    "encode_entry",
    "entry_mac",
    "is_secret_carrier",
    "legacy_hash",
    "next_entry",
    "rfc3339_utc",
    "verify_chain",
]

log = logging.getLogger("modelbus.config.audit")

SEAL_ACTION = "audit.seal"
"""Action of the keyed entry that seals a pre-HMAC prefix of the chain."""


def audit_stream_config(stream: str = AUDIT_STREAM, subject: str = AUDIT_SUBJECT) -> StreamConfig:
    """The stream :class:`AuditLog` creates when it is absent.

    Nothing ever drops an entry: no age, count or size limit, and ``discard=new``
    so that if an operator adds a limit, appends fail loudly instead of the
    oldest entries vanishing. Deletes and purges are refused (permanently).
    """
    return StreamConfig(
        name=stream,
        description="modelbus audit log: HMAC-chained, append-only (written only by the config service)",
        subjects=[subject],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=-1,
        discard=DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Appends to, lists and verifies the audit chain in a JetStream stream.

    A library, not a service: the config service appends, and answers
    ``modelbus audit verify`` through :class:`AuditVerifier`. Appends are
    serialised in this process by a lock and across processes by publishing
    with ``Nats-Expected-Last-Sequence``: an appender that lost the race
    rereads the head and tries again, so the chain never forks.
    """

    def __init__(
        self,
        js: JetStreamContext,
        key: AuditKey,
        *,
        stream: str = AUDIT_STREAM,
        subject: str = AUDIT_SUBJECT,
        timeout: float = 5.0,
        max_attempts: int = 20,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._js = js
        self.key = key
        self.stream = stream
        self.subject = subject
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._clock = clock
        self._lock = asyncio.Lock()
        self._stream_ready = False

    async def ensure_stream(self, *, recheck: bool = False) -> Ensured | None:
        """Create the stream if it does not exist (``MODELBUS_JS_REPLICAS`` replicas); bring an existing
        one to that replica count, protect it, and warn if it could lose entries.

        Checked once, then taken for granted; ``recheck`` checks again (after a
        reconnect or a lost server, see :func:`services.config.service.config_state_keeper`).
        Returns what was found, ``None`` when it was taken for granted.
        """
        if self._stream_ready and not recheck:
            return None
        ensured = await ensure_stream(self._js, audit_stream_config(self.stream, self.subject))
        info = ensured.info
        if ensured.created:
            log.info("created audit stream %s on %s", self.stream, self.subject)
        config = info.config
        if self.subject not in (config.subjects or []):
            raise AuditError(f"stream {self.stream} does not store subject {self.subject}")
        info = await protect(self._js, info)
        config = info.config
        limited = any((limit or 0) > 0 for limit in (config.max_msgs, config.max_bytes, config.max_age))
        if limited and config.discard != DiscardPolicy.NEW:
            log.warning("audit stream %s has limits with discard=old: old entries will be dropped", self.stream)
        self._stream_ready = True
        return ensured

    async def append(
        self,
        actor: str,
        action: str,
        target: str,
        revision: int | None = None,
        details: Mapping[str, object] | None = None,
        *,
        record: str | None = None,
    ) -> AuditEntry:
        """Append one sealed entry after the current head and return it.

        ``record`` is the config-stream digest of ``revision``
        (:func:`services.config.store.record_digest`). Raises
        :class:`ValueError` for invalid fields (a secret-looking detail key
        included) before touching the stream, :class:`AuditChainBroken` when
        the head cannot be read, and :class:`AuditError` when the stream does
        not answer or the race is lost ``max_attempts`` times.
        """
        clean = check_fields(actor=actor, action=action, target=target, revision=revision, details=details)
        await self.ensure_stream()
        async with self._lock:
            attempted: set[str] = set()
            for attempt in range(self._max_attempts):
                last_sequence, head = await self._head()
                if isinstance(head, AuditEntry) and head.mac in attempted:
                    return head  # an earlier attempt timed out but was stored after all
                entry = next_entry(
                    head,
                    key=self.key,
                    actor=actor,
                    action=action,
                    target=target,
                    time=rfc3339_utc(self._clock()),
                    revision=revision,
                    record=record,
                    details=clean,
                )
                attempted.add(entry.mac)
                try:
                    await self._js.publish(
                        self.subject,
                        encode_entry(entry),
                        stream=self.stream,
                        timeout=self._timeout,
                        headers={Header.EXPECTED_LAST_SEQUENCE: str(last_sequence)},
                    )
                    return entry
                except APIError as exc:
                    if exc.err_code != _WRONG_LAST_SEQUENCE:
                        raise AuditError(f"audit append refused by the stream: {exc.description}") from exc
                except nats.errors.NoRespondersError as exc:
                    raise AuditError(f"the audit stream {self.stream} is gone (no stream stores it)") from exc
                except nats.errors.TimeoutError:
                    log.warning("audit append timed out (attempt %d); checking whether it was stored", attempt + 1)
                # Jittered backoff so appenders in several processes stop colliding.
                await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
        raise AuditError(f"audit append lost the race {self._max_attempts} times; try again")

    async def anchor(self) -> AuditAnchor:
        """The current head as a config record's anchor (index 0 and :data:`GENESIS` when empty)."""
        await self.ensure_stream()
        _, head = await self._head()
        if head is None:
            return AuditAnchor(index=0, mac=GENESIS)
        return AuditAnchor(index=head.index, mac=head.link)

    async def seal_legacy(self, actor: str = "boot") -> AuditEntry | None:
        """Seal a pre-HMAC head with a keyed ``audit.seal`` entry; ``None`` when there is nothing to seal."""
        await self.ensure_stream()
        _, head = await self._head()
        if not isinstance(head, LegacyAuditEntry):
            return None
        entry = await self.append(
            actor, SEAL_ACTION, f"{head.index} pre-HMAC entries", details={"legacy_entries": head.index}
        )
        log.info("sealed %d pre-HMAC audit entries with keyed entry %d", head.index, entry.index)
        return entry

    async def _head(self) -> tuple[int, AnyEntry | None]:
        """The stream's last sequence and the entry stored there (None when empty)."""
        last = await self._last_sequence()
        if last == 0:
            return 0, None
        try:
            message = await self._js.get_msg(self.stream, seq=last)
            return last, decode_entry(message.data or b"")
        except NotFoundError as exc:
            raise AuditChainBroken(f"the newest audit entry (stream sequence {last}) is missing") from exc
        except nats.errors.TimeoutError as exc:
            raise AuditError("the audit stream did not answer") from exc
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AuditChainBroken(f"the newest audit entry (stream sequence {last}) is undecodable: {exc}") from exc

    async def stream_info(self) -> StreamInfo | None:
        """The stream's info; ``None`` when it does not exist."""
        try:
            return await self._js.stream_info(self.stream)
        except NotFoundError:
            return None
        except nats.errors.TimeoutError as exc:
            raise AuditError("the audit stream did not answer") from exc

    async def _last_sequence(self) -> int:
        """The stream's last sequence (deleted messages included); 0 when it is absent."""
        info = await self.stream_info()
        return info.state.last_seq if info else 0

    async def _scan(self, start: int, last: int) -> AsyncGenerator[tuple[int, bytes], None]:
        try:
            async with aclosing(scan(self._js, self.stream, self.subject, start, last, timeout=self._timeout)) as it:
                async for item in it:
                    yield item
        except StreamReadError as exc:
            raise AuditError(str(exc)) from exc

    async def walk(self, verifier: ChainVerifier) -> VerifyReport:
        """Feed every entry from stream sequence 1 to ``verifier``; its report (check 1)."""
        last = await self._last_sequence()
        async with aclosing(self._scan(1, last)) as records:
            async for sequence, raw in records:
                if not verifier.feed(sequence, raw):
                    break
        return verifier.finish(last)

    async def verify(self) -> VerifyReport:
        """Walk the chain alone (no config log): check 1 of :mod:`services.config.audit_verify`."""
        return await self.walk(ChainVerifier(self.key))

    async def entries(self, limit: int | None = None, since: int | None = None) -> list[AnyEntry]:
        """Entries in chain order, for listing; undecodable messages are skipped.

        With ``since``, entries from index ``since`` on, at most ``limit`` of
        them (forward paging); without it, the newest ``limit`` (all when None).
        Use :class:`AuditVerifier` to judge integrity; this only reads.
        """
        if limit is not None and limit <= 0:
            return []
        last = await self._last_sequence()
        # Index i is stored at sequence i or later, so a scan from `since` misses nothing.
        start = max(since or 1, 1)
        found: deque[AnyEntry] = deque(maxlen=None if since is not None else limit)
        async with aclosing(self._scan(start, last)) as records:
            async for sequence, raw in records:
                try:
                    entry = decode_entry(raw)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("skipping undecodable audit message at sequence %d", sequence)
                    continue
                if since is not None and entry.index < since:
                    continue
                found.append(entry)
                if since is not None and limit is not None and len(found) >= limit:
                    break
        return list(found)


class AuditVerifier:
    """``modelbus audit verify``: the chain, the config log against it, and the stream's age."""

    def __init__(
        self, audit: AuditLog, config_log: ConfigLog, *, stream_age_tolerance_s: float = STREAM_AGE_TOLERANCE_S
    ) -> None:
        self.audit = audit
        self.config_log = config_log
        self.stream_age_tolerance_s = stream_age_tolerance_s

    async def report(self) -> VerifyReport:
        """The full verification (checks 1 to 3), stopping at the first break."""
        chain = ChainVerifier(self.audit.key)
        info = await self.audit.stream_info()
        report = await self.audit.walk(chain)
        if not report.ok:
            return report
        first, last = await self.config_log.bounds()
        if info is None and last > 0:
            return msgspec.structs.replace(
                report,
                ok=False,
                broken=BrokenLink(
                    sequence=1,
                    index=1,
                    reason=f"the audit stream {self.audit.stream} does not exist, but the config log holds "
                    f"revisions up to {last}: it was deleted",
                ),
            )
        anchors = AnchorChecker(chain)
        if first:
            try:
                async with aclosing(self.config_log.scan(first, last)) as records:
                    async for revision, raw in records:
                        facts = _facts(revision, raw)
                        if not anchors.feed(facts):
                            break
            except StreamReadError as exc:
                raise AuditError(str(exc)) from exc
        broken = anchors.finish(last) or check_stream_age(
            info.created if info else None, chain.first_time, tolerance_s=self.stream_age_tolerance_s
        )
        return msgspec.structs.replace(report, ok=broken is None, revisions=anchors.checked, broken=broken)

    async def verify(self) -> AuditReport:
        """The report in its wire form."""
        report = await self.report()
        broken = report.broken
        return AuditReport(
            ok=report.ok,
            entries=report.checked,
            broken_at=broken.sequence if broken else None,
            reason=broken.reason if broken else None,
            revision=broken.revision if broken else None,
            revisions=report.revisions,
            legacy_entries=report.legacy,
        )


def _facts(revision: int, raw: bytes) -> RecordFacts:
    try:
        anchor = ConfigLog.decode(raw).audit
    except (msgspec.DecodeError, msgspec.ValidationError):
        anchor = None  # an unreadable record is still checked by its digest against its audit entry
    return RecordFacts(revision=revision, anchor=anchor, digest=hashlib.sha256(raw).hexdigest())
