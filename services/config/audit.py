"""The audit log in JetStream: append with compare-and-set, verify by walking the stream.

See :mod:`services.config.audit_chain` for the chain format; names are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Header,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError

from services.config.audit_chain import (
    _WRONG_LAST_SEQUENCE,
    GENESIS_HASH,
    MAX_DETAILS,
    MAX_TEXT,
    AuditChainBroken,
    AuditEntry,
    AuditError,
    BrokenLink,
    ChainVerifier,
    DetailValue,
    VerifyReport,
    canonical_bytes,
    check_details,
    check_fields,
    decode_entry,
    encode_entry,
    entry_hash,
    is_secret_carrier,
    next_entry,
    rfc3339_utc,
    verify_chain,
)
from shared.subjects import AUDIT_STREAM, AUDIT_SUBJECT

__all__ = [
    "GENESIS_HASH",
    "MAX_DETAILS",
    "MAX_TEXT",
    "AuditChainBroken",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "BrokenLink",
    "ChainVerifier",
    "DetailValue",
    "VerifyReport",
    "audit_stream_config",
    "canonical_bytes",
    "check_details",
    "check_fields",
    "decode_entry",
    "encode_entry",
    "entry_hash",
    "is_secret_carrier",
    "next_entry",
    "rfc3339_utc",
    "verify_chain",
]

log = logging.getLogger("modelbus.config.audit")


def audit_stream_config(stream: str = AUDIT_STREAM, subject: str = AUDIT_SUBJECT) -> StreamConfig:
    """The stream :class:`AuditLog` creates when it is absent.

    Nothing ever drops an entry: no age, count or size limit, and ``discard=new``
    so that if an operator adds a limit, appends fail loudly instead of the
    oldest entries vanishing. Deletes and purges are refused (permanently).
    """
    return StreamConfig(
        name=stream,
        description="modelbus audit log: hash-chained, append-only (written only by the config service)",
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
    ``modelbus audit verify`` with :meth:`verify`. Appends are serialised in
    this process by a lock and across processes by publishing with
    ``Nats-Expected-Last-Sequence``: an appender that lost the race rereads
    the head and tries again, so the chain never forks.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str = AUDIT_STREAM,
        subject: str = AUDIT_SUBJECT,
        timeout: float = 5.0,
        max_attempts: int = 20,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._js = js
        self.stream = stream
        self.subject = subject
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._clock = clock
        self._lock = asyncio.Lock()
        self._stream_ready = False

    async def ensure_stream(self) -> None:
        """Create the stream if it does not exist; warn if an existing one could lose entries."""
        if self._stream_ready:
            return
        try:
            info = await self._js.stream_info(self.stream)
        except NotFoundError:
            try:
                info = await self._js.add_stream(audit_stream_config(self.stream, self.subject))
                log.info("created audit stream %s on %s", self.stream, self.subject)
            except APIError:
                info = await self._js.stream_info(self.stream)  # another process created it first
        config = info.config
        if self.subject not in (config.subjects or []):
            raise AuditError(f"stream {self.stream} does not store subject {self.subject}")
        limited = any((limit or 0) > 0 for limit in (config.max_msgs, config.max_bytes, config.max_age))
        if limited and config.discard != DiscardPolicy.NEW:
            log.warning("audit stream %s has limits with discard=old: old entries will be dropped", self.stream)
        if not config.deny_delete:
            log.warning("audit stream %s allows message deletes", self.stream)
        self._stream_ready = True

    async def append(
        self,
        actor: str,
        action: str,
        target: str,
        revision: int | None = None,
        details: Mapping[str, object] | None = None,
    ) -> AuditEntry:
        """Append one entry after the current head and return it.

        Raises :class:`ValueError` for invalid fields (a secret-looking detail
        key included) before touching the stream, :class:`AuditChainBroken`
        when the head cannot be read, and :class:`AuditError` when the stream
        does not answer or the race is lost ``max_attempts`` times.
        """
        clean = check_fields(actor=actor, action=action, target=target, revision=revision, details=details)
        await self.ensure_stream()
        async with self._lock:
            attempted: set[str] = set()
            for attempt in range(self._max_attempts):
                last_sequence, head = await self._head()
                if head is not None and head.hash in attempted:
                    return head  # an earlier attempt timed out but was stored after all
                entry = next_entry(
                    head,
                    actor=actor,
                    action=action,
                    target=target,
                    time=rfc3339_utc(self._clock()),
                    revision=revision,
                    details=clean,
                )
                attempted.add(entry.hash)
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
                except nats.errors.TimeoutError:
                    log.warning("audit append timed out (attempt %d); checking whether it was stored", attempt + 1)
                # Jittered backoff so appenders in several processes stop colliding.
                await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
        raise AuditError(f"audit append lost the race {self._max_attempts} times; try again")

    async def _head(self) -> tuple[int, AuditEntry | None]:
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

    async def _last_sequence(self) -> int:
        """The stream's last sequence (deleted messages included); 0 when it is absent."""
        try:
            info = await self._js.stream_info(self.stream)
        except NotFoundError:
            return 0
        except nats.errors.TimeoutError as exc:
            raise AuditError("the audit stream did not answer") from exc
        return info.state.last_seq

    async def _scan(self, start: int, last: int) -> AsyncGenerator[tuple[int, bytes], None]:
        """``(sequence, data)`` of every stored message from ``start`` up to ``last``.

        One ordered consumer rather than a request per message; deleted
        messages simply do not arrive, so callers see them as sequence gaps.
        """
        if last < start:
            return
        try:
            # A consumer with nothing to deliver would only time out; ask where the first message is.
            first = await self._js.get_msg(self.stream, seq=start, subject=self.subject, next=True)
        except NotFoundError:
            return
        except nats.errors.TimeoutError as exc:
            raise AuditError("the audit stream did not answer") from exc
        if first.seq is None or first.seq > last:
            return
        sub = await self._js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first.seq),
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=self._timeout)
                except nats.errors.TimeoutError as exc:
                    raise AuditError("timed out reading the audit stream") from exc
                sequence = msg.metadata.sequence.stream
                if sequence > last:
                    return
                yield sequence, msg.data
                if sequence >= last or msg.metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()

    async def verify(self) -> VerifyReport:
        """Walk every entry from stream sequence 1 and report the first broken link."""
        last = await self._last_sequence()
        verifier = ChainVerifier()
        async with aclosing(self._scan(1, last)) as records:
            async for sequence, raw in records:
                if not verifier.feed(sequence, raw):
                    break
        return verifier.finish(last)

    async def entries(self, limit: int | None = None, since: int | None = None) -> list[AuditEntry]:
        """Entries in chain order, for listing; undecodable messages are skipped.

        With ``since``, entries from index ``since`` on, at most ``limit`` of
        them (forward paging); without it, the newest ``limit`` (all when None).
        Use :meth:`verify` to judge integrity; this only reads.
        """
        if limit is not None and limit <= 0:
            return []
        last = await self._last_sequence()
        # Index i is stored at sequence i or later, so a scan from `since` misses nothing.
        start = max(since or 1, 1)
        found: deque[AuditEntry] = deque(maxlen=None if since is not None else limit)
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
