"""The encrypted secrets store: sealed records in the JetStream KV bucket ``modelbus_secrets``.

Layout of the bucket (file storage, 5 revisions of history per key):

================================ ==============================================
``keycheck``                      key-check record (:meth:`SecretCipher.keycheck`)
``secret.<base64url(name)>``      one :class:`~services.secrets.crypto.SealedRecord` per secret
================================ ==============================================

KV keys allow only ``[-/_=.a-zA-Z0-9]`` and treat ``.`` as a token separator,
so names are encoded with unpadded URL-safe base64 (alphabet ``[A-Za-z0-9_-]``),
which is reversible and always a single valid token. Deleting a secret purges
its key, so older encrypted revisions go too.

Opening the store checks the master key against the bucket before anything is
written: a wrong key or a locked bucket stops the service with
:class:`StoreStartupError` and leaves the bucket as it was.
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
    RecordUnreadable,
    SecretCipher,
    now_rfc3339,
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
"""KV key of the key-check record."""
SECRET_KEY_PREFIX = "secret."
"""Prefix of every secret's KV key."""
LAST4_MIN_LENGTH = 12
"""Values shorter than this show no ``key_last4``: four characters would be too much of them."""

_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?")


class StoreStartupError(Exception):
    """The store cannot be opened safely; the message tells the operator what to do."""


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


def _mismatch(key_source: str) -> StoreStartupError:
    return StoreStartupError(
        f"master key does not match the secrets store (JetStream KV bucket {SECRETS_BUCKET!r}): "
        f"its stored secrets do not decrypt with the key from {key_source}. Nothing was changed. "
        "Start the secrets service with the master key the secrets were stored with."
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

    def __init__(self, kv: KeyValue, cipher: SecretCipher) -> None:
        self._kv = kv
        self._cipher = cipher

    @classmethod
    async def open(cls, js: JetStreamContext, cipher: SecretCipher, *, key_source: str) -> SecretStore:
        """Create the bucket if absent, check the key against it, and write the key check if new.

        ``key_source`` names where the key came from, for the error message.
        """
        try:
            kv = await js.key_value(SECRETS_BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(config=BUCKET_CONFIG)
        store = cls(kv, cipher)
        await store._check_key(key_source)
        return store

    async def _check_key(self, key_source: str) -> None:
        try:
            check: bytes | None = (await self._kv.get(KEYCHECK_KEY)).value
        except KeyNotFoundError:
            check = None
        if check is not None:
            if not self._cipher.verifies(check):
                raise _mismatch(key_source)
            return
        # No key check yet. Secrets without one (a key check lost or purged by
        # hand) must still open with this key before we vouch for it.
        secret_keys = [k for k in await _keys(self._kv) if k.startswith(SECRET_KEY_PREFIX)]
        for key in secret_keys[:1]:
            try:
                entry = await self._kv.get(key)
                self._cipher.open_secret(name_of(key), entry.value or b"")
            except (RecordUnreadable, ValueError) as exc:
                raise _mismatch(key_source) from exc
        try:
            await self._kv.create(KEYCHECK_KEY, self._cipher.keycheck())
            log.info("secrets store %s initialised with a new key check", SECRETS_BUCKET)
        except KeyWrongLastSequenceError:
            # Another secrets instance wrote one first; it must agree with ours.
            if not self._cipher.verifies((await self._kv.get(KEYCHECK_KEY)).value or b""):
                raise _mismatch(key_source) from None

    async def get(self, name: str) -> str | None:
        """The value of secret ``name``, ``None`` when there is none.

        Raises :class:`RecordUnreadable` when the record exists but does not open.
        """
        try:
            entry = await self._kv.get(kv_key(name))
        except KeyNotFoundError:
            return None
        return self._cipher.open_secret(name, entry.value or b"").value

    async def put(self, name: str, value: str) -> SecretInfo:
        """Seal and store ``value`` under ``name``, replacing any previous value."""
        updated_at = now_rfc3339()
        await self._kv.put(kv_key(name), self._cipher.seal_secret(name, value, updated_at=updated_at))
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
                opened = self._cipher.open_secret(name, entry.value or b"")
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
