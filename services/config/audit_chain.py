"""The audit chain itself: entries, canonical hashing, the secret guard, verification.

Pure code with no I/O; :mod:`services.config.audit` stores the chain in JetStream.
The hash-chained audit log of configuration and secret changes.

Every mutation the config service makes (apply, delete, rollback, boot, secret
set or delete) is appended as one :class:`AuditEntry` to the JetStream stream
:data:`shared.subjects.AUDIT_STREAM`. Each entry carries the hash of the entry
before it, so removing, reordering or editing any entry breaks a link that
:meth:`AuditLog.verify` (``modelbus audit verify``) reports.

The chain, precisely (enough to write an independent verifier):

* ``index`` counts from 1 with no gaps; the first entry's ``prev_hash`` is
  :data:`GENESIS_HASH` (64 zeros).
* An entry's canonical bytes are ``msgspec.json.encode(entry with hash="",
  order="sorted")``: compact JSON, UTF-8, object keys sorted at every level.
* ``hash`` is the lowercase hex SHA-256 of those bytes; the next entry's
  ``prev_hash`` is that same string.
* Entries are stored one per stream message in stream order, from stream
  sequence 1; a missing sequence is a missing entry.

The log never holds a secret value: callers pass names and references only,
and :func:`check_details` refuses ``details`` keys that look like they carry a
credential (``api_key``, ``token``, ``password``, ...).

Limits of what the chain proves: someone who can rewrite the whole stream can
build a new valid chain, and dropping the newest entries is visible only as a
gap up to the stream's last sequence (JetStream keeps that after deletes).
Anchor :attr:`VerifyReport.head_hash` elsewhere for more. The stream this
module creates also refuses message deletes and purges, which no stream update
can undo, so on it a gap means someone edited the files on disk.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import msgspec

from shared.errors import ModelbusError

log = logging.getLogger("modelbus.config.audit")

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry."""

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
    outside the hash.
    """

    index: int
    """Position in the chain, from 1, without gaps."""
    time: str
    """When, RFC 3339 in UTC with microseconds: ``2025-01-31T12:00:00.000000Z``."""
    actor: str
    """Who: ``boot``, ``cli:alice``, ``http:admin``, ..."""
    action: str
    """What kind of mutation: ``apply``, ``delete``, ``rollback``, ``boot``, ``secret.set``, ``secret.delete``."""
    target: str
    """What it touched: ``ModelEndpoint openai``, ``secret llm-providers/openai``, ``3 resources``."""
    revision: int | None = None
    """Configuration revision the mutation produced, if it produced one."""
    details: dict[str, DetailValue] = {}
    """Small metadata (names, counts, flags); never a secret value."""
    prev_hash: str
    """:attr:`hash` of the previous entry; :data:`GENESIS_HASH` for the first."""
    hash: str
    """Hex SHA-256 of :func:`canonical_bytes` of this entry."""


class BrokenLink(msgspec.Struct, frozen=True, kw_only=True):
    """Where the chain first stops holding, and why."""

    sequence: int
    """Stream sequence of the offending message (for a gap, the first missing one)."""
    index: int
    """Chain index expected at that place."""
    reason: str
    """``hash mismatch``, ``prev_hash does not match entry 4``, ``missing entry (gap at sequence 5)``, ..."""


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of walking the chain from its first entry."""

    ok: bool
    """True when every entry up to the stream's last sequence is intact and linked."""
    checked: int
    """Entries found intact before the first broken link (all of them when ``ok``)."""
    head_index: int = 0
    """Index of the last intact entry; 0 for an empty log."""
    head_hash: str = GENESIS_HASH
    """Hash of the last intact entry: record it elsewhere to detect a rewritten log later."""
    broken: BrokenLink | None = None
    """The first broken link, when not ``ok``."""

    def describe(self) -> str:
        """One line for people: what ``modelbus audit verify`` prints."""
        if self.broken is None:
            return f"ok: {self.checked} entries, head {self.head_hash[:12]}"
        link = self.broken
        return (
            f"broken at sequence {link.sequence} (entry {link.index}): {link.reason}; "
            f"{self.checked} entries intact before it"
        )


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(AuditEntry)


def canonical_bytes(entry: AuditEntry) -> bytes:
    """The bytes an entry's hash covers: sorted-key JSON of every field, with ``hash`` empty."""
    return _encoder.encode(msgspec.structs.replace(entry, hash=""))


def entry_hash(entry: AuditEntry) -> str:
    """Hex SHA-256 of :func:`canonical_bytes`; what :attr:`AuditEntry.hash` must be."""
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def encode_entry(entry: AuditEntry) -> bytes:
    """The stored form of an entry (its canonical JSON, including the hash)."""
    return _encoder.encode(entry)


def decode_entry(raw: bytes) -> AuditEntry:
    """Parse a stored entry; raises :class:`msgspec.DecodeError` or :class:`msgspec.ValidationError`."""
    return _decoder.decode(raw)


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
    previous: AuditEntry | None,
    *,
    actor: str,
    action: str,
    target: str,
    time: str,
    revision: int | None = None,
    details: Mapping[str, object] | None = None,
) -> AuditEntry:
    """The entry that follows ``previous`` (or starts the chain), hash included.

    Validates the fields like :func:`check_fields`.
    """
    unsealed = AuditEntry(
        index=previous.index + 1 if previous else 1,
        time=time,
        actor=actor,
        action=action,
        target=target,
        revision=revision,
        details=check_fields(actor=actor, action=action, target=target, revision=revision, details=details),
        prev_hash=previous.hash if previous else GENESIS_HASH,
        hash="",
    )
    return msgspec.structs.replace(unsealed, hash=entry_hash(unsealed))


class ChainVerifier:
    """Checks entries one by one, in stream order, and remembers the first broken link.

    Feed it ``(stream sequence, raw bytes)`` pairs; :meth:`feed` returns False
    once the chain is broken, so a reader can stop early. :func:`verify_chain`
    is the one-shot form.
    """

    def __init__(self, *, first_sequence: int = 1) -> None:
        self._expected_sequence = first_sequence
        self._last_sequence = first_sequence - 1
        self._head: AuditEntry | None = None
        self._checked = 0
        self.broken: BrokenLink | None = None

    @property
    def _expected_index(self) -> int:
        return self._head.index + 1 if self._head else 1

    def _break(self, sequence: int, reason: str) -> bool:
        self.broken = BrokenLink(sequence=sequence, index=self._expected_index, reason=reason)
        return False

    def feed(self, sequence: int, raw: bytes) -> bool:
        """Check the message at ``sequence``; False when the chain is (already) broken."""
        if self.broken is not None:
            return False
        if sequence <= self._last_sequence:
            return self._break(sequence, f"sequence {sequence} out of order after {self._last_sequence}")
        if sequence > self._expected_sequence:
            return self._break(self._expected_sequence, f"missing entry (gap at sequence {self._expected_sequence})")
        self._last_sequence = sequence
        self._expected_sequence = sequence + 1
        try:
            entry = decode_entry(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._break(sequence, f"undecodable entry: {exc}")
        if entry_hash(entry) != entry.hash:
            return self._break(sequence, "hash mismatch")
        if entry.index != self._expected_index:
            return self._break(sequence, f"index {entry.index} where {self._expected_index} was expected")
        expected_prev = self._head.hash if self._head else GENESIS_HASH
        if entry.prev_hash != expected_prev:
            if self._head is None:
                return self._break(sequence, "prev_hash of the first entry is not the genesis hash")
            return self._break(sequence, f"prev_hash does not match entry {self._head.index}")
        self._head = entry
        self._checked += 1
        return True

    def finish(self, last_sequence: int | None = None) -> VerifyReport:
        """The report; ``last_sequence`` (the stream's) exposes entries missing at the end."""
        if self.broken is None and last_sequence is not None and self._expected_sequence <= last_sequence:
            self._break(self._expected_sequence, f"missing entry (gap at sequence {self._expected_sequence})")
        return VerifyReport(
            ok=self.broken is None,
            checked=self._checked,
            head_index=self._head.index if self._head else 0,
            head_hash=self._head.hash if self._head else GENESIS_HASH,
            broken=self.broken,
        )


def verify_chain(
    records: Iterable[tuple[int, bytes]], *, first_sequence: int = 1, last_sequence: int | None = None
) -> VerifyReport:
    """Verify ``(stream sequence, raw bytes)`` pairs in stream order; pure, no I/O.

    Checks, per entry and in this order: no sequence gap, decodable, hash
    matches the content, dense index, ``prev_hash`` equals the previous hash.
    Stops at the first broken link.
    """
    verifier = ChainVerifier(first_sequence=first_sequence)
    for sequence, raw in records:
        if not verifier.feed(sequence, raw):
            break
    return verifier.finish(last_sequence)
