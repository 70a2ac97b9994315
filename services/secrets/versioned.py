"""Versioned writes to the secrets bucket: every record is sealed for the sequence it is stored at.

A format-2 record binds the KV revision it lives at (see
:mod:`services.secrets.crypto`), so the writer must know that revision
*before* it publishes. JetStream gives exactly that: a publish carrying
``Nats-Expected-Last-Sequence: S`` is stored only if the stream's last sequence
is still ``S``, and then at ``S + 1``. :meth:`VersionedBucket.write` reads
``S`` (stream info), seals for ``S + 1`` and publishes with that header; when
another write got in first it reads ``S`` again and seals again. A
compare-and-set on the key's own revision
(``Nats-Expected-Last-Subject-Sequence``) and a subject rollup
(``Nats-Rollup: sub``) can ride on the same message.

Every operation here is one the ``secrets-state`` identity may perform: stream
info, direct gets, publishes to ``$KV.modelbus_secrets.>``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError
from nats.js.kv import KeyValue

from shared.subjects import SECRETS_BUCKET

Seal = Callable[[int], bytes]
"""Seal a record for the revision it will be stored at."""

MAX_RACES = 50
"""Writes that got in first before :meth:`VersionedBucket.write` gives up (only a flood of writers gets there)."""
# JetStream's "wrong last sequence" error codes (JSStreamWrongLastSequenceErrF, ...ConstantErr),
# for the stream-wide and the per-subject expectation alike.
_WRONG_LAST_SEQUENCE = (10071, 10164)


class WriteContended(Exception):
    """Other writers kept getting in first; nothing was written."""


@dataclass(frozen=True, kw_only=True)
class Stored:
    """One key's latest value and its revision, as read."""

    value: bytes
    revision: int


class VersionedBucket:
    """The secrets KV bucket, written so that each record knows its own revision."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str = SECRETS_BUCKET) -> None:
        self._js = js
        self._kv = kv
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."

    async def keys(self) -> list[str]:
        """Every key with a message in the bucket, sorted; a key whose last message is a delete or purge
        marker is listed too, and :meth:`read` answers ``None`` for it.

        Read from the stream's state rather than with nats-py's ``kv.keys()``:
        that one watches the bucket and can report an empty listing when the
        messages are delivered before it has looked at the consumer's pending
        count (a race that shows under load). A listing that silently missed
        secrets would let a rotation make the new key active over them.
        """
        info = await self._js.stream_info(self._stream, subjects_filter=self._prefix + ">")
        subjects = info.state.subjects or {}
        return sorted(subject.removeprefix(self._prefix) for subject in subjects)

    async def read(self, key: str) -> Stored | None:
        """The latest value of ``key`` and its revision, ``None`` when it has none (never set, deleted, purged)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return Stored(value=entry.value or b"", revision=entry.revision or 0)

    async def _subject_revision(self, key: str) -> int:
        """The sequence of the key's last message, a delete or purge marker included; 0 if it has none."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError as err:
            marker = err.entry
            return int(marker.revision or 0) if marker is not None else 0
        return int(entry.revision or 0)

    async def write(self, key: str, seal: Seal, *, last: int | None = None, rollup: bool = False) -> int | None:
        """Store ``seal(revision)`` at ``revision``; the revision, or ``None`` when ``key`` moved on.

        ``last`` makes it a compare-and-set on the key's last revision (0: the
        key holds nothing, not even a marker); ``None`` writes regardless.
        ``rollup`` drops the key's earlier revisions in the same atomic write.
        :class:`WriteContended` after :data:`MAX_RACES` lost races.
        """
        for attempt in range(MAX_RACES):
            before = int((await self._js.stream_info(self._stream)).state.last_seq)
            headers = {api.Header.EXPECTED_LAST_SEQUENCE.value: str(before)}
            if last is not None:
                headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value] = str(last)
            if rollup:
                headers[api.Header.ROLLUP.value] = "sub"
            try:
                ack = await self._js.publish(self._prefix + key, seal(before + 1), headers=headers)
            except APIError as err:
                if err.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                if last is not None and await self._subject_revision(key) != last:
                    return None
                # Another write anywhere in the bucket got in first: seal again for the new next sequence.
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
                continue
            if int(ack.seq) != before + 1:  # JetStream guarantees this; a record in the wrong place is unreadable
                raise RuntimeError(f"stored at sequence {ack.seq}, expected {before + 1}")
            return int(ack.seq)
        raise WriteContended(f"{key}: {MAX_RACES} other writes got in first")

    async def replace(self, key: str, seal: Seal, *, last: int) -> int | None:
        """Compare-and-set on revision ``last``, dropping the key's history; ``None`` when ``key`` moved on."""
        return await self.write(key, seal, last=last, rollup=True)

    async def create(self, key: str, seal: Seal) -> bool:
        """Write if ``key`` holds no value (never set, or deleted); ``False`` if it does."""
        for _ in range(MAX_RACES):
            if await self.read(key) is not None:
                return False
            if await self.write(key, seal, last=await self._subject_revision(key)) is not None:
                return True
        raise WriteContended(f"{key}: kept changing while being created")

    async def remove(self, key: str) -> None:
        """Purge ``key`` and its history."""
        await self._kv.purge(key)
