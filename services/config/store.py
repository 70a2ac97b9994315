"""The config log: one JetStream message per revision, file storage.

The stream sequence is the revision. A commit publishes with
``Nats-Expected-Last-Sequence`` set to the revision it was computed from, so
two writers can never interleave: the loser gets :class:`RevisionConflict` and
must recompute. Each record holds the whole desired state and its compiled
routing configuration, so an apply is atomic, history is a walk back through
the stream, and rollback re-commits an old record's resources.

Nothing ever deletes a revision: the stream refuses message deletes and purges
(set on streams created before that, too); only its history limit drops the
oldest records. Each record carries the audit head it was committed after
(:class:`shared.admin.AuditAnchor`), and the audit entry of the revision the
SHA-256 of the stored message (:func:`record_digest`), so the two logs vouch
for each other (see :mod:`services.config.audit_verify`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from services.config.streams import protect, scan
from shared.admin import ConfigRecord
from shared.jetstream import Ensured, ensure_stream
from shared.subjects import CONFIG_LOG, CONFIG_STREAM

DEFAULT_HISTORY = 1000
"""Revisions kept; older ones fall out of ``history`` and can no longer be rolled back to."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ConfigRecord)


class RevisionConflict(Exception):
    """Another writer committed first; recompute from the new head and retry."""


class UnknownRevision(LookupError):
    """The revision does not exist (never written, or dropped from history)."""


def encode_record(record: ConfigRecord) -> bytes:
    """The stored form of a record: exactly the bytes :meth:`ConfigLog.commit` publishes."""
    return _encoder.encode(record)


def record_digest(record: ConfigRecord) -> str:
    """Hex SHA-256 of the stored form of ``record``, as its audit entry records it."""
    return hashlib.sha256(encode_record(record)).hexdigest()


def now() -> str:
    """RFC 3339 UTC timestamp with milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ConfigLog:
    """Read and append config records."""

    def __init__(self, js: JetStreamContext, *, stream: str = CONFIG_STREAM, subject: str = CONFIG_LOG) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject

    async def ensure(self, history: int = DEFAULT_HISTORY) -> Ensured:
        """Create the stream (file storage, ``MODELBUS_JS_REPLICAS`` replicas) if it does not exist;
        bring an existing one to that replica count and protect it."""
        ensured = await ensure_stream(
            self.js,
            StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                storage=StorageType.FILE,
                max_msgs=history,
                discard=DiscardPolicy.OLD,
                deny_delete=True,
                deny_purge=True,
                description="modelbus configuration revisions (written only by the config service)",
            ),
        )
        if not ensured.created:
            await protect(self.js, ensured.info)
        return ensured

    async def bounds(self) -> tuple[int, int]:
        """``(first, last)`` revision still stored; ``(0, 0)`` before the first commit or without the stream."""
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            return 0, 0
        if info.state.last_seq == 0 or info.state.messages == 0:
            return 0, info.state.last_seq
        return info.state.first_seq, info.state.last_seq

    def scan(self, first: int, last: int) -> AsyncGenerator[tuple[int, bytes], None]:
        """``(revision, stored bytes)`` from ``first`` to ``last``, oldest first."""
        return scan(self.js, self.stream, self.subject, first, last)

    @staticmethod
    def decode(raw: bytes) -> ConfigRecord:
        """A stored record."""
        return _decoder.decode(raw)

    async def head(self) -> ConfigRecord | None:
        """The newest record, or ``None`` before the first commit."""
        try:
            msg = await self.js.get_last_msg(self.stream, self.subject)
        except NotFoundError:
            return None
        return _decoder.decode(msg.data or b"")

    async def get(self, revision: int) -> ConfigRecord:
        """The record of one revision."""
        try:
            msg = await self.js.get_msg(self.stream, seq=revision)
        except NotFoundError:
            raise UnknownRevision(f"revision {revision} does not exist or is no longer in history") from None
        return _decoder.decode(msg.data or b"")

    async def commit(self, record: ConfigRecord) -> ConfigRecord:
        """Append ``record``, whose ``revision`` must be exactly head + 1."""
        try:
            ack = await self.js.publish(
                self.subject,
                encode_record(record),
                stream=self.stream,
                headers={"Nats-Expected-Last-Sequence": str(record.revision - 1)},
            )
        except APIError as exc:
            if exc.err_code == 10071:  # wrong last sequence
                raise RevisionConflict(f"revision {record.revision - 1} is no longer the head") from exc
            raise
        if ack.seq != record.revision:  # cannot happen with the expected-sequence check
            raise RevisionConflict(f"stored as {ack.seq}, expected {record.revision}")
        return record

    async def walk_back(self, limit: int) -> AsyncIterator[ConfigRecord]:
        """Records from the newest backwards, at most ``limit`` of them."""
        info = await self.js.stream_info(self.stream)
        first, last = info.state.first_seq, info.state.last_seq
        seen = 0
        for seq in range(last, first - 1, -1):
            if seen >= limit or last == 0:
                return
            try:
                yield await self.get(seq)
            except UnknownRevision:
                continue
            seen += 1
