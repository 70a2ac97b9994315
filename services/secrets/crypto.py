"""The master key and the sealed-record format of stored secrets.

Every stored value is sealed with AES-256-GCM (``cryptography``'s ``AESGCM``)
under the master key, with a fresh random 12-byte nonce per write and the
secret's name as associated data, so a record copied to another name fails to
open. A record is JSON::

    {"v": 1, "nonce": "<base64>", "ciphertext": "<base64, GCM tag included>",
     "updated_at": "2025-01-01T00:00:00Z"}

and the plaintext inside is JSON ``{"value": "..."}``. Nothing derived from the
value (not even its last four characters) is kept in clear.

The *key check* is a record of the same format sealing a constant with
associated data ``modelbus:keycheck``. It lets the service tell "wrong master
key" from "damaged record" before it touches anything.

The master key is 32 random bytes, written as standard base64 (44 characters),
given either directly in ``MODELBUS_MASTER_KEY`` or in a file named by
``MODELBUS_MASTER_KEY_FILE``. :func:`generate_master_key_file` writes a new one
with mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.keyfile import generate_master_key_file as generate_master_key_file  # re-exported

log = logging.getLogger("modelbus.secrets")

MASTER_KEY_ENV = "MODELBUS_MASTER_KEY"
"""Environment variable holding the base64 master key."""
MASTER_KEY_FILE_ENV = "MODELBUS_MASTER_KEY_FILE"
"""Environment variable naming a file that holds the base64 master key."""
KEY_BYTES = 32
"""AES-256."""
NONCE_BYTES = 12
"""GCM's standard nonce size; a fresh random one per sealed record."""
FORMAT_VERSION = 1
"""Version of :class:`SealedRecord`; bumped if the layout or the cipher changes."""
KEYCHECK_AAD = b"modelbus:keycheck"
"""Associated data of the key-check record; no secret name can equal it (names have no ':')."""
_KEYCHECK_PLAINTEXT = b"modelbus master key check v1"


class MasterKeyError(ValueError):
    """The master key configuration is unusable: bad base64, wrong length, unreadable file."""


class RecordUnreadable(Exception):
    """A sealed record does not open: wrong key, wrong name, tampered or not a record.

    Deliberately carries no detail: callers say which record, never why in
    terms of its bytes.
    """


class SealedRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One encrypted value as stored in the secrets bucket."""

    v: int
    """Format version, :data:`FORMAT_VERSION`."""
    nonce: str
    """Base64 of the 12-byte GCM nonce."""
    ciphertext: str
    """Base64 of the AES-256-GCM ciphertext with its 16-byte tag."""
    updated_at: str
    """RFC 3339 UTC time the record was written."""


class _Plaintext(msgspec.Struct, kw_only=True, frozen=True):
    value: str


class OpenedSecret(msgspec.Struct, kw_only=True, frozen=True):
    """A decrypted record: the value and when it was written."""

    value: str
    updated_at: str

    def __repr__(self) -> str:  # never print the value by accident
        return f"OpenedSecret(value=<{len(self.value)} chars>, updated_at={self.updated_at!r})"


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(SealedRecord)
_plaintext_decoder = msgspec.json.Decoder(_Plaintext)


def now_rfc3339() -> str:
    """The current UTC time, to the second, as RFC 3339."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_aad(name: str) -> bytes:
    """Associated data binding a record to its secret's name."""
    return name.encode()


class SecretCipher:
    """Seal and open records under one master key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"master key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretCipher(<key hidden>)"

    def seal(self, plaintext: bytes, aad: bytes, *, updated_at: str | None = None) -> bytes:
        """A JSON :class:`SealedRecord` of ``plaintext``, with a fresh nonce."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext, aad)
        record = SealedRecord(
            v=FORMAT_VERSION,
            nonce=base64.b64encode(nonce).decode(),
            ciphertext=base64.b64encode(ciphertext).decode(),
            updated_at=updated_at or now_rfc3339(),
        )
        return _record_encoder.encode(record)

    def open(self, raw: bytes, aad: bytes) -> tuple[bytes, SealedRecord]:
        """The plaintext of a record and the record; :class:`RecordUnreadable` otherwise."""
        try:
            record = _record_decoder.decode(raw)
            if record.v != FORMAT_VERSION:
                raise RecordUnreadable
            nonce = base64.b64decode(record.nonce, validate=True)
            ciphertext = base64.b64decode(record.ciphertext, validate=True)
            if len(nonce) != NONCE_BYTES:
                raise RecordUnreadable
            return self._aead.decrypt(nonce, ciphertext, aad), record
        except (msgspec.MsgspecError, binascii.Error, ValueError, InvalidTag) as exc:
            raise RecordUnreadable from exc

    def seal_secret(self, name: str, value: str, *, updated_at: str | None = None) -> bytes:
        """The stored form of secret ``name`` holding ``value``."""
        return self.seal(_record_encoder.encode(_Plaintext(value=value)), secret_aad(name), updated_at=updated_at)

    def open_secret(self, name: str, raw: bytes) -> OpenedSecret:
        """Decrypt the record stored for ``name``; :class:`RecordUnreadable` if it does not open."""
        plaintext, record = self.open(raw, secret_aad(name))
        try:
            value = _plaintext_decoder.decode(plaintext).value
        except msgspec.MsgspecError as exc:
            raise RecordUnreadable from exc
        return OpenedSecret(value=value, updated_at=record.updated_at)

    def keycheck(self) -> bytes:
        """A new key-check record for this key."""
        return self.seal(_KEYCHECK_PLAINTEXT, KEYCHECK_AAD)

    def verifies(self, keycheck: bytes) -> bool:
        """Whether a key-check record was written with this key."""
        try:
            plaintext, _ = self.open(keycheck, KEYCHECK_AAD)
        except RecordUnreadable:
            return False
        return plaintext == _KEYCHECK_PLAINTEXT


# ------------------------------------------------------------------ master key


def parse_master_key(text: str, *, source: str) -> bytes:
    """32 key bytes from base64 text; :class:`MasterKeyError` naming ``source`` otherwise.

    The message never quotes the text: a mistyped key is still most of a key.
    """
    stripped = text.strip()
    try:
        key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError(
            f"{source} is not valid base64; it must be {KEY_BYTES} random bytes in base64 "
            f"(generate one with: python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
        ) from exc
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"{source} decodes to {len(key)} bytes; an AES-256 master key must be {KEY_BYTES} bytes")
    return key


class MasterKey:
    """A loaded master key and where it came from (for messages); its repr hides the key."""

    __slots__ = ("key", "source")

    def __init__(self, key: bytes, source: str) -> None:
        self.key = key
        self.source = source

    def __repr__(self) -> str:
        return f"MasterKey(<hidden>, source={self.source!r})"


def load_master_key(env: Mapping[str, str] | None = None) -> MasterKey | None:
    """The configured master key, ``None`` when none is configured.

    ``MODELBUS_MASTER_KEY`` holds the key itself, ``MODELBUS_MASTER_KEY_FILE``
    names a file holding it; setting both is refused rather than guessing which
    one was meant. An empty variable counts as unset.
    """
    env = os.environ if env is None else env
    inline = env.get(MASTER_KEY_ENV, "")
    path = env.get(MASTER_KEY_FILE_ENV, "")
    if inline and path:
        raise MasterKeyError(f"both {MASTER_KEY_ENV} and {MASTER_KEY_FILE_ENV} are set; set only one")
    if inline:
        return MasterKey(parse_master_key(inline, source=MASTER_KEY_ENV), MASTER_KEY_ENV)
    if not path:
        return None
    key_file = Path(path)
    try:
        text = key_file.read_text(encoding="ascii")
        mode = key_file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise MasterKeyError(f"{MASTER_KEY_FILE_ENV}: cannot read key file {path}: {exc}") from exc
    if mode & 0o077:
        log.warning("master key file %s is readable by group or others (mode %o); chmod 600 it", path, mode & 0o777)
    source = f"{MASTER_KEY_FILE_ENV} ({path})"
    return MasterKey(parse_master_key(text, source=source), source)
