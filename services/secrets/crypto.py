"""The sealed-record format of stored secrets, and the ciphers that seal and open it.

Every stored value is sealed with AES-256-GCM (``cryptography``'s ``AESGCM``)
under the master key, with a fresh random 12-byte nonce per write. A record is
JSON::

    {"v": 2, "kid": "<key id>", "ver": 42, "nonce": "<base64>",
     "ciphertext": "<base64, GCM tag included>", "updated_at": "2025-01-01T00:00:00Z"}

and the plaintext inside is JSON ``{"value": "..."}``. Nothing derived from the
value (not even its last four characters) is kept in clear.

**What a record is bound to.** The GCM associated data of a format-2 record is
the JSON array ``["modelbus:secret:v2", name, kid, ver]``, so the record opens
only as secret ``name``, under key ``kid``, and as version ``ver``. The
version is the JetStream sequence (the KV revision) the record is stored at:
the writer learns it before publishing (:mod:`services.secrets.versioned`), and
the reader insists that the revision it read the record at is ``ver``. A
record copied to another name does not open; an older record written back
(a rollback or a replay) lands at a new revision and is refused as
:class:`RecordReplayed`. Sequences only grow, so no record can ever be valid
anywhere but where it was first written.

**Format 1** (``"v": 1``, no ``ver``) bound only the name. Such records are
still opened while they can be genuine: at a revision no later than the
store's *legacy horizon* (``legacy_until`` of the key check, the last sequence
before this format was introduced). A format-1 record above it was written
back after the upgrade and is refused too. ``kid`` came before ``ver``:
format-1 records without ``kid`` belong to the key of the key check beside them.

The *key check* is a record of the same format that seals a constant (and,
in format 2, the legacy horizon) with associated data
``["modelbus:keycheck:v2", kid, ver]`` (format 1: ``modelbus:keycheck``). It
lets the service tell "wrong master key" from "damaged record" before it
touches anything. Where keys come from is :mod:`services.secrets.masterkey`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import UTC, datetime

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
"""AES-256."""
NONCE_BYTES = 12
"""GCM's standard nonce size; a fresh random one per sealed record."""
FORMAT_VERSION = 2
"""Version of :class:`SealedRecord` written now: bound to name, key id and stream sequence."""
LEGACY_FORMAT = 1
"""Records bound to the name only; read while they can be genuine, never written."""
UNBOUNDED = 2**63 - 1
"""Legacy horizon of a store whose key check predates format 2: every format-1 record may be genuine."""
KEYCHECK_AAD = b"modelbus:keycheck"
"""Associated data of a format-1 key check; no secret name can equal it (names have no ':')."""
_SECRET_LABEL = "modelbus:secret:v2"
_KEYCHECK_LABEL = "modelbus:keycheck:v2"
_KEYCHECK_PLAINTEXT = b"modelbus master key check v1"
_KEYCHECK_V2 = "modelbus master key check v2"
_KEY_ID_LABEL = b"modelbus master key id v1\x00"


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


class RecordReplayed(RecordUnreadable):
    """A genuine record found where it was not written: an older record written back.

    ``sealed_for`` is the revision the record was sealed for (``None`` for a
    format-1 record found above the legacy horizon), ``found_at`` the revision
    it was read at. Neither says anything about the value.
    """

    def __init__(self, sealed_for: int | None, found_at: int) -> None:
        super().__init__(sealed_for, found_at)
        self.sealed_for = sealed_for
        self.found_at = found_at


class SealedRecord(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One encrypted value as stored in the secrets bucket."""

    v: int
    """Format version: :data:`FORMAT_VERSION`, or :data:`LEGACY_FORMAT` in records from before versions."""
    kid: str | None = None
    """:func:`key_id` of the master key that sealed it; absent only in the oldest format-1 records."""
    ver: int | None = None
    """The KV revision (stream sequence) the record was sealed for; format 2 only."""
    nonce: str
    """Base64 of the 12-byte GCM nonce."""
    ciphertext: str
    """Base64 of the AES-256-GCM ciphertext with its 16-byte tag."""
    updated_at: str
    """RFC 3339 UTC time the value was set (kept when a record is sealed again)."""


class _Plaintext(msgspec.Struct, kw_only=True, frozen=True):
    value: str


class _KeyCheckPlaintext(msgspec.Struct, kw_only=True, frozen=True):
    check: str
    legacy_until: int


class OpenedSecret(msgspec.Struct, kw_only=True, frozen=True):
    """A decrypted record: the value, when it was set, and whether it is still in format 1."""

    value: str
    updated_at: str
    legacy: bool = False
    """Format 1: the next write of this secret (a put or a rotation) seals it in the current format."""

    def __repr__(self) -> str:  # never print the value by accident
        return f"OpenedSecret(value=<{len(self.value)} chars>, updated_at={self.updated_at!r}, legacy={self.legacy})"


class KeyCheck(msgspec.Struct, kw_only=True, frozen=True):
    """An opened key check: which key it is for and the store's legacy horizon."""

    key_id: str
    legacy_until: int | None
    """Highest revision at which a format-1 record can be genuine; ``None`` in a format-1 key check."""


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(SealedRecord)
_plaintext_decoder = msgspec.json.Decoder(_Plaintext)
_keycheck_decoder = msgspec.json.Decoder(_KeyCheckPlaintext)


def now_rfc3339() -> str:
    """The current UTC time, to the second, as RFC 3339."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_aad(name: str, kid: str, version: int) -> bytes:
    """Associated data binding a format-2 record to its secret's name, its key and its revision."""
    return _encoder.encode([_SECRET_LABEL, name, kid, version])


def legacy_secret_aad(name: str) -> bytes:
    """Associated data of a format-1 record: the name alone."""
    return name.encode()


def keycheck_aad(kid: str, version: int) -> bytes:
    """Associated data of a format-2 key check: its key and its revision."""
    return _encoder.encode([_KEYCHECK_LABEL, kid, version])


def key_id(key: bytes) -> str:
    """A short public name of a master key: 8 bytes of SHA-256 over a fixed label and the key, in hex.

    It lets records, key checks and error messages say *which* key they need
    without saying anything usable about it. The label keeps it distinct from
    any other hash of the same key.
    """
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[:8].hex()


def _decode(raw: bytes) -> SealedRecord:
    try:
        record = _record_decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise RecordUnreadable from exc
    if record.v == FORMAT_VERSION and (record.kid is None or record.ver is None):
        raise RecordUnreadable
    if record.v not in (FORMAT_VERSION, LEGACY_FORMAT):
        raise RecordUnreadable
    return record


def record_key_id(raw: bytes) -> str | None:
    """The ``kid`` a stored record names, ``None`` for format-1 records written before key ids.

    Reads the record's JSON only, no decryption; :class:`RecordUnreadable` when
    ``raw`` is not a record at all.
    """
    return _decode(raw).kid


def record_format(raw: bytes) -> int:
    """The format version of a stored record (JSON only); :class:`RecordUnreadable` if it is none."""
    return _decode(raw).v


class SecretCipher:
    """Seal and open records under one master key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"master key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id(key)
        """:func:`key_id` of this key, written into every record it seals."""

    def __repr__(self) -> str:
        return f"SecretCipher(<key hidden>, key_id={self.key_id!r})"

    def _seal(self, plaintext: bytes, aad: bytes, version: int, updated_at: str | None) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        record = SealedRecord(
            v=FORMAT_VERSION,
            kid=self.key_id,
            ver=version,
            nonce=base64.b64encode(nonce).decode(),
            ciphertext=base64.b64encode(self._aead.encrypt(nonce, plaintext, aad)).decode(),
            updated_at=updated_at or now_rfc3339(),
        )
        return _encoder.encode(record)

    def _decrypt(self, record: SealedRecord, aad: bytes) -> bytes:
        try:
            nonce = base64.b64decode(record.nonce, validate=True)
            ciphertext = base64.b64decode(record.ciphertext, validate=True)
            if len(nonce) != NONCE_BYTES:
                raise RecordUnreadable
            return self._aead.decrypt(nonce, ciphertext, aad)
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise RecordUnreadable from exc

    def _own(self, raw: bytes) -> SealedRecord:
        record = _decode(raw)
        if record.kid is not None and record.kid != self.key_id:
            raise KeyNotAvailable(record.kid)
        return record

    def seal_secret(self, name: str, value: str, *, version: int, updated_at: str | None = None) -> bytes:
        """The stored form of secret ``name`` holding ``value``, valid only at revision ``version``."""
        aad = secret_aad(name, self.key_id, version)
        return self._seal(_encoder.encode(_Plaintext(value=value)), aad, version, updated_at)

    def open_secret(self, name: str, raw: bytes, *, revision: int, legacy_until: int = 0) -> OpenedSecret:
        """Decrypt the record read for ``name`` at ``revision``.

        :class:`KeyNotAvailable` when it names another key, :class:`RecordReplayed`
        when it is genuine but was sealed for another revision (or is a format-1
        record above ``legacy_until``), :class:`RecordUnreadable` otherwise.
        The record is authenticated before its version is compared, so a
        replayed record is told apart from a forged one.
        """
        record = self._own(raw)
        if record.v == FORMAT_VERSION:
            assert record.kid is not None and record.ver is not None
            plaintext = self._decrypt(record, secret_aad(name, record.kid, record.ver))
            if record.ver != revision:
                raise RecordReplayed(record.ver, revision)
        else:
            plaintext = self._decrypt(record, legacy_secret_aad(name))
            if revision > legacy_until:
                raise RecordReplayed(None, revision)
        try:
            value = _plaintext_decoder.decode(plaintext).value
        except msgspec.MsgspecError as exc:
            raise RecordUnreadable from exc
        return OpenedSecret(value=value, updated_at=record.updated_at, legacy=record.v == LEGACY_FORMAT)

    def keycheck(self, *, version: int, legacy_until: int) -> bytes:
        """A key check for this key, valid only at revision ``version``, carrying the legacy horizon."""
        plaintext = _encoder.encode(_KeyCheckPlaintext(check=_KEYCHECK_V2, legacy_until=legacy_until))
        return self._seal(plaintext, keycheck_aad(self.key_id, version), version, None)

    def open_keycheck(self, raw: bytes, *, revision: int) -> KeyCheck | None:
        """The key check read at ``revision``, if it was written with this key; ``None`` otherwise.

        :class:`RecordReplayed` when it is this key's check but was written for
        another revision (an older key check written back).
        """
        try:
            record = self._own(raw)
        except RecordUnreadable:
            return None
        if record.v == LEGACY_FORMAT:
            try:
                plaintext = self._decrypt(record, KEYCHECK_AAD)
            except RecordUnreadable:
                return None
            return KeyCheck(key_id=self.key_id, legacy_until=None) if plaintext == _KEYCHECK_PLAINTEXT else None
        assert record.kid is not None and record.ver is not None
        try:
            opened = _keycheck_decoder.decode(self._decrypt(record, keycheck_aad(record.kid, record.ver)))
        except (RecordUnreadable, msgspec.MsgspecError):
            return None
        if opened.check != _KEYCHECK_V2:
            return None
        if record.ver != revision:
            raise RecordReplayed(record.ver, revision)
        return KeyCheck(key_id=self.key_id, legacy_until=opened.legacy_until)

    def verifies(self, raw: bytes, *, revision: int) -> bool:
        """Whether a key check read at ``revision`` was written with this key (see :meth:`open_keycheck`)."""
        return self.open_keycheck(raw, revision=revision) is not None


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

    def seal_secret(self, name: str, value: str, *, version: int, updated_at: str | None = None) -> bytes:
        """The stored form of secret ``name`` at revision ``version``, always sealed with the current key."""
        return self.current.seal_secret(name, value, version=version, updated_at=updated_at)

    def open_secret(self, name: str, raw: bytes, *, revision: int, legacy_until: int = 0) -> OpenedSecret:
        """Decrypt a record with whichever held key sealed it (see :meth:`SecretCipher.open_secret`).

        :class:`KeyNotAvailable` when it names a key not held here,
        :class:`RecordReplayed` when it is not where it was written,
        :class:`RecordUnreadable` when it does not open at all.
        """
        kid = record_key_id(raw)
        if kid is not None:
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise KeyNotAvailable(kid)
            return cipher.open_secret(name, raw, revision=revision, legacy_until=legacy_until)
        for cipher in self._ciphers.values():
            try:
                return cipher.open_secret(name, raw, revision=revision, legacy_until=legacy_until)
            except RecordReplayed:
                raise
            except RecordUnreadable:
                continue
        raise RecordUnreadable

    def open_keycheck(self, raw: bytes, *, revision: int) -> KeyCheck | None:
        """The key check read at ``revision``, opened with whichever held key wrote it; ``None`` if none did.

        :class:`RecordReplayed` when a held key wrote it for another revision.
        """
        for cipher in self._ciphers.values():
            check = cipher.open_keycheck(raw, revision=revision)
            if check is not None:
                return check
        return None

    def verifying_key_id(self, raw: bytes, *, revision: int) -> str | None:
        """The id of the held key a key check was written with, ``None`` if none of them."""
        check = self.open_keycheck(raw, revision=revision)
        return check.key_id if check is not None else None
