"""The encrypted secrets store: sealed records in the JetStream KV bucket ``modelbus_secrets``.

Layout of the bucket (file storage, 5 revisions of history per key):

================================ ==============================================
``keycheck``                      key check of the store's active master key
                                  (and the store's legacy horizon)
``keycheck.next``                 key check of the key a rotation is moving to
                                  (only while one is under way)
``secret.<base64url(name)>``      one :class:`~services.secrets.crypto.SealedRecord` per secret
================================ ==============================================

KV keys allow only ``[-/_=.a-zA-Z0-9]`` and treat ``.`` as a token separator,
so names are encoded with unpadded URL-safe base64 (alphabet ``[A-Za-z0-9_-]``),
which is reversible and always a single valid token. Deleting a secret purges
its key, so older encrypted revisions go too.

Every record is sealed for the revision it is stored at
(:mod:`services.secrets.versioned`) and refused anywhere else, so an older
record written back is detected on read (:class:`~services.secrets.crypto.RecordReplayed`).

Opening the store checks the master keys against the bucket before anything is
written: a wrong key, a locked bucket, or secrets sealed under a key the
service was not given (an unfinished rotation) stop the service with
:class:`StoreStartupError` and leave the bucket as it was. A key check in the
old format is then rewritten in the current one, which fixes the store's
legacy horizon: format-1 records at or below it stay readable until their next
write; any above it were written back and are refused.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re

from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError

from services.secrets.crypto import (
    LEGACY_FORMAT,
    UNBOUNDED,
    KeyCheck,
    KeyNotAvailable,
    Keyring,
    OpenedSecret,
    RecordReplayed,
    RecordUnreadable,
    SecretCipher,
    now_rfc3339,
    record_format,
    record_key_id,
)
from services.secrets.masterkey import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, PREVIOUS_KEY_ENV, PREVIOUS_KEY_FILE_ENV
from services.secrets.versioned import Stored, VersionedBucket
from shared.envelopes import SecretInfo
from shared.jetstream import StateKeeper, ensure_kv
from shared.subjects import SECRETS_BUCKET

log = logging.getLogger("modelbus.secrets")

BUCKET_CONFIG = KeyValueConfig(
    bucket=SECRETS_BUCKET,
    description="modelbus secrets, AES-256-GCM encrypted (see docs/secrets.md)",
    history=5,
    storage=StorageType.FILE,
)
KEYCHECK_KEY = "keycheck"
"""KV key of the key-check record of the store's active master key."""
NEXT_KEYCHECK_KEY = "keycheck.next"
"""KV key of the key-check record of the key an unfinished rotation is moving to."""
SECRET_KEY_PREFIX = "secret."
"""Prefix of every secret's KV key."""
LAST4_MIN_LENGTH = 12
"""Values shorter than this show no ``key_last4``: four characters would be too much of them."""

_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?")


class StoreStartupError(Exception):
    """The store cannot be opened safely; the message tells the operator what to do."""


class StoreKeyRetired(Exception):
    """The store's active master key is one this service does not hold: a rotation finished without it.

    Writing now would seal a secret under a key the store has moved away from.
    """

    def __init__(self, key_id: str | None) -> None:
        super().__init__(key_id)
        self.key_id = key_id
        """The store's active key id, when its key check names one."""


class KeyCheckReplayed(Exception):
    """The store's key check is an older one written back; nothing is written until an operator looks."""


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid secret name, or ``None`` if it is.

    Names are 1 to 253 characters of letters, digits, ``.``, ``_``, ``-`` and
    ``/``, starting and ending with a letter or digit: Kubernetes-style names
    with an optional ``namespace/`` part. No ``:``, so a bare name can never be
    mistaken for a ``scheme:`` reference.
    """
    if not name:
        return "must not be empty"
    if not _NAME_RE.fullmatch(name):
        return (
            "must be 1-253 characters of letters, digits, '.', '_', '-' and '/', "
            "starting and ending with a letter or digit"
        )
    return None


def kv_key(name: str) -> str:
    """The KV key of secret ``name``."""
    encoded = base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()
    return SECRET_KEY_PREFIX + encoded


def name_of(key: str) -> str:
    """The secret name a KV key holds; :class:`ValueError` for keys that are not secrets."""
    if not key.startswith(SECRET_KEY_PREFIX):
        raise ValueError(f"{key!r} is not a secret key")
    encoded = key.removeprefix(SECRET_KEY_PREFIX)
    try:
        name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{key!r} is not a secret key") from exc
    if kv_key(name) != key:  # the decoder skips stray characters; only exact encodings count
        raise ValueError(f"{key!r} is not a secret key")
    return name


def last4(value: str) -> str | None:
    """The admin view's ``key_last4``: only for values long enough to spare four characters."""
    return value[-4:] if len(value) >= LAST4_MIN_LENGTH else None


def _format(raw: bytes) -> int | None:
    try:
        return record_format(raw)
    except RecordUnreadable:
        return None


def _check_key_id(check: Stored, ring: Keyring) -> str | None:
    """Which key a key-check record is for: the id it names, or the held key it opens with."""
    try:
        return record_key_id(check.value) or ring.verifying_key_id(check.value, revision=check.revision)
    except RecordUnreadable:
        return None


def _ids(ring: Keyring) -> str:
    return ", ".join(ring.key_ids)


def _mismatch(key_source: str, ring: Keyring, active: str | None = None) -> StoreStartupError:
    store_key = f" (its active master key is key id {active})" if active else ""
    return StoreStartupError(
        f"master key does not match the secrets store (JetStream KV bucket {SECRETS_BUCKET!r}){store_key}: "
        f"its stored secrets do not decrypt with the key from {key_source} (key id {_ids(ring)}). "
        "Nothing was changed. Start the secrets service with the master key the secrets were stored with"
        f"{' (after a master-key rotation, the new key)' if active else ''}."
    )


def _replayed_check(key: str) -> StoreStartupError:
    return StoreStartupError(
        f"the key check {key!r} of the secrets store (JetStream KV bucket {SECRETS_BUCKET!r}) was rolled back "
        "or replayed: it is a genuine key check, but not the one last written there. Someone with write access "
        "to the bucket wrote an older one back. Nothing was changed. Find out who; then purge that key "
        f"(`nats kv del --purge {SECRETS_BUCKET} {key}`) and start again: a new key check is written."
    )


# Records written before key ids name no key; they belong to the key of the key
# check beside them. When that key check does not open either, this names it.
_UNNAMED_ACTIVE_KEY = "<the store's active key, written before key ids>"


def _missing_keys(counts: dict[str, int], key_source: str, ring: Keyring) -> StoreStartupError:
    needed = "; ".join(f"{n} under key id {kid}" for kid, n in sorted(counts.items()))
    return StoreStartupError(
        f"the secrets store (JetStream KV bucket {SECRETS_BUCKET!r}) holds secrets sealed under a master key "
        f"this service was not given ({needed}); it holds key id {_ids(ring)} from {key_source}. "
        "A master-key rotation is probably unfinished. Start the service with the new key in "
        f"{MASTER_KEY_ENV} (or {MASTER_KEY_FILE_ENV}) and the old one in {PREVIOUS_KEY_ENV} "
        f"(or {PREVIOUS_KEY_FILE_ENV}), then run `modelbus secrets rotate-master-key` again to finish. "
        "Nothing was changed."
    )


async def ensure_no_locked_data(js: JetStreamContext) -> None:
    """Refuse to run keyless over a bucket that holds encrypted data.

    Serving ``env:`` references without a key is fine; pretending a populated
    store is empty is not.
    """
    try:
        kv = await js.key_value(SECRETS_BUCKET)
    except BucketNotFoundError:
        return
    bucket = VersionedBucket(js, kv)
    if any([await bucket.read(key) for key in await bucket.keys()]):
        raise StoreStartupError(
            f"the secrets store (JetStream KV bucket {SECRETS_BUCKET!r}) holds encrypted data but no master "
            f"key is configured: set {MASTER_KEY_ENV} (base64 of 32 bytes) or {MASTER_KEY_FILE_ENV} to the key "
            "it was written with. Nothing was changed."
        )


def store_keeper(nc: Client) -> StateKeeper:
    """Keeps the secrets bucket in place after reconnects and lost servers: brought to
    ``MODELBUS_JS_REPLICAS``, and re-created if it is gone (with an error in the log: its secrets
    are lost unless a server with the old store comes back; the key check is written at the next
    start). Start it once :meth:`SecretStore.open` succeeded; stop it before closing ``nc``."""
    js = nc.jetstream()

    async def repair(reason: str) -> None:
        _, ensured = await ensure_kv(js, BUCKET_CONFIG)
        if ensured.created:
            log.error(
                "the secrets store (JetStream KV bucket %r) was missing (%s) and has been created again, empty: "
                "its secrets are lost unless a server with the old JetStream store comes back",
                SECRETS_BUCKET,
                reason,
            )

    return StateKeeper(nc, "secrets bucket", repair)


def legacy_horizon_for(version: int, *, versioned_records: bool) -> int:
    """The legacy horizon a key check written at ``version`` fixes.

    Every record already in the bucket is below ``version``, so format-1
    records up to ``version - 1`` may be genuine. Once format-2 records exist
    the store was upgraded before, and a format-1 key check beside them was
    written back: then no format-1 record is genuine (horizon 0).
    """
    return 0 if versioned_records else version - 1


class SecretStore:
    """Get, put, delete and list sealed secrets in the bucket."""

    def __init__(self, bucket: VersionedBucket, ring: Keyring) -> None:
        self._bucket = bucket
        self._ring = ring
        self._upgraded = False
        """Whether a format-2 key check was seen: a format-1 one after that was written back."""

    @classmethod
    async def open(cls, js: JetStreamContext, ring: Keyring, *, key_source: str) -> SecretStore:
        """Create the bucket if absent, check the keys against it, and write (or upgrade) the key check.

        ``key_source`` names where the keys came from, for error messages.
        """
        kv, _ = await ensure_kv(js, BUCKET_CONFIG)  # MODELBUS_JS_REPLICAS replicas, an existing bucket brought to it
        store = cls(VersionedBucket(js, kv), ring)
        await store._check_keys(key_source)
        return store

    async def _open_check(self, key: str) -> tuple[Stored | None, KeyCheck | None]:
        stored = await self._bucket.read(key)
        if stored is None:
            return None, None
        try:
            return stored, self._ring.open_keycheck(stored.value, revision=stored.revision)
        except RecordReplayed:
            raise _replayed_check(key) from None

    async def _check_keys(self, key_source: str) -> None:
        """Refuse, changing nothing, unless every stored secret opens with a held key.

        The key check (or, during a rotation, the next key's check) must open
        with a held key, at the revision it was written for; then every record
        must name a held key. Records from before key ids belong to the key
        check's key. Only reading the records' JSON, no decryption: a damaged
        record still shows up when it is read.
        """
        check, opened = await self._open_check(KEYCHECK_KEY)
        upcoming, opened_next = await self._open_check(NEXT_KEYCHECK_KEY)
        active = _check_key_id(check, self._ring) if check is not None else None
        if (check is not None or upcoming is not None) and opened is None and opened_next is None:
            raise _mismatch(key_source, self._ring, active)
        missing: dict[str, int] = {}
        versioned = False
        for key in await self._bucket.keys():
            if not key.startswith(SECRET_KEY_PREFIX):
                continue
            stored = await self._bucket.read(key)
            if stored is None or _format(stored.value) is None:
                continue  # deleted meanwhile, or not a record: reading it says so
            versioned |= _format(stored.value) != LEGACY_FORMAT
            kid = record_key_id(stored.value)
            if kid is None and check is None:
                continue  # no key check to belong to: the sample below decides
            kid = kid or active or _UNNAMED_ACTIVE_KEY
            if self._ring.cipher_for(kid) is None:
                missing[kid] = missing.get(kid, 0) + 1
        if missing:
            raise _missing_keys(missing, key_source, self._ring)
        if any(c is not None and c.legacy_until is not None for c in (opened, opened_next)):
            self._upgraded = True
        if check is None and upcoming is None:
            await self._write_first_keycheck(key_source, versioned)
        elif check is not None and opened is not None and opened.legacy_until is None:
            await self._upgrade_keycheck(check, opened.key_id, versioned)

    async def _write_first_keycheck(self, key_source: str, versioned: bool) -> None:
        # No key check yet. Secrets without one (a key check lost or purged by
        # hand) must still open with a held key before we vouch for it, and the
        # key check is written for the key they open with.
        writer: SecretCipher = self._ring.current
        for key in [k for k in await self._bucket.keys() if k.startswith(SECRET_KEY_PREFIX)]:
            stored = await self._bucket.read(key)
            if stored is None:
                continue  # deleted: the first secret that holds a value is the sample
            opener = next((c for c in self._ring.ciphers if _opens(c, key, stored)), None)
            if opener is None:
                raise _mismatch(key_source, self._ring)
            writer = opener
            break

        def seal(version: int) -> bytes:
            return writer.keycheck(
                version=version, legacy_until=legacy_horizon_for(version, versioned_records=versioned)
            )

        if await self._bucket.create(KEYCHECK_KEY, seal):
            log.info("secrets store %s initialised with a new key check", SECRETS_BUCKET)
            self._upgraded = True
            return
        # Another secrets instance wrote one first; it must agree with ours.
        _, opened = await self._open_check(KEYCHECK_KEY)
        if opened is None:
            raise _mismatch(key_source, self._ring)

    async def _upgrade_keycheck(self, check: Stored, kid: str, versioned: bool) -> None:
        """Rewrite a format-1 key check in format 2, fixing the legacy horizon (compare-and-set)."""
        cipher = self._ring.cipher_for(kid)
        assert cipher is not None
        if versioned:
            log.error(
                "the key check of the secrets store is in the old format although secrets in the new format "
                "exist: an old key check was written back. Old-format records are refused from now on."
            )

        def seal(version: int) -> bytes:
            return cipher.keycheck(
                version=version, legacy_until=legacy_horizon_for(version, versioned_records=versioned)
            )

        if await self._bucket.replace(KEYCHECK_KEY, seal, last=check.revision) is not None:
            log.info("secrets store %s: key check upgraded to record format 2", SECRETS_BUCKET)
            self._upgraded = True

    async def _legacy_horizon(self) -> int:
        """Highest revision at which a format-1 record may be genuine, from the key check a held key opens."""
        for key in (KEYCHECK_KEY, NEXT_KEYCHECK_KEY):
            stored = await self._bucket.read(key)
            if stored is None:
                continue
            try:
                check = self._ring.open_keycheck(stored.value, revision=stored.revision)
            except RecordReplayed:
                log.error(
                    "the secrets store's key check %r was rolled back or replayed; old-format records refused", key
                )
                return 0
            if check is None:
                continue
            if check.legacy_until is None:  # a store no service of this version has upgraded yet
                return 0 if self._upgraded else UNBOUNDED
            self._upgraded = True
            return check.legacy_until
        return 0

    async def _ensure_active_key_held(self) -> None:
        """Refuse to write once the store has been rotated to a key this service does not hold.

        During a rotation the old key is still active, so an old-key service
        keeps writing and the rotation re-encrypts what it writes; once the
        rotation marks the new key active, such a service stops writing instead
        of leaving secrets behind under a key the store has moved away from.
        """
        check = await self._bucket.read(KEYCHECK_KEY)
        if check is None:
            return
        upcoming = await self._bucket.read(NEXT_KEYCHECK_KEY)
        try:
            if self._ring.verifying_key_id(check.value, revision=check.revision):
                return
            if upcoming is not None and self._ring.verifying_key_id(upcoming.value, revision=upcoming.revision):
                return
        except RecordReplayed:
            raise KeyCheckReplayed from None
        raise StoreKeyRetired(_check_key_id(check, self._ring))

    async def _open(self, name: str, stored: Stored) -> OpenedSecret:
        horizon = await self._legacy_horizon() if _format(stored.value) == LEGACY_FORMAT else 0
        return self._ring.open_secret(name, stored.value, revision=stored.revision, legacy_until=horizon)

    async def get(self, name: str) -> str | None:
        """The value of secret ``name``, ``None`` when there is none.

        Raises :class:`~services.secrets.crypto.RecordReplayed` when the record
        is an older one written back, :class:`RecordUnreadable` when it exists
        but does not open, :class:`~services.secrets.crypto.KeyNotAvailable`
        when it is sealed under a key this service does not hold.
        """
        stored = await self._bucket.read(kv_key(name))
        if stored is None:
            return None
        return (await self._open(name, stored)).value

    async def put(self, name: str, value: str) -> SecretInfo:
        """Seal and store ``value`` under ``name`` with the current key, replacing any previous value.

        :class:`StoreKeyRetired` when the store has been rotated to a key this
        service does not hold, :class:`KeyCheckReplayed` when its key check was
        written back.
        """
        await self._ensure_active_key_held()
        updated_at = now_rfc3339()

        def seal(version: int) -> bytes:
            return self._ring.seal_secret(name, value, version=version, updated_at=updated_at)

        await self._bucket.write(kv_key(name), seal)
        return SecretInfo(name=name, key_present=True, key_last4=last4(value), source="store", updated_at=updated_at)

    async def delete(self, name: str) -> bool:
        """Remove ``name`` and its history; ``False`` when it did not exist."""
        key = kv_key(name)
        if await self._bucket.read(key) is None:
            return False
        await self._bucket.remove(key)
        return True

    async def infos(self) -> list[SecretInfo]:
        """Metadata of every stored secret, sorted by name; never a value."""
        items: list[SecretInfo] = []
        for key in await self._bucket.keys():
            if not key.startswith(SECRET_KEY_PREFIX):
                continue
            try:
                name = name_of(key)
            except ValueError:
                continue  # not ours
            stored = await self._bucket.read(key)
            if stored is None:
                continue  # deleted since the key listing
            try:
                opened = await self._open(name, stored)
            except KeyNotAvailable as exc:
                log.error(
                    "stored secret %r is sealed under master key %s, which this service does not hold", name, exc.key_id
                )
            except RecordReplayed:
                log.error("stored secret %r: record for %s was rolled back or replayed", name, name)
            except RecordUnreadable:
                log.error("stored secret %r does not decrypt with the current master key", name)
            else:
                items.append(
                    SecretInfo(
                        name=name,
                        key_present=True,
                        key_last4=last4(opened.value),
                        source="store",
                        updated_at=opened.updated_at,
                    )
                )
                continue
            items.append(SecretInfo(name=name, key_present=False, source="store"))
        items.sort(key=lambda info: info.name)
        return items


def _opens(cipher: SecretCipher, key: str, stored: Stored) -> bool:
    """Whether ``cipher`` is the key a record was sealed with (a replayed record proves that too)."""
    try:
        cipher.open_secret(name_of(key), stored.value, revision=stored.revision, legacy_until=UNBOUNDED)
    except RecordReplayed:
        return True
    except (RecordUnreadable, ValueError):
        return False
    return True
