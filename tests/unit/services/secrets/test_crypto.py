"""Sealed records and the master key: what encryption at rest promises, checked without a server."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from services.secrets.crypto import (
    KEYCHECK_AAD,
    UNBOUNDED,
    KeyNotAvailable,
    Keyring,
    RecordReplayed,
    RecordUnreadable,
    SecretCipher,
    record_format,
)
from services.secrets.masterkey import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    MasterKeyError,
    generate_master_key_file,
    load_master_key,
    parse_master_key,
)
from tests.unit.services.secrets.legacy_records import legacy_keycheck, legacy_secret

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
VALUE = "sk-live-0123456789abcdef-do-not-leak"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_sealed_secret_opens_to_the_same_value_and_keeps_its_update_time() -> None:
    cipher = SecretCipher(KEY)
    raw = cipher.seal_secret("openai-api-key", VALUE, version=7, updated_at="2025-01-02T03:04:05Z")
    opened = cipher.open_secret("openai-api-key", raw, revision=7)
    assert opened.value == VALUE
    assert opened.updated_at == "2025-01-02T03:04:05Z"
    assert not opened.legacy
    assert VALUE not in repr(opened)


def test_a_record_is_versioned_json_naming_key_and_revision_with_a_12_byte_nonce_and_no_trace_of_the_value() -> None:
    cipher = SecretCipher(KEY)
    raw = cipher.seal_secret("llm-providers/openai", VALUE, version=42)
    record = json.loads(raw)
    assert set(record) == {"v", "kid", "ver", "nonce", "ciphertext", "updated_at"}
    assert (record["v"], record["kid"], record["ver"]) == (2, cipher.key_id, 42)
    assert len(base64.b64decode(record["nonce"])) == 12
    assert VALUE.encode() not in raw
    assert VALUE[-4:].encode() not in raw
    assert b64(VALUE.encode()).encode() not in raw


def test_sealing_the_same_value_twice_uses_a_fresh_nonce_each_time() -> None:
    cipher = SecretCipher(KEY)
    first = json.loads(cipher.seal_secret("k", VALUE, version=1))
    second = json.loads(cipher.seal_secret("k", VALUE, version=1))
    assert first["nonce"] != second["nonce"]
    assert first["ciphertext"] != second["ciphertext"]


def test_a_record_moved_to_another_name_does_not_open() -> None:
    cipher = SecretCipher(KEY)
    raw = cipher.seal_secret("team-a/openai-api-key", VALUE, version=3)
    with pytest.raises(RecordUnreadable) as caught:
        cipher.open_secret("team-b/openai-api-key", raw, revision=3)
    assert not isinstance(caught.value, RecordReplayed)


def test_a_record_does_not_open_with_another_master_key() -> None:
    raw = SecretCipher(KEY).seal_secret("k", VALUE, version=1)
    with pytest.raises(RecordUnreadable):
        SecretCipher(OTHER_KEY).open_secret("k", raw, revision=1)


def test_an_older_record_written_back_at_a_later_revision_is_detected_as_a_replay() -> None:
    cipher = SecretCipher(KEY)
    older = cipher.seal_secret("openai-api-key", "sk-old-value-0123456789", version=5)
    with pytest.raises(RecordReplayed) as caught:
        cipher.open_secret("openai-api-key", older, revision=9)  # written back: it now sits at revision 9
    assert (caught.value.sealed_for, caught.value.found_at) == (5, 9)
    assert "sk-old" not in repr(caught.value) and "sk-old" not in str(caught.value)
    with pytest.raises(RecordReplayed):
        Keyring(cipher).open_secret("openai-api-key", older, revision=9)


def test_a_replayed_record_whose_version_was_edited_to_its_new_revision_does_not_open_at_all() -> None:
    cipher = SecretCipher(KEY)
    record = json.loads(cipher.seal_secret("openai-api-key", VALUE, version=5))
    record["ver"] = 9  # the version is bound by the associated data, so editing it breaks the tag
    with pytest.raises(RecordUnreadable) as caught:
        cipher.open_secret("openai-api-key", json.dumps(record).encode(), revision=9)
    assert not isinstance(caught.value, RecordReplayed)


def test_a_record_claiming_another_key_id_is_refused_by_that_id() -> None:
    cipher = SecretCipher(KEY)
    record = json.loads(cipher.seal_secret("k", VALUE, version=1))
    record["kid"] = SecretCipher(OTHER_KEY).key_id
    with pytest.raises(KeyNotAvailable):
        cipher.open_secret("k", json.dumps(record).encode(), revision=1)


@pytest.mark.parametrize("field", ["nonce", "ciphertext"])
def test_a_tampered_record_does_not_open(field: str) -> None:
    cipher = SecretCipher(KEY)
    record = json.loads(cipher.seal_secret("k", VALUE, version=1))
    raw = bytearray(base64.b64decode(record[field]))
    raw[0] ^= 1
    record[field] = b64(bytes(raw))
    with pytest.raises(RecordUnreadable):
        cipher.open_secret("k", json.dumps(record).encode(), revision=1)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{}",
        b'{"v": 3, "nonce": "", "ciphertext": "", "updated_at": ""}',
        b'{"v": 2, "kid": "00", "nonce": "", "ciphertext": "", "updated_at": ""}',  # format 2 without a version
        b'{"v": 1}',
    ],
)
def test_something_that_is_not_a_record_is_unreadable_rather_than_a_crash(raw: bytes) -> None:
    with pytest.raises(RecordUnreadable):
        SecretCipher(KEY).open_secret("k", raw, revision=1)


def test_an_old_format_record_opens_up_to_the_legacy_horizon_and_is_a_replay_above_it() -> None:
    cipher = SecretCipher(KEY)
    legacy = legacy_secret(KEY, "openai-api-key", VALUE)
    assert record_format(legacy) == 1
    opened = cipher.open_secret("openai-api-key", legacy, revision=4, legacy_until=4)
    assert opened.value == VALUE and opened.legacy
    with pytest.raises(RecordReplayed) as caught:
        cipher.open_secret("openai-api-key", legacy, revision=5, legacy_until=4)  # written back after the upgrade
    assert caught.value.sealed_for is None
    with pytest.raises(RecordReplayed):
        cipher.open_secret("openai-api-key", legacy, revision=1)  # no horizon given: no old record is genuine
    assert cipher.open_secret("openai-api-key", legacy, revision=10**9, legacy_until=UNBOUNDED).value == VALUE


def test_an_old_format_record_still_does_not_open_under_another_name() -> None:
    legacy = legacy_secret(KEY, "team-a/key", VALUE)
    with pytest.raises(RecordUnreadable) as caught:
        SecretCipher(KEY).open_secret("team-b/key", legacy, revision=1, legacy_until=UNBOUNDED)
    assert not isinstance(caught.value, RecordReplayed)


def test_an_old_format_record_from_before_key_ids_opens_with_whichever_held_key_sealed_it() -> None:
    legacy = legacy_secret(KEY, "openai", VALUE, with_kid=False)
    ring = Keyring(SecretCipher(OTHER_KEY), SecretCipher(KEY))
    assert ring.open_secret("openai", legacy, revision=3, legacy_until=3).value == VALUE
    with pytest.raises(RecordReplayed):
        ring.open_secret("openai", legacy, revision=4, legacy_until=3)


def test_the_key_check_tells_the_right_master_key_from_a_wrong_one_at_its_own_revision() -> None:
    check = SecretCipher(KEY).keycheck(version=1, legacy_until=0)
    assert SecretCipher(KEY).verifies(check, revision=1)
    assert not SecretCipher(OTHER_KEY).verifies(check, revision=1)
    assert not SecretCipher(KEY).verifies(b"garbage", revision=1)
    opened = SecretCipher(KEY).open_keycheck(SecretCipher(KEY).keycheck(version=8, legacy_until=7), revision=8)
    assert opened is not None and opened.legacy_until == 7


def test_an_older_key_check_written_back_is_detected_as_a_replay() -> None:
    check = SecretCipher(KEY).keycheck(version=1, legacy_until=0)
    with pytest.raises(RecordReplayed):
        SecretCipher(KEY).open_keycheck(check, revision=12)
    assert not SecretCipher(OTHER_KEY).verifies(check, revision=12)  # not its key: simply not its check


def test_an_old_format_key_check_still_verifies_and_has_no_legacy_horizon() -> None:
    check = legacy_keycheck(KEY)
    opened = SecretCipher(KEY).open_keycheck(check, revision=99)
    assert opened is not None and opened.legacy_until is None
    assert not SecretCipher(OTHER_KEY).verifies(check, revision=99)


def test_a_secret_record_cannot_pass_for_the_key_check_in_either_format() -> None:
    cipher = SecretCipher(KEY)
    assert not cipher.verifies(cipher.seal_secret("keycheck", "modelbus master key check v2", version=1), revision=1)
    assert not cipher.verifies(legacy_secret(KEY, "keycheck", "modelbus master key check v1"), revision=1)
    with pytest.raises(RecordUnreadable):
        cipher.open_secret("x", cipher.keycheck(version=1, legacy_until=0), revision=1)
    assert KEYCHECK_AAD == b"modelbus:keycheck"


def test_a_valid_base64_master_key_is_accepted_with_surrounding_whitespace() -> None:
    assert parse_master_key(f"  {b64(KEY)}\n", source=MASTER_KEY_ENV) == KEY


@pytest.mark.parametrize("text", ["not base64!!", "abc", b64(KEY)[:-2] + "#=", "🔑"])
def test_a_master_key_that_is_not_base64_is_rejected_naming_its_source(text: str) -> None:
    with pytest.raises(MasterKeyError) as caught:
        parse_master_key(text, source=MASTER_KEY_ENV)
    assert MASTER_KEY_ENV in str(caught.value)
    assert "base64" in str(caught.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_master_key_of_the_wrong_length_is_rejected_saying_32_bytes(size: int) -> None:
    text = b64(os.urandom(size))
    with pytest.raises(MasterKeyError) as caught:
        parse_master_key(text, source=MASTER_KEY_ENV)
    message = str(caught.value)
    assert f"{size} bytes" in message
    assert "32 bytes" in message
    if text:
        assert text not in message


def test_the_master_key_comes_from_the_environment_variable() -> None:
    loaded = load_master_key({MASTER_KEY_ENV: b64(KEY)})
    assert loaded is not None
    assert (loaded.key, loaded.source) == (KEY, MASTER_KEY_ENV)
    assert b64(KEY) not in repr(loaded)


def test_no_master_key_configured_is_none_and_an_empty_variable_counts_as_unset() -> None:
    assert load_master_key({}) is None
    assert load_master_key({MASTER_KEY_ENV: "", MASTER_KEY_FILE_ENV: ""}) is None


def test_the_master_key_comes_from_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    generate_master_key_file(path)
    loaded = load_master_key({MASTER_KEY_FILE_ENV: str(path)})
    assert loaded is not None
    assert len(loaded.key) == 32
    assert str(path) in loaded.source


def test_setting_both_the_key_and_the_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="set only one"):
        load_master_key({MASTER_KEY_ENV: b64(KEY), MASTER_KEY_FILE_ENV: str(tmp_path / "k")})


def test_a_missing_or_malformed_key_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.key"
    with pytest.raises(MasterKeyError) as caught:
        load_master_key({MASTER_KEY_FILE_ENV: str(missing)})
    assert str(missing) in str(caught.value)
    short = tmp_path / "short.key"
    short.write_text(b64(os.urandom(16)))
    with pytest.raises(MasterKeyError) as caught:
        load_master_key({MASTER_KEY_FILE_ENV: str(short)})
    assert str(short) in str(caught.value)
    assert "32 bytes" in str(caught.value)


def test_a_generated_key_file_is_private_and_holds_a_fresh_32_byte_key(tmp_path: Path) -> None:
    first, second = tmp_path / "keys" / "a.key", tmp_path / "keys" / "b.key"
    generate_master_key_file(first)
    generate_master_key_file(second)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
    keys = [parse_master_key(p.read_text(), source=str(p)) for p in (first, second)]
    assert all(len(k) == 32 for k in keys)
    assert keys[0] != keys[1]


def test_generating_a_key_file_never_overwrites_an_existing_one(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    generate_master_key_file(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_master_key_file(path)
    assert path.read_bytes() == before


def test_a_key_file_readable_by_others_still_works_but_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "open.key"
    path.write_text(b64(KEY))
    path.chmod(0o644)
    loaded = load_master_key({MASTER_KEY_FILE_ENV: str(path)})
    assert loaded is not None and loaded.key == KEY
    assert "chmod 600" in caplog.text
    assert b64(KEY) not in caplog.text
