"""The audit chain itself: entries, canonical bytes, the HMAC seal and the secret guard.

Pure code with no I/O: :mod:`services.config.audit` stores the chain in
JetStream and :mod:`services.config.audit_verify` checks it.

Every mutation the config service makes (apply, delete, rollback, boot, secret
set or delete) is appended as one :class:`AuditEntry` to the JetStream stream
:data:`shared.subjects.AUDIT_STREAM`. Each entry is sealed with an HMAC under
the audit key (:mod:`services.config.audit_key`) and carries the seal of the
entry before it, so removing, reordering, editing or forging any entry breaks
a link that ``modelbus audit verify`` reports, and nobody without the key can
write an entry that verifies.

The chain, precisely (enough to write an independent verifier):

* ``index`` counts from 1 with no gaps; the first entry's ``prev_mac`` is
  :data:`GENESIS` (64 zeros).
* An entry's canonical bytes are ``msgspec.json.encode(entry with mac="",
  order="sorted")``: compact JSON, UTF-8, object keys sorted at every level.
* ``mac`` is the lowercase hex HMAC-SHA256 of those bytes under the audit key;
  the next entry's ``prev_mac`` is that same string. ``key_id`` is the first
  16 hex digits of HMAC-SHA256(key, ``"modelbus audit key id v1"``).
* ``revision`` is the configuration revision the mutation produced and
  ``record`` the hex SHA-256 of that revision's message in the config stream,
  so the audit log also vouches for the configuration it records.
* Entries are stored one per stream message in stream order, from stream
  sequence 1; a missing sequence is a missing entry.

**Entries from before the key** (:class:`LegacyAuditEntry`: fields ``hash``
and ``prev_hash``, ``hash`` the plain SHA-256 of the same canonical form) are
accepted only as a prefix of the chain. At start-up the config service seals
such a prefix with a keyed ``audit.seal`` entry whose ``prev_mac`` is the last
legacy ``hash``: from then on the prefix cannot change without breaking the
keyed chain. An unkeyed entry after a keyed one is a forgery.

The log never holds a secret value: callers pass names and references only,
and :func:`check_details` refuses ``details`` keys that look like they carry a
credential (``api_key``, ``token``, ``password``, ...).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec

from services.config.audit_key import AuditKey
from shared.errors import ModelbusError

log = logging.getLogger("modelbus.config.audit")

GENESIS = "0" * 64
"""``prev_mac`` of the first entry (and the anchor of a revision committed before any entry)."""
GENESIS_HASH = GENESIS
"""The same, under its pre-HMAC name."""

DetailValue = str | int | bool | None

MAX_DETAILS = 32
"""Most keys in :attr:`AuditEntry.details`: it is small metadata, not a document."""
MAX_TEXT = 512
"""Longest ``actor``, ``target`` or string detail value, in characters."""

# A detail whose last word is one of these names a credential, not metadata.
_SECRET_WORDS = frozenset(
    {
        "value", "values", "secret", "secrets", "token", "tokens", "key", "keys", "apikey", "password",
        "passwd", "pwd", "passphrase", "authorization", "auth", "credential", "credentials", "bearer",
        "cookie", "signature", "privatekey",
    }
)  # fmt: skip
# Distinctive enough to refuse even when glued to another word ("clientsecret", "xapikey").
_SECRET_SUFFIXES = ("apikey", "secret", "token", "password", "passwd", "credential", "credentials", "privatekey")
_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
_DIGEST = re.compile(r"[0-9a-f]{64}")


class AuditError(ModelbusError):
    """The audit log could not be read or appended to (503, worth retrying).

    It belongs in the error tree of :mod:`shared.errors`; it is here until
    something outside the config service needs to catch it.
    """

    status = 503
    type = "service_unavailable"
    default_code = "audit_unavailable"
    default_retryable = True


class AuditChainBroken(AuditError):
    """The newest entry is missing or unreadable, so nothing can be chained to it (500)."""

    status = 500
    type = "internal_error"
    default_code = "audit_chain_broken"
    default_retryable = False


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One link of the audit chain: who did what, when, and at which revision.

    Unknown fields make an entry undecodable, so nothing can ride along
    outside the seal.
    """

    index: int
    """Position in the chain, from 1, without gaps."""
    time: str
    """When, RFC 3339 in UTC with microseconds: ``2025-01-31T12:00:00.000000Z``."""
    actor: str
    """Who: ``boot``, ``cli:alice``, ``http:admin``, ..."""
    action: str
    """What kind of mutation: ``apply``, ``delete``, ``rollback``, ``boot``, ``secret.set``, ``secret.delete``,
    ``audit.seal``."""
    target: str
    """What it touched: ``ModelEndpoint openai``, ``secret llm-providers/openai``, ``3 resources``."""
    revision: int | None = None
    """Configuration revision the mutation produced, if it produced one."""
    record: str | None = None
    """Hex SHA-256 of that revision's config-stream message (with :attr:`revision`)."""
    details: dict[str, DetailValue] = {}
    """Small metadata (names, counts, flags); never a secret value."""
    key_id: str
    """Fingerprint of the key that sealed the entry (:attr:`services.config.audit_key.AuditKey.key_id`)."""
    prev_mac: str
    """:attr:`mac` of the previous entry (``hash`` of a legacy one); :data:`GENESIS` for the first."""
    mac: str
    """Hex HMAC-SHA256 of :func:`canonical_bytes` of this entry under the audit key."""

    @property
    def link(self) -> str:
        """What the next entry's ``prev_mac`` must be."""
        return self.mac


class LegacyAuditEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An entry written before the chain was keyed (plain SHA-256); read, never written."""

    index: int
    time: str
    actor: str
    action: str
    target: str
    revision: int | None = None
    details: dict[str, DetailValue] = {}
    prev_hash: str
    hash: str

    @property
    def link(self) -> str:
        """What the next entry's ``prev_mac`` (or ``prev_hash``) must be."""
        return self.hash


AnyEntry = AuditEntry | LegacyAuditEntry

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(AuditEntry)
_legacy_decoder = msgspec.json.Decoder(LegacyAuditEntry)


def canonical_bytes(entry: AnyEntry) -> bytes:
    """The bytes an entry's seal covers: sorted-key JSON of every field, with the seal empty."""
    if isinstance(entry, LegacyAuditEntry):
        return _encoder.encode(msgspec.structs.replace(entry, hash=""))
    return _encoder.encode(msgspec.structs.replace(entry, mac=""))


def entry_mac(key: AuditKey, entry: AuditEntry) -> str:
    """Hex HMAC-SHA256 of :func:`canonical_bytes` under ``key``; what :attr:`AuditEntry.mac` must be."""
    return key.mac(canonical_bytes(entry))


def legacy_hash(entry: LegacyAuditEntry) -> str:
    """Hex SHA-256 of :func:`canonical_bytes`; what a legacy entry's ``hash`` must be."""
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def encode_entry(entry: AnyEntry) -> bytes:
    """The stored form of an entry (its canonical JSON, seal included)."""
    return _encoder.encode(entry)


def decode_entry(raw: bytes) -> AnyEntry:
    """Parse a stored entry, keyed or legacy; raises :class:`msgspec.DecodeError` or
    :class:`msgspec.ValidationError` (the keyed format's complaint) when it is neither."""
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as keyed_error:
        try:
            return _legacy_decoder.decode(raw)
        except msgspec.ValidationError:
            raise keyed_error from None


def rfc3339_utc(moment: datetime) -> str:
    """``moment`` as RFC 3339 UTC with microseconds; naive datetimes are refused."""
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_secret_carrier(key: str) -> bool:
    """Whether a ``details`` key reads as if its value were a credential.

    Case, ``-``/``_`` and camelCase are ignored: ``token``, ``X-Api-Key``,
    ``clientSecret`` and ``db_password`` are refused; ``secret_name``,
    ``key_count`` and ``token_limit`` name metadata and pass.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", key).lower()) if w]
    if not words:
        return False
    return words[-1] in _SECRET_WORDS or "".join(words).endswith(_SECRET_SUFFIXES)


def check_details(details: Mapping[str, object] | None) -> dict[str, DetailValue]:
    """Validate ``details`` and return a plain copy; raises :class:`ValueError`.

    Callers pass names and references (``secret="llm-providers/openai"`` is
    wrong, ``secret_name=...`` is right), never values: keys that look like
    secret carriers are refused outright rather than redacted, so a mistake
    shows up in tests instead of in the log.
    """
    if not details:
        return {}
    if len(details) > MAX_DETAILS:
        raise ValueError(f"details: at most {MAX_DETAILS} keys, got {len(details)}")
    clean: dict[str, DetailValue] = {}
    for key, value in details.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"details: keys must be non-empty strings, got {key!r}")
        if is_secret_carrier(key):
            raise ValueError(f"details.{key}: looks like a secret value; the audit log records names, never values")
        if value is not None and not isinstance(value, str | int | bool):
            raise ValueError(f"details.{key}: must be a string, integer, boolean or null, not {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ValueError(f"details.{key}: longer than {MAX_TEXT} characters")
        clean[key] = value
    return clean


def check_fields(
    *, actor: str, action: str, target: str, revision: int | None, details: Mapping[str, object] | None
) -> dict[str, DetailValue]:
    """Validate an entry's caller-supplied fields; returns the checked details.

    Raises :class:`ValueError` naming the field at fault.
    """
    for field, text in (("actor", actor), ("target", target)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{field}: must not be empty")
        if len(text) > MAX_TEXT:
            raise ValueError(f"{field}: longer than {MAX_TEXT} characters")
    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise ValueError(f"action: must be lowercase dotted words such as 'apply' or 'secret.set', got {action!r}")
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int) or revision < 0):
        raise ValueError(f"revision: must be a non-negative integer or None, got {revision!r}")
    return check_details(details)


def next_entry(
    previous: AnyEntry | None,
    *,
    key: AuditKey,
    actor: str,
    action: str,
    target: str,
    time: str,
    revision: int | None = None,
    record: str | None = None,
    details: Mapping[str, object] | None = None,
) -> AuditEntry:
    """The entry that follows ``previous`` (or starts the chain), sealed with ``key``.

    Validates the fields like :func:`check_fields`; ``record`` must be a hex
    SHA-256 and comes only with a ``revision``.
    """
    clean = check_fields(actor=actor, action=action, target=target, revision=revision, details=details)
    if record is not None and (revision is None or not _DIGEST.fullmatch(record)):
        raise ValueError("record: a lowercase hex SHA-256, and only with a revision")
    unsealed = AuditEntry(
        index=previous.index + 1 if previous else 1,
        time=time,
        actor=actor,
        action=action,
        target=target,
        revision=revision,
        record=record,
        details=clean,
        key_id=key.key_id,
        prev_mac=previous.link if previous else GENESIS,
        mac="",
    )
    return msgspec.structs.replace(unsealed, mac=entry_mac(key, unsealed))
