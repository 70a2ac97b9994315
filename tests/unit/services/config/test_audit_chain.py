"""The audit chain without a server: canonical bytes, the HMAC seal, the secret guard, and verification of
tampered and forged chains."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from services.config.audit import (
    GENESIS,
    AuditEntry,
    LegacyAuditEntry,
    canonical_bytes,
    check_details,
    decode_entry,
    encode_entry,
    entry_mac,
    is_secret_carrier,
    legacy_hash,
    next_entry,
    rfc3339_utc,
)
from services.config.audit_key import AuditKey
from services.config.audit_verify import VerifyReport
from services.config.audit_verify import verify_chain as verify_with_key

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
KEY = AuditKey(bytes(range(32)))
OTHER_KEY = AuditKey(bytes(range(1, 33)))


def verify_chain(records: list[tuple[int, bytes]], **kwargs: object) -> VerifyReport:
    return verify_with_key(records, KEY, **kwargs)  # type: ignore[arg-type]


def sealed(entry: AuditEntry, key: AuditKey = KEY, **changes: object) -> AuditEntry:
    """``entry`` with ``changes``, resealed with ``key`` (what a forger holding a key would write)."""
    unsealed = msgspec.structs.replace(entry, mac="", **changes)
    return msgspec.structs.replace(unsealed, mac=entry_mac(key, unsealed))


def build_chain(count: int) -> list[AuditEntry]:
    chain: list[AuditEntry] = []
    for i in range(count):
        chain.append(
            next_entry(
                chain[-1] if chain else None,
                key=KEY,
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
    """The stored bytes with some fields changed and the seal left as it was."""
    doc = json.loads(raw)
    doc.update(changes)
    return json.dumps(doc).encode()


# ---------------------------------------------------------------- canonical bytes and the seal


def test_canonical_bytes_are_sorted_compact_json_with_an_empty_mac_and_the_same_every_time() -> None:
    entry = build_chain(1)[0]
    raw = canonical_bytes(entry)
    assert raw == canonical_bytes(entry) == canonical_bytes(decode_entry(encode_entry(entry)))
    doc = json.loads(raw)
    assert list(doc) == sorted(doc)
    assert list(doc["details"]) == sorted(doc["details"])
    assert doc["mac"] == ""
    assert b" " not in raw.replace(b"ModelEndpoint e0", b"")


def test_the_mac_is_hmac_sha256_of_the_canonical_bytes_under_the_key_as_the_module_documents() -> None:
    entry = build_chain(1)[0]
    unsealed = msgspec.structs.replace(entry, mac="")
    expected = hmac.new(KEY.key, msgspec.json.encode(unsealed, order="sorted"), hashlib.sha256).hexdigest()
    assert entry.mac == entry_mac(KEY, entry) == expected
    assert entry.key_id == KEY.key_id == hmac.new(KEY.key, b"modelbus audit key id v1", hashlib.sha256).hexdigest()[:16]
    assert entry.mac != hashlib.sha256(canonical_bytes(entry)).hexdigest()  # not a plain hash anyone can compute


def test_another_key_gives_another_mac_and_key_id() -> None:
    entry = build_chain(1)[0]
    assert entry_mac(OTHER_KEY, entry) != entry.mac
    assert OTHER_KEY.key_id != KEY.key_id
    assert "00010203" not in repr(KEY)


def test_details_in_a_different_insertion_order_seal_the_same() -> None:
    a = next_entry(None, key=KEY, actor="a", action="apply", target="t", time="x", details={"one": 1, "two": 2})
    b = next_entry(None, key=KEY, actor="a", action="apply", target="t", time="x", details={"two": 2, "one": 1})
    assert a.mac == b.mac


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
        {"record": "ab" * 32},
        {"key_id": OTHER_KEY.key_id},
        {"details": {}},
        {"details": {"resources": 1, "secret_name": "llm-providers/openai", "dry_run": False}},
        {"details": {"resources": 0, "secret_name": "llm-providers/openai", "dry_run": None}},
        {"prev_mac": "1" * 64},
    ],
    ids=lambda change: next(iter(change)),
)
def test_changing_any_field_changes_the_mac(change: dict[str, object]) -> None:
    entry = build_chain(1)[0]
    assert entry_mac(KEY, msgspec.structs.replace(entry, **change)) != entry.mac


def test_the_mac_field_itself_does_not_feed_the_mac() -> None:
    entry = build_chain(1)[0]
    assert entry_mac(KEY, msgspec.structs.replace(entry, mac="f" * 64)) == entry.mac


def test_entries_count_from_one_and_link_to_the_previous_mac() -> None:
    chain = build_chain(3)
    assert [e.index for e in chain] == [1, 2, 3]
    assert chain[0].prev_mac == GENESIS == "0" * 64
    assert chain[1].prev_mac == chain[0].mac
    assert chain[2].prev_mac == chain[1].mac


def test_a_record_digest_needs_a_revision_and_must_be_a_sha256() -> None:
    with pytest.raises(ValueError, match="record"):
        next_entry(None, key=KEY, actor="a", action="apply", target="t", time="x", record="ab" * 32)
    with pytest.raises(ValueError, match="record"):
        next_entry(None, key=KEY, actor="a", action="apply", target="t", time="x", revision=1, record="nope")
    entry = next_entry(None, key=KEY, actor="a", action="apply", target="t", time="x", revision=1, record="ab" * 32)
    assert entry.record == "ab" * 32


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
        next_entry(None, key=KEY, actor="a", action="secret.set", target="t", time="x", details={key: "sk"})


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
    arguments: dict[str, object] = {"key": KEY, "actor": "a", "action": "apply", "target": "t", "time": "x", **fields}
    with pytest.raises(ValueError, match=message):
        next_entry(None, **arguments)  # type: ignore[arg-type]


# ---------------------------------------------------------------- verification


def test_an_intact_chain_verifies_and_reports_its_head() -> None:
    chain = build_chain(10)
    report = verify_chain(records(chain), last_sequence=10)
    assert report.ok and report.broken is None
    assert report.checked == 10
    assert (report.head_index, report.head_mac) == (10, chain[-1].mac)
    assert report.describe().startswith("ok: 10 entries")


def test_an_empty_log_verifies() -> None:
    report = verify_chain([], last_sequence=0)
    assert report.ok and report.checked == 0 and report.head_mac == GENESIS


MAC_MISMATCH = "MAC mismatch: the entry was changed or forged without the audit key"


def test_a_changed_field_with_the_old_mac_is_a_mac_mismatch_at_that_entry() -> None:
    stored = records(build_chain(8))
    stored[4] = (5, with_json_field(stored[4][1], actor="cli:mallory"))
    report = verify_chain(stored, last_sequence=8)
    assert not report.ok and report.broken is not None
    assert (report.broken.sequence, report.broken.index, report.broken.reason) == (5, 5, MAC_MISMATCH)
    assert report.checked == 4
    assert report.describe() == f"broken at sequence 5 (entry 5): {MAC_MISMATCH}; 4 entries intact before it"


def test_an_appended_forgery_chained_correctly_but_sealed_with_a_plain_hash_is_refused() -> None:
    """The attack on the pre-HMAC chain: append a well-formed next entry; without the key it cannot verify."""
    chain = build_chain(4)
    forged = AuditEntry(
        index=5, time="2025-01-31T13:00:00.000000Z", actor="cli:mallory", action="apply", target="x",
        key_id=KEY.key_id, prev_mac=chain[-1].mac, mac="",
    )  # fmt: skip
    forged = msgspec.structs.replace(forged, mac=hashlib.sha256(canonical_bytes(forged)).hexdigest())
    report = verify_chain([*records(chain), (5, encode_entry(forged))], last_sequence=5)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.reason) == (5, MAC_MISMATCH)


def test_an_appended_forgery_sealed_with_another_key_names_the_key() -> None:
    chain = build_chain(4)
    forged = next_entry(chain[-1], key=OTHER_KEY, actor="cli:mallory", action="apply", target="x", time="x")
    report = verify_chain([*records(chain), (5, encode_entry(forged))], last_sequence=5)
    assert report.broken is not None and report.broken.sequence == 5
    assert report.broken.reason.startswith(f"sealed with another audit key (key id {OTHER_KEY.key_id}")
    assert report.checked == 4


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


def test_an_entry_resealed_with_the_key_breaks_the_link_to_the_next_entry() -> None:
    chain = build_chain(6)
    forged = sealed(chain[2], actor="cli:mallory")
    stored = records(chain)
    stored[2] = (3, encode_entry(forged))
    report = verify_chain(stored, last_sequence=6)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (4, 4)
    assert report.broken.reason == "prev_mac does not match entry 3"
    assert report.checked == 3


def test_an_entry_with_a_valid_mac_but_a_wrong_prev_mac_breaks_at_itself() -> None:
    chain = build_chain(6)
    forged = next_entry(chain[1], key=KEY, actor="cli:mallory", action="apply", target="t", time="x")
    forged = sealed(forged, index=4, prev_mac="ab" * 32)
    stored = records(chain)
    stored[3] = (4, encode_entry(forged))
    report = verify_chain(stored, last_sequence=6)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.index) == (4, 4)
    assert report.broken.reason == "prev_mac does not match entry 3"


def test_a_first_entry_that_does_not_start_from_genesis_is_reported() -> None:
    forged = sealed(build_chain(1)[0], prev_mac="ab" * 32)
    report = verify_chain([(1, encode_entry(forged))])
    assert report.broken is not None
    assert report.broken.reason == "the first entry does not start from the genesis value"


def test_entries_removed_from_the_start_of_a_rebuilt_stream_break_at_sequence_one() -> None:
    """A stream rebuilt without its first entries starts at sequence 1 with a later index."""
    chain = build_chain(6)
    rebuilt = [(seq, encode_entry(entry)) for seq, entry in enumerate(chain[2:], start=1)]
    report = verify_chain(rebuilt, last_sequence=4)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.reason) == (1, "index 3 where 1 was expected")


# ---------------------------------------------------------------- chains from before the key


def legacy_chain(count: int) -> list[LegacyAuditEntry]:
    """Entries as the pre-HMAC code wrote them: plain SHA-256, fields hash and prev_hash."""
    chain: list[LegacyAuditEntry] = []
    for i in range(count):
        unsealed = LegacyAuditEntry(
            index=i + 1,
            time=rfc3339_utc(T0 + timedelta(seconds=i)),
            actor="boot",
            action="apply",
            target=f"ModelEndpoint e{i}",
            revision=i + 1,
            prev_hash=chain[-1].hash if chain else GENESIS,
            hash="",
        )
        chain.append(msgspec.structs.replace(unsealed, hash=legacy_hash(unsealed)))
    return chain


def test_a_legacy_entry_decodes_as_one_and_hashes_as_the_old_code_did() -> None:
    entry = legacy_chain(1)[0]
    old_style = hashlib.sha256(msgspec.json.encode(msgspec.structs.replace(entry, hash=""), order="sorted"))
    assert entry.hash == old_style.hexdigest()
    assert isinstance(decode_entry(encode_entry(entry)), LegacyAuditEntry)


def test_a_legacy_prefix_sealed_by_a_keyed_entry_verifies_and_is_counted() -> None:
    legacy = legacy_chain(3)
    seal = next_entry(legacy[-1], key=KEY, actor="boot", action="audit.seal", target="3 pre-HMAC entries", time="x")
    stored = [*[(s, encode_entry(e)) for s, e in enumerate(legacy, start=1)], (4, encode_entry(seal))]
    report = verify_chain(stored, last_sequence=4)
    assert report.ok, report.describe()
    assert (report.checked, report.legacy, report.head_mac) == (4, 3, seal.mac)
    assert seal.prev_mac == legacy[-1].hash


def test_a_legacy_entry_rewritten_with_a_recomputed_hash_breaks_the_keyed_seal() -> None:
    legacy = legacy_chain(3)
    seal = next_entry(legacy[-1], key=KEY, actor="boot", action="audit.seal", target="3 pre-HMAC entries", time="x")
    forged = msgspec.structs.replace(legacy[2], actor="cli:mallory", hash="")
    forged = msgspec.structs.replace(forged, hash=legacy_hash(forged))
    stored = [*[(s, encode_entry(e)) for s, e in enumerate([*legacy[:2], forged], start=1)], (4, encode_entry(seal))]
    report = verify_chain(stored, last_sequence=4)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.reason) == (4, "prev_mac does not match entry 3")


def test_an_unkeyed_entry_after_keyed_ones_is_a_forgery() -> None:
    chain = build_chain(3)
    forged = LegacyAuditEntry(
        index=4, time="x", actor="cli:mallory", action="apply", target="x", prev_hash=chain[-1].mac, hash=""
    )
    forged = msgspec.structs.replace(forged, hash=legacy_hash(forged))
    report = verify_chain([*records(chain), (4, encode_entry(forged))], last_sequence=4)
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.reason) == (4, "unkeyed (pre-HMAC) entry after keyed entries: forged")


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
