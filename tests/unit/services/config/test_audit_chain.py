"""The audit chain without a server: canonical hashing, the secret guard, and verification of tampered chains."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from services.config.audit import (
    GENESIS_HASH,
    AuditEntry,
    canonical_bytes,
    check_details,
    decode_entry,
    encode_entry,
    entry_hash,
    is_secret_carrier,
    next_entry,
    rfc3339_utc,
    verify_chain,
)

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def build_chain(count: int) -> list[AuditEntry]:
    chain: list[AuditEntry] = []
    for i in range(count):
        chain.append(
            next_entry(
                chain[-1] if chain else None,
                actor=f"cli:user{i % 3}",
                action="apply" if i % 2 else "secret.set",
                target=f"ModelEndpoint e{i}",
                time=rfc3339_utc(T0 + timedelta(seconds=i)),
                revision=i + 1,
                details={"resources": i, "secret_name": "llm-providers/openai", "dry_run": False},
            )
        )
    return chain


def records(chain: list[AuditEntry]) -> list[tuple[int, bytes]]:
    """Stored form: entry i at stream sequence i."""
    return [(seq, encode_entry(entry)) for seq, entry in enumerate(chain, start=1)]


def with_json_field(raw: bytes, **changes: object) -> bytes:
    """The stored bytes with some fields changed and the hash left as it was."""
    doc = json.loads(raw)
    doc.update(changes)
    return json.dumps(doc).encode()


# ---------------------------------------------------------------- canonical hashing


def test_canonical_bytes_are_sorted_compact_json_with_an_empty_hash_and_the_same_every_time() -> None:
    entry = build_chain(1)[0]
    raw = canonical_bytes(entry)
    assert raw == canonical_bytes(entry) == canonical_bytes(decode_entry(encode_entry(entry)))
    doc = json.loads(raw)
    assert list(doc) == sorted(doc)
    assert list(doc["details"]) == sorted(doc["details"])
    assert doc["hash"] == ""
    assert b" " not in raw.replace(b"ModelEndpoint e0", b"")


def test_the_hash_is_sha256_of_the_canonical_bytes_as_the_module_documents() -> None:
    entry = build_chain(1)[0]
    unsealed = msgspec.structs.replace(entry, hash="")
    expected = hashlib.sha256(msgspec.json.encode(unsealed, order="sorted")).hexdigest()
    assert entry.hash == entry_hash(entry) == expected
    assert len(entry.hash) == 64


def test_details_in_a_different_insertion_order_hash_the_same() -> None:
    a = next_entry(None, actor="a", action="apply", target="t", time="x", details={"one": 1, "two": 2})
    b = next_entry(None, actor="a", action="apply", target="t", time="x", details={"two": 2, "one": 1})
    assert a.hash == b.hash


@pytest.mark.parametrize(
    "change",
    [
        {"index": 2},
        {"time": "2025-01-31T12:00:00.000001Z"},
        {"actor": "cli:mallory"},
        {"action": "delete"},
        {"target": "ModelEndpoint other"},
        {"revision": 2},
        {"revision": None},
        {"details": {}},
        {"details": {"resources": 1, "secret_name": "llm-providers/openai", "dry_run": False}},
        {"details": {"resources": 0, "secret_name": "llm-providers/openai", "dry_run": None}},
        {"prev_hash": "1" * 64},
    ],
    ids=lambda change: next(iter(change)),
)
def test_changing_any_field_changes_the_hash(change: dict[str, object]) -> None:
    entry = build_chain(1)[0]
    assert entry_hash(msgspec.structs.replace(entry, **change)) != entry.hash


def test_the_hash_field_itself_does_not_feed_the_hash() -> None:
    entry = build_chain(1)[0]
    assert entry_hash(msgspec.structs.replace(entry, hash="f" * 64)) == entry.hash


def test_entries_count_from_one_and_link_to_the_previous_hash() -> None:
    chain = build_chain(3)
    assert [e.index for e in chain] == [1, 2, 3]
    assert chain[0].prev_hash == GENESIS_HASH == "0" * 64
    assert chain[1].prev_hash == chain[0].hash
    assert chain[2].prev_hash == chain[1].hash


def test_times_are_rfc3339_utc_whatever_the_input_zone() -> None:
    assert rfc3339_utc(datetime(2025, 1, 31, 13, 0, tzinfo=timezone(timedelta(hours=1)))) == (
        "2025-01-31T12:00:00.000000Z"
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        rfc3339_utc(datetime(2025, 1, 31, 12, 0))


# ---------------------------------------------------------------- never a secret value


@pytest.mark.parametrize(
    "key",
    [
        "value", "secret", "token", "api_key", "apikey", "apiKey", "x_api_key", "X-Api-Key", "password",
        "db_password", "key", "Authorization", "credential", "credentials", "client_secret", "clientSecret",
        "access_token", "bearer", "privateKey", "secret_value", "new_value",
    ],
)  # fmt: skip
def test_a_details_key_that_carries_a_secret_is_refused(key: str) -> None:
    assert is_secret_carrier(key)
    with pytest.raises(ValueError, match=f"details.{key}: looks like a secret value"):
        check_details({key: "sk-not-really"})
    with pytest.raises(ValueError):
        next_entry(None, actor="a", action="secret.set", target="t", time="x", details={key: "sk"})


@pytest.mark.parametrize(
    "key", ["secret_name", "secret_ref", "key_count", "token_limit", "resources", "namespace", "monkey", "provider"]
)
def test_a_details_key_that_names_metadata_is_accepted(key: str) -> None:
    assert not is_secret_carrier(key)
    assert check_details({key: "llm-providers/openai"}) == {key: "llm-providers/openai"}


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"nested": {"a": 1}}, "must be a string, integer, boolean or null"),
        ({"ratio": 0.5}, "must be a string, integer, boolean or null"),
        ({"doc": "x" * 513}, "longer than 512"),
        ({f"k{i}": i for i in range(33)}, "at most 32 keys"),
    ],
    ids=["nested", "float", "long-string", "too-many-keys"],
)
def test_details_are_small_flat_metadata(details: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_details(details)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"actor": " "}, "actor: must not be empty"),
        ({"target": ""}, "target: must not be empty"),
        ({"action": "Apply!"}, "action: must be lowercase dotted words"),
        ({"revision": -1}, "revision: must be a non-negative integer"),
    ],
)
def test_invalid_fields_are_refused_naming_the_field(fields: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"actor": "a", "action": "apply", "target": "t", "time": "x", **fields}
    with pytest.raises(ValueError, match=message):
        next_entry(None, **arguments)  # type: ignore[arg-type]


# ---------------------------------------------------------------- verification


def test_an_intact_chain_verifies_and_reports_its_head() -> None:
    chain = build_chain(10)
    report = verify_chain(records(chain), last_sequence=10)
    assert report.ok and report.broken is None
    assert report.checked == 10
    assert (report.head_index, report.head_hash) == (10, chain[-1].hash)
    assert report.describe().startswith("ok: 10 entries")


def test_an_empty_log_verifies() -> None:
    report = verify_chain([], last_sequence=0)
    assert report.ok and report.checked == 0 and report.head_hash == GENESIS_HASH


def test_a_changed_field_with_the_old_hash_is_a_hash_mismatch_at_that_entry() -> None:
    stored = records(build_chain(8))
    stored[4] = (5, with_json_field(stored[4][1], actor="cli:mallory"))
    report = verify_chain(stored, last_sequence=8)
    assert not report.ok and report.broken is not None
    assert (report.broken.sequence, report.broken.index, report.broken.reason) == (5, 5, "hash mismatch")
    assert report.checked == 4
    assert report.describe() == "broken at sequence 5 (entry 5): hash mismatch; 4 entries intact before it"


def test_a_removed_entry_is_a_gap_at_its_sequence() -> None:
    stored = records(build_chain(8))
    del stored[2]
    report = verify_chain(stored, last_sequence=8)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (3, 3)
    assert report.broken.reason == "missing entry (gap at sequence 3)"
    assert report.checked == 2


def test_a_removed_first_entry_is_a_gap_at_sequence_one() -> None:
    stored = records(build_chain(3))[1:]
    report = verify_chain(stored, last_sequence=3)
    assert report.broken is not None
    assert report.broken.reason == "missing entry (gap at sequence 1)"
    assert report.checked == 0


def test_removed_newest_entries_are_a_gap_when_the_stream_says_there_were_more() -> None:
    stored = records(build_chain(8))[:6]
    report = verify_chain(stored, last_sequence=8)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (7, 7)
    assert report.broken.reason == "missing entry (gap at sequence 7)"
    assert report.checked == 6


def test_entries_swapped_in_place_break_at_the_first_of_them() -> None:
    stored = records(build_chain(6))
    (s3, r3), (s4, r4) = stored[2], stored[3]
    stored[2], stored[3] = (s3, r4), (s4, r3)
    report = verify_chain(stored, last_sequence=6)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (3, 3)
    assert report.broken.reason == "index 4 where 3 was expected"


def test_messages_delivered_out_of_stream_order_are_reported() -> None:
    stored = records(build_chain(4))
    skipped_ahead = verify_chain([stored[0], stored[2], stored[1], stored[3]], last_sequence=4)
    assert skipped_ahead.broken is not None
    assert skipped_ahead.broken.reason == "missing entry (gap at sequence 2)"
    assert skipped_ahead.checked == 1
    went_back = verify_chain([stored[0], stored[1], stored[1]], last_sequence=4)
    assert went_back.broken is not None
    assert (went_back.broken.sequence, went_back.broken.reason) == (2, "sequence 2 out of order after 2")
    assert went_back.checked == 2


def test_a_forged_entry_with_a_recomputed_hash_breaks_the_link_to_the_next_entry() -> None:
    chain = build_chain(6)
    forged = msgspec.structs.replace(chain[2], actor="cli:mallory", hash="")
    forged = msgspec.structs.replace(forged, hash=entry_hash(forged))
    stored = records(chain)
    stored[2] = (3, encode_entry(forged))
    report = verify_chain(stored, last_sequence=6)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (4, 4)
    assert report.broken.reason == "prev_hash does not match entry 3"
    assert report.checked == 3


def test_a_forged_entry_with_a_valid_hash_but_a_wrong_prev_hash_breaks_at_itself() -> None:
    chain = build_chain(6)
    forged = next_entry(chain[1], actor="cli:mallory", action="apply", target="t", time="x")
    forged = msgspec.structs.replace(forged, index=4, prev_hash="ab" * 32, hash="")
    forged = msgspec.structs.replace(forged, hash=entry_hash(forged))
    stored = records(chain)
    stored[3] = (4, encode_entry(forged))
    report = verify_chain(stored, last_sequence=6)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (4, 4)
    assert report.broken.reason == "prev_hash does not match entry 3"


def test_a_first_entry_that_does_not_start_from_genesis_is_reported() -> None:
    first = build_chain(1)[0]
    forged = msgspec.structs.replace(first, prev_hash="ab" * 32, hash="")
    forged = msgspec.structs.replace(forged, hash=entry_hash(forged))
    report = verify_chain([(1, encode_entry(forged))])
    assert report.broken is not None
    assert report.broken.reason == "prev_hash of the first entry is not the genesis hash"


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],
        lambda raw: b"",
        lambda raw: b"not json",
        lambda raw: with_json_field(raw, index="5"),
        lambda raw: with_json_field(raw, extra="smuggled"),
    ],
    ids=["truncated", "empty", "garbage", "wrong-type", "unknown-field"],
)
def test_an_undecodable_entry_is_reported_at_its_sequence(damage: object) -> None:
    stored = records(build_chain(6))
    stored[4] = (5, damage(stored[4][1]))  # type: ignore[operator]
    report = verify_chain(stored, last_sequence=6)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (5, 5)
    assert report.broken.reason.startswith("undecodable entry")
    assert report.checked == 4


def test_verification_stops_at_the_first_broken_link() -> None:
    stored = records(build_chain(8))
    stored[2] = (3, with_json_field(stored[2][1], actor="x"))
    stored[5] = (6, b"garbage")
    report = verify_chain(stored, last_sequence=8)
    assert report.broken is not None and report.broken.sequence == 3
