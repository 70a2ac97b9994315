"""Master-key rotation: re-encrypt every stored secret under a new key, safely against interruption.

The steps, each of which leaves every secret readable with the old key or the
new one (records name their key, ``kid``), so a crash at any point loses
nothing and running the same rotation again carries on where it stopped:

1. The key check (``keycheck``) must open with the old key, proving it is the
   store's key; if it already opens with the new key the rotation had finished
   that far, and only the sweep below is left. A key check in record format 1
   is first rewritten in format 2 (fixing the store's legacy horizon, see
   :mod:`services.secrets.crypto`).
2. A key check for the new key is written to ``keycheck.next``. It marks the
   rotation as under way, lets a service holding only the new key start once
   nothing is left under the old one, and stops a second rotation to some
   *other* key from starting over an unfinished one.
3. Every secret is opened (with the old key, or the new one if a service
   holding it stored it meanwhile) and sealed again under the new key with a
   fresh nonce, in record format 2, for the revision it is written at,
   keeping its ``updated_at``. The write is compare-and-set on the revision
   just read, so a value stored meanwhile is never overwritten: the rotation
   reads it again and re-encrypts that instead. The write also rolls the key's
   history up, so no earlier revision under the old key (or in format 1) stays
   behind. A record that was rolled back or replayed is never sealed again
   (that would launder it): the rotation stops before it, naming it. Passes
   repeat until one changes nothing, which catches secrets a service stored
   under the old key during the pass.
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

from services.secrets.crypto import (
    LEGACY_FORMAT,
    UNBOUNDED,
    KeyCheck,
    OpenedSecret,
    RecordReplayed,
    RecordUnreadable,
    SecretCipher,
    record_format,
    record_key_id,
)
from services.secrets.store import KEYCHECK_KEY, NEXT_KEYCHECK_KEY, SECRET_KEY_PREFIX, legacy_horizon_for, name_of
from services.secrets.versioned import Seal, Stored, VersionedBucket

__all__ = ["Bucket", "NatsBucket", "RotationError", "RotationReport", "Stored", "WrongOldKey", "rotate_master_key"]

log = logging.getLogger("modelbus.secrets.rotation")

MAX_PASSES = 5
"""Passes over the secrets before giving up on a writer that keeps storing under the old key."""
MAX_CONFLICTS = 20
"""Compare-and-set retries on one secret before giving up on it."""

NatsBucket = VersionedBucket
""":class:`Bucket` over the secrets KV bucket on NATS."""


class RotationError(Exception):
    """The rotation stopped; the message says why and what to do. Every secret is still readable."""


class WrongOldKey(RotationError):
    """The key given as the old one is not the store's key; nothing was changed."""


class Bucket(Protocol):
    """The few key-value operations a rotation needs; :class:`NatsBucket` is the real one.

    Writes take a :data:`~services.secrets.versioned.Seal`: the record is
    sealed for the revision it will be stored at.
    """

    async def keys(self) -> list[str]:
        """Every key that currently holds a value."""
        ...

    async def read(self, key: str) -> Stored | None:
        """The latest value of ``key``, ``None`` when it has none (never set, deleted or purged)."""
        ...

    async def replace(self, key: str, seal: Seal, *, last: int) -> int | None:
        """Write ``seal(revision)`` if ``key`` is still at revision ``last``, dropping its history.

        The new revision, or ``None`` when ``key`` has moved on.
        """
        ...

    async def create(self, key: str, seal: Seal) -> bool:
        """Write ``seal(revision)`` if ``key`` holds nothing; ``False`` if it does."""
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

    clean: set[tuple[str, int]] = set()  # (key, revision) this rotation wrote, so no history under the old key
    horizon = await _begin(bucket, old, new)
    await _sweep(bucket, old, new, horizon, reencrypted, clean)
    await _activate(bucket, new, horizon)
    secrets = await _sweep(bucket, old, new, horizon, reencrypted, clean)  # a write that raced with the switch
    upcoming = await bucket.read(NEXT_KEYCHECK_KEY)
    if upcoming is not None and _opens_check(new, upcoming, NEXT_KEYCHECK_KEY) is not None:
        await bucket.remove(NEXT_KEYCHECK_KEY)
    return RotationReport(old_key_id=old.key_id, new_key_id=new.key_id, reencrypted=count[0], secrets=secrets)


def _opens_check(cipher: SecretCipher, stored: Stored, key: str) -> KeyCheck | None:
    try:
        return cipher.open_keycheck(stored.value, revision=stored.revision)
    except RecordReplayed:
        raise RotationError(
            f"the key check {key!r} was rolled back or replayed (an older key check was written back to the "
            "bucket). Nothing was changed. Find out who wrote it; then purge that key and start the secrets "
            "service, which writes a new one, before rotating."
        ) from None


def _carry(horizon: int, version: int) -> int:
    """The legacy horizon a new key check keeps: the store's, or, for a store never upgraded, all before it."""
    return version - 1 if horizon == UNBOUNDED else horizon


async def _has_versioned_records(bucket: Bucket) -> bool:
    for key in await bucket.keys():
        stored = await bucket.read(key) if key.startswith(SECRET_KEY_PREFIX) else None
        if stored is not None:
            try:
                if record_format(stored.value) != LEGACY_FORMAT:
                    return True
            except RecordUnreadable:
                continue
    return False


async def _begin(bucket: Bucket, old: SecretCipher, new: SecretCipher) -> int:
    """Check the old key against the store and mark the rotation as under way; the store's legacy horizon."""
    check = await bucket.read(KEYCHECK_KEY)
    opened: KeyCheck | None = None
    owner = old
    if check is not None:
        opened = _opens_check(new, check, KEYCHECK_KEY)
        owner = new
        if opened is None:
            opened, owner = _opens_check(old, check, KEYCHECK_KEY), old
        if opened is None:
            active = _named_key(check.value)
            raise WrongOldKey(
                f"the old master key (key id {old.key_id}) does not match the secrets store"
                f"{f' (its active key is key id {active})' if active else ''}: give the key the secrets are stored "
                "with in MODELBUS_MASTER_KEY or MODELBUS_MASTER_KEY_FILE. Nothing was changed."
            )
    if check is None:  # no key check at all: only a store never upgraded may hold genuine format-1 records
        horizon: int | None = 0 if await _has_versioned_records(bucket) else UNBOUNDED
    else:
        horizon = opened.legacy_until if opened is not None else None
    if check is not None and horizon is None:
        # A key check from before record format 2: write it again in format 2, fixing the legacy horizon.
        versioned = await _has_versioned_records(bucket)
        writer = owner

        def upgraded(version: int) -> bytes:
            return writer.keycheck(
                version=version, legacy_until=legacy_horizon_for(version, versioned_records=versioned)
            )

        await bucket.replace(KEYCHECK_KEY, upgraded, last=check.revision)
        return await _begin(bucket, old, new)
    assert horizon is not None
    if owner is new and opened is not None:
        log.info("the store's active key is already the new key %s: finishing the rotation", new.key_id)
        return horizon
    upcoming = await bucket.read(NEXT_KEYCHECK_KEY)
    if upcoming is None:
        if await bucket.create(NEXT_KEYCHECK_KEY, lambda v: new.keycheck(version=v, legacy_until=_carry(horizon, v))):
            log.info("rotation from key %s to key %s started", old.key_id, new.key_id)
            return horizon
        upcoming = await bucket.read(NEXT_KEYCHECK_KEY)
    if upcoming is not None and _opens_check(new, upcoming, NEXT_KEYCHECK_KEY) is None:
        other = _named_key(upcoming.value) or "unknown"
        raise RotationError(
            f"an unfinished rotation to another master key (key id {other}) is in the way: finish it first, "
            "by running rotate-master-key again with that key as --new-key-file. Nothing was changed."
        )
    log.info("resuming the rotation from key %s to key %s", old.key_id, new.key_id)
    return horizon


async def _sweep(
    bucket: Bucket,
    old: SecretCipher,
    new: SecretCipher,
    horizon: int,
    reencrypted: Callable[[], None],
    clean: set[tuple[str, int]],
) -> int:
    """Passes over every secret until one re-encrypts nothing; the number of secrets seen in that pass."""
    for _ in range(MAX_PASSES):
        changed = seen = 0
        for key in sorted(await bucket.keys()):
            if not key.startswith(SECRET_KEY_PREFIX):
                continue
            outcome = await _reencrypt(bucket, key, old, new, horizon, clean)
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
    bucket: Bucket, key: str, old: SecretCipher, new: SecretCipher, horizon: int, clean: set[tuple[str, int]]
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
        if (key, entry.revision) in clean:
            return "already"
        try:
            kid = record_key_id(entry.value)
        except RecordUnreadable:
            raise _unreadable(name, "old", old) from None
        if kid is not None and kid not in (old.key_id, new.key_id):
            raise RotationError(
                f"secret {name!r} is sealed under master key id {kid}, neither the old key ({old.key_id}) nor the "
                f"new one ({new.key_id}); the rotation stopped before it. Every secret is still readable with the "
                "key it names."
            )
        # Under the new key already (a service holding it stored it): sealed again all the same, which rolls
        # up earlier revisions under the old key (no purge permission needed) and leaves format 2 behind.
        opener = new if kid == new.key_id else old
        try:
            opened = opener.open_secret(name, entry.value, revision=entry.revision, legacy_until=horizon)
        except RecordReplayed:
            raise _replayed(name) from None
        except RecordUnreadable:
            raise _unreadable(name, "new" if opener is new else "old", opener) from None

        revision = await bucket.replace(key, _sealed_again(new, name, opened), last=entry.revision)
        if revision is not None:
            clean.add((key, revision))  # the write rolled the old revisions up
            log.debug("secret %r sealed under key %s", name, new.key_id)
            return "reencrypted" if opener is old else "already"
        log.info("secret %r changed while being re-encrypted; reading it again", name)
    raise RotationError(f"secret {name!r} kept changing while being re-encrypted; run rotate-master-key again")


async def _activate(bucket: Bucket, new: SecretCipher, horizon: int) -> None:
    """Make the new key the store's active key (its key check replaces the old one, history and all)."""

    def check_for_new(version: int) -> bytes:
        return new.keycheck(version=version, legacy_until=_carry(horizon, version))

    for _ in range(MAX_CONFLICTS):
        check = await bucket.read(KEYCHECK_KEY)
        if check is not None and _opens_check(new, check, KEYCHECK_KEY) is not None:
            return
        if check is None:
            written = await bucket.create(KEYCHECK_KEY, check_for_new)
        else:
            written = await bucket.replace(KEYCHECK_KEY, check_for_new, last=check.revision) is not None
        if written:
            log.info("key %s is now the secrets store's active master key", new.key_id)
            return
    raise RotationError("the key check kept changing while the new key was being made active; run again")


def _sealed_again(cipher: SecretCipher, name: str, opened: OpenedSecret) -> Seal:
    """Seal ``opened`` again under ``cipher`` for the revision it will be written at, keeping its time."""

    def seal(version: int) -> bytes:
        return cipher.seal_secret(name, opened.value, version=version, updated_at=opened.updated_at)

    return seal


def _named_key(raw: bytes) -> str | None:
    try:
        return record_key_id(raw)
    except RecordUnreadable:
        return None


def _replayed(name: str) -> RotationError:
    return RotationError(
        f"record for {name} was rolled back or replayed: an older record was written back to the bucket. The "
        "rotation stopped before it and does not seal it again. Store that secret again (or delete it), then "
        "run rotate-master-key again. Every other secret is still readable with the old or the new key."
    )


def _unreadable(name: str, which: str, key: SecretCipher) -> RotationError:
    return RotationError(
        f"secret {name!r} does not decrypt with the {which} master key (key id {key.key_id}): it is damaged or "
        "was stored by hand. The rotation stopped before it; delete or store that secret again, then run "
        "rotate-master-key again. Every other secret is still readable with the old or the new key."
    )
