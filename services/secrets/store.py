"""The encrypted secrets store: sealed records in the JetStream KV bucket ``modelbus_secrets``.

Layout of the bucket (file storage, 5 revisions of history per key):

================================ ==============================================
``keycheck``                      key-check record of the store's active master key
``keycheck.next``                 key-check record of the key a rotation is moving to
                                  (only while one is under way)
``secret.<base64url(name)>``      one :class:`~services.secrets.crypto.SealedRecord` per secret
================================ ==============================================

KV keys allow only ``[-/_=.a-zA-Z0-9]`` and treat ``.`` as a token separator,
so names are encoded with unpadded URL-safe base64 (alphabet ``[A-Za-z0-9_-]``),
which is reversible and always a single valid token. Deleting a secret purges
its key, so older encrypted revisions go too.

Opening the store checks the master keys against the bucket before anything is
written: a wrong key, a locked bucket, or secrets sealed under a key the
service was not given (an unfinished rotation) stop the service with
:class:`StoreStartupError` and leave the bucket as it was.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re

from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from services.secrets.crypto import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    PREVIOUS_KEY_ENV,
    PREVIOUS_KEY_FILE_ENV,
    KeyNotAvailable,
    Keyring,
    RecordUnreadable,
    SecretCipher,
    now_rfc3339,
    record_key_id,
)
from shared.envelopes import SecretInfo
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


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return await kv.keys()
    except NoKeysError:
        return []


async def _read(kv: KeyValue, key: str) -> bytes | None:
    try:
        return (await kv.get(key)).value or b""
    except KeyNotFoundError:
        return None


def _check_key_id(check: bytes, ring: Keyring) -> str | None:
    """Which key a key-check record is for: the id it names, or the held key it opens with."""
    try:
        return record_key_id(check) or ring.verifying_key_id(check)
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
    if await _keys(kv):
        raise StoreStartupError(
            f"the secrets store (JetStream KV bucket {SECRETS_BUCKET!r}) holds encrypted data but no master "
            f"key is configured: set {MASTER_KEY_ENV} (base64 of 32 bytes) or {MASTER_KEY_FILE_ENV} to the key "
            "it was written with. Nothing was changed."
        )


class SecretStore:
    """Get, put, delete and list sealed secrets in the bucket."""

    def __init__(self, kv: KeyValue, ring: Keyring) -> None:
        self._kv = kv
        self._ring = ring

    @classmethod
    async def open(cls, js: JetStreamContext, ring: Keyring, *, key_source: str) -> SecretStore:
        """Create the bucket if absent, check the keys against it, and write the key check if new.

        ``key_source`` names where the keys came from, for error messages.
        """
        try:
            kv = await js.key_value(SECRETS_BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(config=BUCKET_CONFIG)
        store = cls(kv, ring)
        await store._check_keys(key_source)
        return store

    async def _check_keys(self, key_source: str) -> None:
        """Refuse, changing nothing, unless every stored secret opens with a held key.

        The key check (or, during a rotation, the next key's check) must open
        with a held key; then every record must name a held key. Records from
        before key ids belong to the key check's key. Only reading the records'
        JSON, no decryption: a damaged record still shows up when it is read.
        """
        check = await _read(self._kv, KEYCHECK_KEY)
        upcoming = await _read(self._kv, NEXT_KEYCHECK_KEY)
        checks = [c for c in (check, upcoming) if c is not None]
        active = _check_key_id(check, self._ring) if check is not None else None
        if checks and not any(self._ring.verifying_key_id(c) for c in checks):
            raise _mismatch(key_source, self._ring, active)
        missing: dict[str, int] = {}
        for key in await _keys(self._kv):
            if not key.startswith(SECRET_KEY_PREFIX):
                continue
            raw = await _read(self._kv, key)
            try:
                kid = record_key_id(raw) if raw is not None else None
            except RecordUnreadable:
                continue
            if raw is None or (kid is None and check is None):
                continue  # deleted meanwhile, or no key check to belong to: the sample below decides
            kid = kid or active or _UNNAMED_ACTIVE_KEY
            if self._ring.cipher_for(kid) is None:
                missing[kid] = missing.get(kid, 0) + 1
        if missing:
            raise _missing_keys(missing, key_source, self._ring)
        if not checks:
            await self._write_first_keycheck(key_source)

    async def _write_first_keycheck(self, key_source: str) -> None:
        # No key check yet. Secrets without one (a key check lost or purged by
        # hand) must still open with a held key before we vouch for it, and the
        # key check is written for the key they open with.
        writer: SecretCipher = self._ring.current
        secret_keys = [k for k in await _keys(self._kv) if k.startswith(SECRET_KEY_PREFIX)]
        for key in secret_keys[:1]:
            raw = await _read(self._kv, key)
            if raw is None:
                continue
            opener = next((c for c in self._ring.ciphers if _opens(c, key, raw)), None)
            if opener is None:
                raise _mismatch(key_source, self._ring)
            writer = opener
        try:
            await self._kv.create(KEYCHECK_KEY, writer.keycheck())
            log.info("secrets store %s initialised with a new key check", SECRETS_BUCKET)
        except KeyWrongLastSequenceError:
            # Another secrets instance wrote one first; it must agree with ours.
            if not self._ring.verifying_key_id(await _read(self._kv, KEYCHECK_KEY) or b""):
                raise _mismatch(key_source, self._ring) from None

    async def _ensure_active_key_held(self) -> None:
        """Refuse to write once the store has been rotated to a key this service does not hold.

        During a rotation the old key is still active, so an old-key service
        keeps writing and the rotation re-encrypts what it writes; once the
        rotation marks the new key active, such a service stops writing instead
        of leaving secrets behind under a key the store has moved away from.
        """
        check = await _read(self._kv, KEYCHECK_KEY)
        if check is None or self._ring.verifying_key_id(check):
            return
        upcoming = await _read(self._kv, NEXT_KEYCHECK_KEY)
        if upcoming is not None and self._ring.verifying_key_id(upcoming):
            return
        raise StoreKeyRetired(_check_key_id(check, self._ring))

    async def get(self, name: str) -> str | None:
        """The value of secret ``name``, ``None`` when there is none.

        Raises :class:`RecordUnreadable` when the record exists but does not
        open, :class:`~services.secrets.crypto.KeyNotAvailable` when it is
        sealed under a key this service does not hold.
        """
        raw = await _read(self._kv, kv_key(name))
        if raw is None:
            return None
        return self._ring.open_secret(name, raw).value

    async def put(self, name: str, value: str) -> SecretInfo:
        """Seal and store ``value`` under ``name`` with the current key, replacing any previous value.

        :class:`StoreKeyRetired` when the store has been rotated to a key this service does not hold.
        """
        await self._ensure_active_key_held()
        updated_at = now_rfc3339()
        await self._kv.put(kv_key(name), self._ring.seal_secret(name, value, updated_at=updated_at))
        return SecretInfo(name=name, key_present=True, key_last4=last4(value), source="store", updated_at=updated_at)

    async def delete(self, name: str) -> bool:
        """Remove ``name`` and its history; ``False`` when it did not exist."""
        key = kv_key(name)
        try:
            await self._kv.get(key)
        except KeyNotFoundError:
            return False
        await self._kv.purge(key)
        return True

    async def infos(self) -> list[SecretInfo]:
        """Metadata of every stored secret, sorted by name; never a value."""
        items: list[SecretInfo] = []
        for key in await _keys(self._kv):
            if not key.startswith(SECRET_KEY_PREFIX):
                continue
            try:
                name = name_of(key)
                entry = await self._kv.get(key)
            except (ValueError, KeyNotFoundError):
                continue  # not ours, or deleted since the key listing
            try:
                opened = self._ring.open_secret(name, entry.value or b"")
            except KeyNotAvailable as exc:
                log.error(
                    "stored secret %r is sealed under master key %s, which this service does not hold", name, exc.key_id
                )
                items.append(SecretInfo(name=name, key_present=False, source="store"))
                continue
            except RecordUnreadable:
                log.error("stored secret %r does not decrypt with the current master key", name)
                items.append(SecretInfo(name=name, key_present=False, source="store"))
                continue
            items.append(
                SecretInfo(
                    name=name,
                    key_present=True,
                    key_last4=last4(opened.value),
                    source="store",
                    updated_at=opened.updated_at,
                )
            )
        items.sort(key=lambda info: info.name)
        return items


def _opens(cipher: SecretCipher, key: str, raw: bytes) -> bool:
    try:
        cipher.open_secret(name_of(key), raw)
    except (RecordUnreadable, ValueError):
        return False
    return True
