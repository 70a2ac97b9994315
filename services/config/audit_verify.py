"""Verifying the audit chain, and the config log against it; pure, no I/O.

Three checks, each stopping at the first broken link:

1. **The chain** (:class:`ChainVerifier`): every stream sequence from 1 to the
   stream's last is present, decodes, carries a valid seal under this
   service's key, has the next index, and links to the previous entry.
2. **The anchors** (:class:`AnchorChecker`): every configuration revision
   records the audit head it was committed after (:class:`shared.admin.AuditAnchor`).
   The chain must still hold that entry with that seal (otherwise entries
   were removed from its end, or the stream was deleted), and an entry after
   it must record the revision and the digest of its message in the config
   stream (otherwise the revision was never audited, or was rewritten).
   Conversely an entry naming a revision beyond the config log's last one
   means the config log lost revisions.
3. **The stream's age** (:func:`check_stream_age`): an audit stream created
   after its own first entry was deleted and rebuilt, which could have
   dropped entries after the newest revision (the one place the anchors do
   not reach).

Revisions stored before anchors existed (no ``audit`` field) are accepted
only before the first anchored one, like legacy entries before the first
keyed one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import msgspec

from services.config.audit_chain import GENESIS, AuditEntry, LegacyAuditEntry, decode_entry, entry_mac, legacy_hash
from services.config.audit_key import AuditKey
from shared.admin import AuditAnchor

STREAM_AGE_TOLERANCE_S = 300.0
"""Clock difference allowed between the config service (entry times) and nats-server (stream creation)."""


class BrokenLink(msgspec.Struct, frozen=True, kw_only=True):
    """Where the chain (or the config log against it) first stops holding, and why."""

    sequence: int
    """Audit stream sequence of the offending message (for a gap, the first missing one)."""
    index: int
    """Chain index expected at that place."""
    reason: str
    """``MAC mismatch ...``, ``prev_mac does not match entry 4``, ``missing entry (gap at sequence 5)``, ..."""
    revision: int | None = None
    """The configuration revision at fault, for a break found by the anchors."""


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of walking the chain from its first entry (and the config log against it)."""

    ok: bool
    """True when every entry up to the stream's last sequence is intact and linked, and every anchor holds."""
    checked: int
    """Entries found intact before the first broken link (all of them when ``ok``)."""
    legacy: int = 0
    """How many of those are pre-HMAC entries (a sealed prefix)."""
    revisions: int = 0
    """Configuration revisions checked against the chain."""
    head_index: int = 0
    """Index of the last intact entry; 0 for an empty log."""
    head_mac: str = GENESIS
    """Seal of the last intact entry."""
    broken: BrokenLink | None = None
    """The first broken link, when not ``ok``."""

    def describe(self) -> str:
        """One line for people."""
        if self.broken is None:
            legacy = f" ({self.legacy} pre-HMAC)" if self.legacy else ""
            return f"ok: {self.checked} entries{legacy}, {self.revisions} revisions, head {self.head_mac[:12]}"
        link = self.broken
        return (
            f"broken at sequence {link.sequence} (entry {link.index}): {link.reason}; "
            f"{self.checked} entries intact before it"
        )


class Audited(msgspec.Struct, frozen=True):
    """Which entry recorded a revision, and the config-stream digest it recorded."""

    index: int
    record: str | None


class ChainVerifier:
    """Checks entries one by one, in stream order, and remembers the first broken link.

    Feed it ``(stream sequence, raw bytes)`` pairs; :meth:`feed` returns False
    once the chain is broken, so a reader can stop early. It keeps what the
    anchor check needs: each entry's seal by index and each audited revision.
    """

    def __init__(self, key: AuditKey, *, first_sequence: int = 1) -> None:
        self._key = key
        self._expected_sequence = first_sequence
        self._last_sequence = first_sequence - 1
        self._head: AuditEntry | LegacyAuditEntry | None = None
        self._checked = 0
        self._legacy = 0
        self.links: dict[int, str] = {}
        """Seal (``mac``, or a legacy ``hash``) of every intact entry, by index."""
        self.audited: dict[int, list[Audited]] = {}
        """The intact entries recording each revision, by revision (normally one)."""
        self.first_time: str | None = None
        """Time of the first entry, for :func:`check_stream_age`."""
        self.broken: BrokenLink | None = None

    @property
    def _expected_index(self) -> int:
        return self._head.index + 1 if self._head else 1

    @property
    def head_index(self) -> int:
        """Index of the last intact entry (0 when none)."""
        return self._head.index if self._head else 0

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
        if isinstance(entry, LegacyAuditEntry):
            if self._legacy != self._checked:
                return self._break(sequence, "unkeyed (pre-HMAC) entry after keyed entries: forged")
            if legacy_hash(entry) != entry.hash:
                return self._break(sequence, "hash mismatch (pre-HMAC entry)")
            prev = entry.prev_hash
        else:
            if entry.key_id != self._key.key_id:
                return self._break(
                    sequence,
                    f"sealed with another audit key (key id {entry.key_id[:16]}; this service holds "
                    f"{self._key.key_id}): forged, or the key was replaced",
                )
            if entry_mac(self._key, entry) != entry.mac:
                return self._break(sequence, "MAC mismatch: the entry was changed or forged without the audit key")
            prev = entry.prev_mac
        if entry.index != self._expected_index:
            return self._break(sequence, f"index {entry.index} where {self._expected_index} was expected")
        expected_prev = self._head.link if self._head else GENESIS
        if prev != expected_prev:
            if self._head is None:
                return self._break(sequence, "the first entry does not start from the genesis value")
            return self._break(sequence, f"prev_mac does not match entry {self._head.index}")
        self._head = entry
        self._checked += 1
        self._legacy += isinstance(entry, LegacyAuditEntry)
        self.links[entry.index] = entry.link
        if self.first_time is None:
            self.first_time = entry.time
        if entry.revision is not None:
            record = entry.record if isinstance(entry, AuditEntry) else None
            self.audited.setdefault(entry.revision, []).append(Audited(entry.index, record))
        return True

    def finish(self, last_sequence: int | None = None) -> VerifyReport:
        """The report; ``last_sequence`` (the stream's) exposes entries missing at the end."""
        if self.broken is None and last_sequence is not None and self._expected_sequence <= last_sequence:
            self._break(self._expected_sequence, f"missing entry (gap at sequence {self._expected_sequence})")
        return VerifyReport(
            ok=self.broken is None,
            checked=self._checked,
            legacy=self._legacy,
            head_index=self.head_index,
            head_mac=self._head.link if self._head else GENESIS,
            broken=self.broken,
        )


def verify_chain(
    records: Iterable[tuple[int, bytes]], key: AuditKey, *, first_sequence: int = 1, last_sequence: int | None = None
) -> VerifyReport:
    """Verify ``(stream sequence, raw bytes)`` pairs in stream order (check 1 only)."""
    verifier = ChainVerifier(key, first_sequence=first_sequence)
    for sequence, raw in records:
        if not verifier.feed(sequence, raw):
            break
    return verifier.finish(last_sequence)


class RecordFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the anchor check needs of one config-stream message."""

    revision: int
    anchor: AuditAnchor | None
    digest: str
    """Hex SHA-256 of the stored message."""


class AnchorChecker:
    """Check 2: config revisions, oldest first, against an intact chain."""

    def __init__(self, chain: ChainVerifier) -> None:
        self._chain = chain
        self._previous: AuditAnchor | None = None
        self.checked = 0
        self.broken: BrokenLink | None = None

    def _break(self, index: int, revision: int, reason: str) -> bool:
        # The sequence of an entry is its index in an intact chain.
        self.broken = BrokenLink(sequence=index, index=index, reason=reason, revision=revision)
        return False

    def feed(self, record: RecordFacts) -> bool:
        """Check one revision; False once something is broken."""
        if self.broken is not None:
            return False
        revision, anchor, chain = record.revision, record.anchor, self._chain
        if anchor is None:
            if self._previous is not None:
                return self._break(
                    self._previous.index + 1, revision, f"config revision {revision} carries no audit anchor"
                )
            self.checked += 1
            return True  # stored before anchors existed
        head = chain.head_index
        if anchor.index > head:
            where = "the audit log is empty" if head == 0 else f"the audit log ends at entry {head}"
            return self._break(
                head + 1,
                revision,
                f"config revision {revision} was committed after audit entry {anchor.index}, but {where}: "
                "entries were removed from its end, or the audit stream was deleted",
            )
        held = chain.links.get(anchor.index, GENESIS) if anchor.index else GENESIS
        if held != anchor.mac:
            return self._break(
                anchor.index,
                revision,
                f"config revision {revision} was committed after audit entry {anchor.index} sealed "
                f"{anchor.mac[:12]}, but that entry is sealed {held[:12]}: the audit log was rebuilt",
            )
        if self._previous is not None and anchor.index < self._previous.index:
            return self._break(
                anchor.index,
                revision,
                f"config revision {revision} is anchored at audit entry {anchor.index}, before the previous "
                f"revision's anchor (entry {self._previous.index}): the config log was rewritten",
            )
        audited = chain.audited.get(revision, [])
        # Every entry naming this revision must name this record: an older one
        # recording other content means the config log was rebuilt under it.
        for entry in audited:
            if entry.record is not None and entry.record != record.digest:
                return self._break(
                    entry.index,
                    revision,
                    f"config revision {revision} differs from what audit entry {entry.index} recorded: "
                    "the config log was rewritten",
                )
        if not any(entry.index > anchor.index for entry in audited):
            return self._break(anchor.index + 1, revision, f"config revision {revision} has no audit entry")
        self._previous = anchor
        self.checked += 1
        return True

    def finish(self, config_last: int) -> BrokenLink | None:
        """After the last revision: entries must not name revisions the config log no longer has."""
        if self.broken is None:
            beyond = sorted((r, a[0].index) for r, a in self._chain.audited.items() if r > config_last)
            if beyond:
                revision, index = beyond[0]
                ends = f"ends at revision {config_last}" if config_last else "is empty"
                self._break(
                    index,
                    revision,
                    f"audit entry {index} records config revision {revision}, but the config log {ends}: "
                    "revisions were removed, or the config stream was deleted",
                )
        return self.broken


def check_stream_age(
    created: dt.datetime | None, first_time: str | None, *, tolerance_s: float = STREAM_AGE_TOLERANCE_S
) -> BrokenLink | None:
    """Check 3: a stream created after its own first entry was deleted and rebuilt."""
    if created is None or first_time is None:
        return None
    try:
        first = dt.datetime.fromisoformat(first_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    if (created - first).total_seconds() <= tolerance_s:
        return None
    return BrokenLink(
        sequence=1,
        index=1,
        reason=(
            f"the audit stream was created at {created.isoformat(timespec='seconds')}, after its first entry "
            f"({first_time}): it was deleted and rebuilt, so entries may be missing from its end"
        ),
    )
