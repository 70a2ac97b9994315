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
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    MasterKeyError,
    RecordUnreadable,
    SecretCipher,
    generate_master_key_file,
    load_master_key,
    parse_master_key,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
VALUE = "sk-live-0123456789abcdef-do-not-leak"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_sealed_secret_opens_to_the_same_value_and_keeps_its_update_time() -> None:
    cipher = SecretCipher(KEY)
    raw = cipher.seal_secret("openai-api-key", VALUE, updated_at="2025-01-02T03:04:05Z")
    opened = cipher.open_secret("openai-api-key", raw)
    assert opened.value == VALUE
    assert opened.updated_at == "2025-01-02T03:04:05Z"
    assert VALUE not in repr(opened)


def test_a_record_is_versioned_json_with_a_12_byte_nonce_and_no_trace_of_the_value() -> None:
    raw = SecretCipher(KEY).seal_secret("llm-providers/openai", VALUE)
    record = json.loads(raw)
    assert set(record) == {"v", "kid", "nonce", "ciphertext", "updated_at"}
    assert record["v"] == 1
    assert len(base64.b64decode(record["nonce"])) == 12
    assert VALUE.encode() not in raw
    assert VALUE[-4:].encode() not in raw
    assert b64(VALUE.encode()).encode() not in raw


def test_sealing_the_same_value_twice_uses_a_fresh_nonce_each_time() -> None:
    cipher = SecretCipher(KEY)
    first = json.loads(cipher.seal_secret("k", VALUE))
    second = json.loads(cipher.seal_secret("k", VALUE))
    assert first["nonce"] != second["nonce"]
    assert first["ciphertext"] != second["ciphertext"]


def test_a_record_moved_to_another_name_does_not_open() -> None:
    cipher = SecretCipher(KEY)
    raw = cipher.seal_secret("team-a/openai-api-key", VALUE)
    with pytest.raises(RecordUnreadable):
        cipher.open_secret("team-b/openai-api-key", raw)


def test_a_record_does_not_open_with_another_master_key() -> None:
    raw = SecretCipher(KEY).seal_secret("k", VALUE)
    with pytest.raises(RecordUnreadable):
        SecretCipher(OTHER_KEY).open_secret("k", raw)


@pytest.mark.parametrize("field", ["nonce", "ciphertext"])
def test_a_tampered_record_does_not_open(field: str) -> None:
    cipher = SecretCipher(KEY)
    record = json.loads(cipher.seal_secret("k", VALUE))
    raw = bytearray(base64.b64decode(record[field]))
    raw[0] ^= 1
    record[field] = b64(bytes(raw))
    with pytest.raises(RecordUnreadable):
        cipher.open_secret("k", json.dumps(record).encode())


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{}", b'{"v": 2, "nonce": "", "ciphertext": "", "updated_at": ""}', b'{"v": 1}'],
)
def test_something_that_is_not_a_record_is_unreadable_rather_than_a_crash(raw: bytes) -> None:
    with pytest.raises(RecordUnreadable):
        SecretCipher(KEY).open_secret("k", raw)


def test_the_key_check_tells_the_right_master_key_from_a_wrong_one() -> None:
    check = SecretCipher(KEY).keycheck()
    assert SecretCipher(KEY).verifies(check)
    assert not SecretCipher(OTHER_KEY).verifies(check)
    assert not SecretCipher(KEY).verifies(b"garbage")


def test_a_secret_record_cannot_pass_for_the_key_check() -> None:
    cipher = SecretCipher(KEY)
    assert not cipher.verifies(cipher.seal_secret("keycheck", "modelbus master key check v1"))
    with pytest.raises(RecordUnreadable):
        cipher.open(cipher.seal_secret("x", VALUE), KEYCHECK_AAD)


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
