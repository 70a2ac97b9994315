"""The master key and the sealed-record format of stored secrets.

Every stored value is sealed with AES-256-GCM (``cryptography``'s ``AESGCM``)
under the master key, with a fresh random 12-byte nonce per write and the
secret's name as associated data, so a record copied to another name fails to
open. A record is JSON::

    {"v": 1, "kid": "<key id>", "nonce": "<base64>",
     "ciphertext": "<base64, GCM tag included>", "updated_at": "2025-01-01T00:00:00Z"}

and the plaintext inside is JSON ``{"value": "..."}``. Nothing derived from the
value (not even its last four characters) is kept in clear.

``kid`` names the master key that sealed the record (:func:`key_id`), so during
a master-key rotation every record says which key opens it. It was added
without bumping ``v``: records written before it have no ``kid`` and open as
before, and an older modelbus ignores the field, so a downgrade still reads
new records with the right key instead of reporting a wrong one.

The *key check* is a record of the same format sealing a constant with
associated data ``modelbus:keycheck``. It lets the service tell "wrong master
key" from "damaged record" before it touches anything.

The master key is 32 random bytes, written as standard base64 (44 characters),
given either directly in ``MODELBUS_MASTER_KEY`` or in a file named by
``MODELBUS_MASTER_KEY_FILE``. :func:`generate_master_key_file` writes a new one
with mode 0600. While a rotation is under way a service may also be given the
key it replaces, in ``MODELBUS_MASTER_KEY_PREVIOUS`` or
``MODELBUS_MASTER_KEY_PREVIOUS_FILE``: a :class:`Keyring` seals with the current
key and opens records under either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
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
PREVIOUS_KEY_ENV = "MODELBUS_MASTER_KEY_PREVIOUS"
"""Environment variable holding the base64 master key being rotated away from (read-only)."""
PREVIOUS_KEY_FILE_ENV = "MODELBUS_MASTER_KEY_PREVIOUS_FILE"
"""Environment variable naming a file that holds the previous master key."""
KEY_BYTES = 32
"""AES-256."""
NONCE_BYTES = 12
"""GCM's standard nonce size; a fresh random one per sealed record."""
FORMAT_VERSION = 1
"""Version of :class:`SealedRecord`; bumped if the layout or the cipher changes."""
KEYCHECK_AAD = b"modelbus:keycheck"
"""Associated data of the key-check record; no secret name can equal it (names have no ':')."""
_KEYCHECK_PLAINTEXT = b"modelbus master key check v1"
_KEY_ID_LABEL = b"modelbus master key id v1\x00"


class MasterKeyError(ValueError):
    """The master key configuration is unusable: bad base64, wrong length, unreadable file."""


class RecordUnreadable(Exception):
    """A sealed record does not open: wrong key, wrong name, tampered or not a record.

    Deliberately carries no detail: callers say which record, never why in
    terms of its bytes.
    """


class KeyNotAvailable(RecordUnreadable):
    """A record names (``kid``) a master key this process was not given.

    The key id is the only detail: it is derived from the key but says nothing
    about it or about the record's value.
    """

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


class SealedRecord(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One encrypted value as stored in the secrets bucket."""

    v: int
    """Format version, :data:`FORMAT_VERSION`."""
    kid: str | None = None
    """:func:`key_id` of the master key that sealed it; absent in records written before key ids."""
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


def key_id(key: bytes) -> str:
    """A short public name of a master key: 8 bytes of SHA-256 over a fixed label and the key, in hex.

    It lets records, key checks and error messages say *which* key they need
    without saying anything usable about it. The label keeps it distinct from
    any other hash of the same key.
    """
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[:8].hex()


def record_key_id(raw: bytes) -> str | None:
    """The ``kid`` a stored record names, ``None`` for records written before key ids.

    Reads the record's JSON only, no decryption; :class:`RecordUnreadable` when
    ``raw`` is not a record at all.
    """
    try:
        return _record_decoder.decode(raw).kid
    except msgspec.MsgspecError as exc:
        raise RecordUnreadable from exc


class SecretCipher:
    """Seal and open records under one master key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"master key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id(key)
        """:func:`key_id` of this key, written into every record it seals."""

    def __repr__(self) -> str:
        return f"SecretCipher(<key hidden>, key_id={self.key_id!r})"

    def seal(self, plaintext: bytes, aad: bytes, *, updated_at: str | None = None) -> bytes:
        """A JSON :class:`SealedRecord` of ``plaintext``, with a fresh nonce."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext, aad)
        record = SealedRecord(
            v=FORMAT_VERSION,
            kid=self.key_id,
            nonce=base64.b64encode(nonce).decode(),
            ciphertext=base64.b64encode(ciphertext).decode(),
            updated_at=updated_at or now_rfc3339(),
        )
        return _record_encoder.encode(record)

    def open(self, raw: bytes, aad: bytes) -> tuple[bytes, SealedRecord]:
        """The plaintext of a record and the record; :class:`RecordUnreadable` otherwise.

        A record naming another key is :class:`KeyNotAvailable`, without trying to decrypt it.
        """
        try:
            record = _record_decoder.decode(raw)
            if record.v != FORMAT_VERSION:
                raise RecordUnreadable
            if record.kid is not None and record.kid != self.key_id:
                raise KeyNotAvailable(record.kid)
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


def read_master_key_file(path: str | os.PathLike[str], *, source: str) -> MasterKey:
    """The master key in file ``path``; :class:`MasterKeyError` naming ``source`` and the file otherwise.

    Warns (never refuses) when the file is readable by group or others.
    """
    key_file = Path(path)
    try:
        text = key_file.read_text(encoding="ascii")
        mode = key_file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise MasterKeyError(f"{source}: cannot read key file {path}: {exc}") from exc
    if mode & 0o077:
        log.warning("master key file %s is readable by group or others (mode %o); chmod 600 it", path, mode & 0o777)
    described = f"{source} ({path})"
    return MasterKey(parse_master_key(text, source=described), described)


def _load_key(env: Mapping[str, str], inline_env: str, file_env: str) -> MasterKey | None:
    inline = env.get(inline_env, "")
    path = env.get(file_env, "")
    if inline and path:
        raise MasterKeyError(f"both {inline_env} and {file_env} are set; set only one")
    if inline:
        return MasterKey(parse_master_key(inline, source=inline_env), inline_env)
    if not path:
        return None
    return read_master_key_file(path, source=file_env)


def load_master_key(env: Mapping[str, str] | None = None) -> MasterKey | None:
    """The configured master key, ``None`` when none is configured.

    ``MODELBUS_MASTER_KEY`` holds the key itself, ``MODELBUS_MASTER_KEY_FILE``
    names a file holding it; setting both is refused rather than guessing which
    one was meant. An empty variable counts as unset.
    """
    return _load_key(os.environ if env is None else env, MASTER_KEY_ENV, MASTER_KEY_FILE_ENV)


def load_previous_master_key(env: Mapping[str, str] | None = None) -> MasterKey | None:
    """The key a rotation is moving away from (``MODELBUS_MASTER_KEY_PREVIOUS[_FILE]``), if given.

    Same rules as :func:`load_master_key`. Giving it without a current key is
    refused: the previous key only ever opens records, it never seals one.
    """
    env = os.environ if env is None else env
    previous = _load_key(env, PREVIOUS_KEY_ENV, PREVIOUS_KEY_FILE_ENV)
    if previous is not None and not (env.get(MASTER_KEY_ENV) or env.get(MASTER_KEY_FILE_ENV)):
        raise MasterKeyError(
            f"{previous.source} is set but no current master key is: set {MASTER_KEY_ENV} or "
            f"{MASTER_KEY_FILE_ENV} to the new key, and keep the previous one only while a rotation is under way"
        )
    return previous


# ------------------------------------------------------------------ keyring


class Keyring:
    """The master keys a secrets process holds: the current one seals, any of them opens.

    Normally that is one key. While a rotation is under way it may be two, so a
    service can read every record whether the rotation has reached it yet or
    not. A record that names its key (``kid``) is opened with that key only; a
    record written before key ids is tried with each.
    """

    def __init__(self, current: SecretCipher, previous: SecretCipher | None = None) -> None:
        self.current = current
        self._ciphers = {current.key_id: current}
        if previous is not None:
            self._ciphers.setdefault(previous.key_id, previous)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={self.key_ids!r})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of the keys held, the current one first."""
        return tuple(self._ciphers)

    @property
    def ciphers(self) -> tuple[SecretCipher, ...]:
        """The ciphers of the keys held, the current one first."""
        return tuple(self._ciphers.values())

    def cipher_for(self, kid: str) -> SecretCipher | None:
        """The cipher of key ``kid``, ``None`` when this keyring does not hold it."""
        return self._ciphers.get(kid)

    def seal_secret(self, name: str, value: str, *, updated_at: str | None = None) -> bytes:
        """The stored form of secret ``name``, always sealed with the current key."""
        return self.current.seal_secret(name, value, updated_at=updated_at)

    def open_secret(self, name: str, raw: bytes) -> OpenedSecret:
        """Decrypt a record with whichever held key sealed it.

        :class:`KeyNotAvailable` when it names a key not held here,
        :class:`RecordUnreadable` when it does not open at all.
        """
        kid = record_key_id(raw)
        if kid is not None:
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise KeyNotAvailable(kid)
            return cipher.open_secret(name, raw)
        for cipher in self._ciphers.values():
            try:
                return cipher.open_secret(name, raw)
            except RecordUnreadable:
                continue
        raise RecordUnreadable

    def verifying_key_id(self, keycheck: bytes) -> str | None:
        """The id of the held key a key-check record was written with, ``None`` if none of them."""
        for kid, cipher in self._ciphers.items():
            if cipher.verifies(keycheck):
                return kid
        return None

    def keycheck(self) -> bytes:
        """A new key-check record for the current key."""
        return self.current.keycheck()


@dataclass(frozen=True)
class ConfiguredKeys:
    """The keyring a service was configured with, and where its keys came from (for messages)."""

    ring: Keyring
    source: str


def load_keyring(env: Mapping[str, str] | None = None) -> ConfiguredKeys | None:
    """The current key and, during a rotation, the previous one; ``None`` when no key is configured.

    :class:`MasterKeyError` for anything unusable, as :func:`load_master_key`.
    """
    current = load_master_key(env)
    previous = load_previous_master_key(env)
    if current is None:
        return None
    ring = Keyring(SecretCipher(current.key), SecretCipher(previous.key) if previous is not None else None)
    source = current.source if previous is None else f"{current.source}, previous key from {previous.source}"
    return ConfiguredKeys(ring, source)
