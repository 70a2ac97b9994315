"""Master-key rotation: re-encrypt every stored secret under a new key, safely against interruption.

The steps, each of which leaves every secret readable with the old key or the
new one (records name their key, ``kid``), so a crash at any point loses
nothing and running the same rotation again carries on where it stopped:

1. The key check (``keycheck``) must open with the old key, proving it is the
   store's key; if it already opens with the new key the rotation had finished
   that far, and only the sweep below is left.
2. A key check for the new key is written to ``keycheck.next``. It marks the
   rotation as under way, lets a service holding only the new key start once
   nothing is left under the old one, and stops a second rotation to some
   *other* key from starting over an unfinished one.
3. Every secret not yet under the new key is opened with the old key and
   sealed again under the new key with a fresh nonce, keeping its
   ``updated_at``. The write is compare-and-set on the revision just read, so a
   value stored meanwhile is never overwritten: the rotation reads it again and
   re-encrypts that instead. The write also rolls the key's history up, so no
   earlier revision under the old key stays behind (a secret already under the
   new key is written again as it is, for the same reason). Passes repeat
   until one changes nothing, which catches secrets a service stored under the
   old key during the pass.
4. ``keycheck`` is replaced by the new key's check (the new key is active: a
   service holding only the old key now refuses to store anything), a last
   sweep catches a write that raced with that, and ``keycheck.next`` is
   removed.

``MODELBUS_ROTATION_CRASH_AFTER=N`` is a test hook: the command exits with
status 3, as abruptly as a kill, right after the N-th secret it re-encrypts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from services.secrets.crypto import RecordUnreadable, SecretCipher, record_key_id
from services.secrets.store import KEYCHECK_KEY, NEXT_KEYCHECK_KEY, SECRET_KEY_PREFIX, name_of
from shared.subjects import SECRETS_BUCKET

log = logging.getLogger("modelbus.secrets.rotation")

CRASH_AFTER_ENV = "MODELBUS_ROTATION_CRASH_AFTER"
"""Test hook: exit (status 3) right after this many secrets have been re-encrypted."""
MAX_PASSES = 5
"""Passes over the secrets before giving up on a writer that keeps storing under the old key."""
MAX_CONFLICTS = 20
"""Compare-and-set retries on one secret before giving up on it."""

# JetStream's "wrong last sequence" error codes (JSStreamWrongLastSequenceErrF, ...ConstantErr).
_WRONG_LAST_SEQUENCE = (10071, 10164)


class RotationError(Exception):
    """The rotation stopped; the message says why and what to do. Every secret is still readable."""


class WrongOldKey(RotationError):
    """The key given as the old one is not the store's key; nothing was changed."""


@dataclass(frozen=True, kw_only=True)
class Stored:
    """One key's latest value and its revision, as read."""

    value: bytes
    revision: int


class Bucket(Protocol):
    """The few key-value operations a rotation needs; :class:`NatsBucket` is the real one."""

    async def keys(self) -> list[str]:
        """Every key that currently holds a value."""
        ...

    async def read(self, key: str) -> Stored | None:
        """The latest value of ``key``, ``None`` when it has none (never set, deleted or purged)."""
        ...

    async def replace(self, key: str, value: bytes, *, last: int) -> int | None:
        """Write ``value`` if ``key`` is still at revision ``last``, dropping its history.

        The new revision, or ``None`` when ``key`` has moved on.
        """
        ...

    async def create(self, key: str, value: bytes) -> bool:
        """Write ``value`` if ``key`` holds nothing; ``False`` if it does."""
        ...

    async def remove(self, key: str) -> None:
        """Remove ``key`` with its history."""
        ...


@dataclass(frozen=True, kw_only=True)
class RotationReport:
    """What a rotation did."""

    old_key_id: str
    new_key_id: str
    reencrypted: int
    """Secrets this run sealed again under the new key."""
    secrets: int
    """Secrets in the store when it finished, all under the new key."""


async def rotate_master_key(
    bucket: Bucket,
    old: SecretCipher,
    new: SecretCipher,
    *,
    on_reencrypted: Callable[[int], None] | None = None,
) -> RotationReport:
    """Re-encrypt every secret from ``old`` to ``new`` and make ``new`` the store's key.

    Idempotent: run again after an interruption, or after it finished, it
    completes what is left. ``on_reencrypted`` is called with the running count
    after each secret is re-encrypted (the crash hook of the command uses it).
    :class:`RotationError` when it cannot go on; nothing is left unreadable then.
    """
    if old.key_id == new.key_id:
        raise WrongOldKey(f"the new master key is the current one (key id {old.key_id}); generate a new key")
    count = [0]

    def reencrypted() -> None:
        count[0] += 1
        if on_reencrypted is not None:
            on_reencrypted(count[0])

    clean: set[tuple[str, int]] = set()  # (key, revision) known to have no history under the old key
    await _begin(bucket, old, new)
    await _sweep(bucket, old, new, reencrypted, clean)
    await _activate(bucket, new)
    secrets = await _sweep(bucket, old, new, reencrypted, clean)  # a write that raced with the switch
    upcoming = await bucket.read(NEXT_KEYCHECK_KEY)
    if upcoming is not None and new.verifies(upcoming.value):
        await bucket.remove(NEXT_KEYCHECK_KEY)
    return RotationReport(old_key_id=old.key_id, new_key_id=new.key_id, reencrypted=count[0], secrets=secrets)


async def _begin(bucket: Bucket, old: SecretCipher, new: SecretCipher) -> None:
    """Check the old key against the store and mark the rotation as under way."""
    check = await bucket.read(KEYCHECK_KEY)
    if check is not None and new.verifies(check.value):
        log.info("the store's active key is already the new key %s: finishing the rotation", new.key_id)
        return
    if check is not None and not old.verifies(check.value):
        active = _named_key(check.value)
        raise WrongOldKey(
            f"the old master key (key id {old.key_id}) does not match the secrets store"
            f"{f' (its active key is key id {active})' if active else ''}: give the key the secrets are stored "
            "with in MODELBUS_MASTER_KEY or MODELBUS_MASTER_KEY_FILE. Nothing was changed."
        )
    if check is not None and _named_key(check.value) is None:
        # A key check from before key ids: write it again naming its key, so
        # messages during the rotation can say which key is the old one.
        await bucket.replace(KEYCHECK_KEY, old.keycheck(), last=check.revision)
    upcoming = await bucket.read(NEXT_KEYCHECK_KEY)
    if upcoming is None:
        if await bucket.create(NEXT_KEYCHECK_KEY, new.keycheck()):
            log.info("rotation from key %s to key %s started", old.key_id, new.key_id)
            return
        upcoming = await bucket.read(NEXT_KEYCHECK_KEY)
    if upcoming is not None and not new.verifies(upcoming.value):
        other = _named_key(upcoming.value) or "unknown"
        raise RotationError(
            f"an unfinished rotation to another master key (key id {other}) is in the way: finish it first, "
            "by running rotate-master-key again with that key as --new-key-file. Nothing was changed."
        )
    log.info("resuming the rotation from key %s to key %s", old.key_id, new.key_id)


async def _sweep(
    bucket: Bucket,
    old: SecretCipher,
    new: SecretCipher,
    reencrypted: Callable[[], None],
    clean: set[tuple[str, int]],
) -> int:
    """Passes over every secret until one re-encrypts nothing; the number of secrets seen in that pass."""
    for _ in range(MAX_PASSES):
        changed = seen = 0
        for key in sorted(await bucket.keys()):
            if not key.startswith(SECRET_KEY_PREFIX):
                continue
            outcome = await _reencrypt(bucket, key, old, new, clean)
            seen += outcome != "gone"
            if outcome == "reencrypted":
                changed += 1
                reencrypted()
        if not changed:
            return seen
    raise RotationError(
        f"secrets keep being stored under the old master key (key id {old.key_id}): a secrets service that "
        "holds only the old key is still writing. Restart it with the new key (and the old one in "
        "MODELBUS_MASTER_KEY_PREVIOUS), then run rotate-master-key again. Every secret is still readable "
        "with the old or the new key."
    )


async def _reencrypt(
    bucket: Bucket, key: str, old: SecretCipher, new: SecretCipher, clean: set[tuple[str, int]]
) -> str:
    """Seal one secret under the new key: ``reencrypted``, ``already`` (under it) or ``gone``."""
    try:
        name = name_of(key)
    except ValueError:
        return "gone"  # not a secret of ours; leave it alone
    for _ in range(MAX_CONFLICTS):
        entry = await bucket.read(key)
        if entry is None:
            return "gone"  # deleted since the listing
        try:
            kid = record_key_id(entry.value)
        except RecordUnreadable:
            raise _unreadable(name, old) from None
        if kid == new.key_id:
            if (key, entry.revision) in clean:
                return "already"
            # A service holding the new key stored it, but earlier revisions
            # may still be under the old key: write it again as it is, which
            # rolls them up (and needs no purge permission on the stream).
            revision = await bucket.replace(key, entry.value, last=entry.revision)
            if revision is not None:
                clean.add((key, revision))
                return "already"
            continue
        if kid is not None and kid != old.key_id:
            raise RotationError(
                f"secret {name!r} is sealed under master key id {kid}, neither the old key ({old.key_id}) nor the "
                f"new one ({new.key_id}); the rotation stopped before it. Every secret is still readable with the "
                "key it names."
            )
        try:
            opened = old.open_secret(name, entry.value)
        except RecordUnreadable:
            raise _unreadable(name, old) from None
        sealed = new.seal_secret(name, opened.value, updated_at=opened.updated_at)
        revision = await bucket.replace(key, sealed, last=entry.revision)
        if revision is not None:
            clean.add((key, revision))  # the write rolled the old revisions up
            log.debug("secret %r re-encrypted under key %s", name, new.key_id)
            return "reencrypted"
        log.info("secret %r changed while being re-encrypted; reading it again", name)
    raise RotationError(f"secret {name!r} kept changing while being re-encrypted; run rotate-master-key again")


async def _activate(bucket: Bucket, new: SecretCipher) -> None:
    """Make the new key the store's active key (its key check replaces the old one, history and all)."""
    for _ in range(MAX_CONFLICTS):
        check = await bucket.read(KEYCHECK_KEY)
        if check is not None and new.verifies(check.value):
            return
        if check is None:
            written = await bucket.create(KEYCHECK_KEY, new.keycheck())
        else:
            written = await bucket.replace(KEYCHECK_KEY, new.keycheck(), last=check.revision) is not None
        if written:
            log.info("key %s is now the secrets store's active master key", new.key_id)
            return
    raise RotationError("the key check kept changing while the new key was being made active; run again")


def _named_key(raw: bytes) -> str | None:
    try:
        return record_key_id(raw)
    except RecordUnreadable:
        return None


def _unreadable(name: str, old: SecretCipher) -> RotationError:
    return RotationError(
        f"secret {name!r} does not decrypt with the old master key (key id {old.key_id}): it is damaged or was "
        "stored by hand. The rotation stopped before it; delete or store that secret again, then run "
        "rotate-master-key again. Every other secret is still readable with the old or the new key."
    )


# ---------------------------------------------------------------- on NATS


class NatsBucket:
    """:class:`Bucket` over the secrets KV bucket.

    :meth:`replace` publishes straight to the bucket's stream so one message
    can carry both the expected last revision (compare-and-set) and a subject
    rollup (``Nats-Rollup: sub``), which drops the key's earlier revisions in
    the same atomic write.
    """

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str = SECRETS_BUCKET) -> None:
        self._js = js
        self._kv = kv
        self._prefix = f"$KV.{bucket}."

    async def keys(self) -> list[str]:
        """Every key that currently holds a value."""
        try:
            return await self._kv.keys()
        except NoKeysError:
            return []

    async def read(self, key: str) -> Stored | None:
        """The latest value of ``key`` and its revision."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return Stored(value=entry.value or b"", revision=entry.revision or 0)

    async def replace(self, key: str, value: bytes, *, last: int) -> int | None:
        """Compare-and-set on revision ``last``, rolling up the key's history."""
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last), api.Header.ROLLUP.value: "sub"}
        try:
            ack = await self._js.publish(self._prefix + key, value, headers=headers)
        except APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack.seq)

    async def create(self, key: str, value: bytes) -> bool:
        """Write ``value`` if ``key`` holds nothing."""
        try:
            await self._kv.create(key, value)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def remove(self, key: str) -> None:
        """Purge ``key`` and its history."""
        await self._kv.purge(key)
