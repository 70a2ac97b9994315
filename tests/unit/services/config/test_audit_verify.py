"""The config log checked against the audit chain (anchors), and the audit stream's age; no server."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from services.config.audit_chain import GENESIS, AuditEntry, encode_entry, next_entry
from services.config.audit_key import AuditKey
from services.config.audit_verify import AnchorChecker, BrokenLink, ChainVerifier, RecordFacts, check_stream_age
from shared.admin import AuditAnchor

KEY = AuditKey(bytes(range(32)))
T0 = dt.datetime(2025, 1, 31, 12, 0, tzinfo=dt.UTC)


def digest(revision: int) -> str:
    return hashlib.sha256(f"config record {revision}".encode()).hexdigest()


class History:
    """What the config service writes: per revision, the anchor in the record, then the entry after it."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []
        self.records: list[RecordFacts] = []

    def _append(self, action: str, revision: int | None = None) -> None:
        self.entries.append(
            next_entry(
                self.entries[-1] if self.entries else None,
                key=KEY,
                actor="cli:alice",
                action=action,
                target="t",
                time=f"2025-01-31T12:00:{len(self.entries):02d}.000000Z",
                revision=revision,
                record=digest(revision) if revision is not None else None,
            )
        )

    def revision(self, *, anchored: bool = True) -> None:
        revision = len(self.records) + 1
        head = self.entries[-1] if self.entries else None
        anchor = AuditAnchor(index=head.index, mac=head.mac) if head else AuditAnchor(index=0, mac=GENESIS)
        self.records.append(
            RecordFacts(revision=revision, anchor=anchor if anchored else None, digest=digest(revision))
        )
        self._append("apply", revision)

    def secret(self) -> None:
        self._append("secret.set")

    def check(self, entries: list[AuditEntry] | None = None, records: list[RecordFacts] | None = None) -> AnchorChecker:
        chain = ChainVerifier(KEY)
        for seq, entry in enumerate(self.entries if entries is None else entries, start=1):
            assert chain.feed(seq, encode_entry(entry))
        assert chain.finish().ok
        checker = AnchorChecker(chain)
        facts = self.records if records is None else records
        for record in facts:
            if not checker.feed(record):
                break
        checker.finish(facts[-1].revision if facts else 0)
        return checker


@pytest.fixture
def history() -> History:
    h = History()
    for _ in range(3):
        h.revision()
        h.secret()
    h.revision()
    return h  # entries: r1 s r2 s r3 s r4 (7 entries); records 1..4


def broken(checker: AnchorChecker) -> BrokenLink:
    assert checker.broken is not None, "expected a break"
    return checker.broken


def test_an_intact_history_passes_every_anchor(history: History) -> None:
    checker = history.check()
    assert checker.broken is None
    assert checker.checked == 4


def test_entries_removed_from_the_end_are_found_by_the_newest_revision(history: History) -> None:
    history.secret()
    history.revision()  # r5 anchored after entry 8, its own entry is 9
    link = broken(history.check(entries=history.entries[:7]))
    assert link.revision == 5
    assert "committed after audit entry 8, but the audit log ends at entry 7" in link.reason
    assert link.sequence == 8


def test_a_deleted_audit_log_fails_at_the_first_revision(history: History) -> None:
    link = broken(history.check(entries=[]))  # revision 1 was anchored at entry 0, an empty log
    assert (link.revision, link.reason, link.sequence) == (1, "config revision 1 has no audit entry", 1)


def test_a_deleted_audit_log_fails_at_a_later_revision_once_older_ones_fell_out_of_history(history: History) -> None:
    link = broken(history.check(entries=[], records=history.records[1:]))
    assert link.revision == 2 and link.sequence == 1
    assert "committed after audit entry 2, but the audit log is empty" in link.reason


def test_a_revision_without_its_audit_entry_is_reported(history: History) -> None:
    history.records.append(
        RecordFacts(revision=5, anchor=AuditAnchor(index=7, mac=history.entries[-1].mac), digest="x")
    )
    link = broken(history.check())
    assert (link.revision, link.reason, link.sequence) == (5, "config revision 5 has no audit entry", 8)


def test_a_rebuilt_audit_log_with_other_seals_breaks_the_anchor() -> None:
    original, rebuilt = History(), History()
    for h in (original, rebuilt):
        h.revision()
        h.secret()
        h.revision()
    rebuilt.entries[1] = next_entry(rebuilt.entries[0], key=KEY, actor="x", action="secret.set", target="t", time="y")
    rebuilt.entries[2] = next_entry(
        rebuilt.entries[1], key=KEY, actor="x", action="apply", target="t", time="y", revision=2, record=digest(2)
    )
    link = broken(original.check(entries=rebuilt.entries))
    assert link.revision == 2 and "the audit log was rebuilt" in link.reason


def test_a_rewritten_config_record_no_longer_matches_its_audit_entry(history: History) -> None:
    records = list(history.records)
    records[2] = RecordFacts(revision=3, anchor=records[2].anchor, digest=digest(99))
    link = broken(history.check(records=records))
    assert link.revision == 3 and "differs from what audit entry 5 recorded" in link.reason


def test_an_audit_entry_for_a_revision_the_config_log_lost_is_reported(history: History) -> None:
    link = broken(history.check(records=history.records[:2]))
    assert link.revision == 3
    assert "audit entry 5 records config revision 3, but the config log ends at revision 2" in link.reason


def test_a_config_log_deleted_entirely_is_reported(history: History) -> None:
    link = broken(history.check(records=[]))
    assert link.revision == 1 and "the config log is empty" in link.reason


def test_revisions_from_before_anchors_are_accepted_only_before_the_first_anchored_one() -> None:
    h = History()
    h.revision(anchored=False)
    h.revision(anchored=False)
    h.revision()
    assert h.check().broken is None
    h.revision(anchored=False)
    link = broken(h.check())
    assert (link.revision, link.reason) == (4, "config revision 4 carries no audit anchor")


def test_anchors_going_backwards_mean_a_rewritten_config_log(history: History) -> None:
    records = list(history.records)
    records[3] = RecordFacts(revision=4, anchor=records[1].anchor, digest=records[3].digest)
    link = broken(history.check(records=records))
    assert link.revision == 4 and "before the previous revision's anchor" in link.reason


def test_a_stream_created_long_after_its_first_entry_was_rebuilt() -> None:
    first = "2025-01-31T12:00:00.000000Z"
    assert check_stream_age(T0 - dt.timedelta(seconds=1), first) is None
    assert check_stream_age(T0 + dt.timedelta(seconds=60), first) is None  # clock skew
    link = check_stream_age(T0 + dt.timedelta(hours=2), first)
    assert link is not None and "deleted and rebuilt" in link.reason
    assert check_stream_age(None, first) is None and check_stream_age(T0, None) is None
