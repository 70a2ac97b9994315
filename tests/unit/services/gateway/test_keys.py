"""The gateway's key file: what it accepts, how it is re-read, and that no key or hash leaks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from services.gateway.keys import CHECK_EVERY_S, KeyFileError, KeyRing, key_hash, parse_key_file

KEY = "mb-unit-key-aaaaaaaaaaaaaaaaaaaaaaaa"
OTHER = "mb-unit-key-bbbbbbbbbbbbbbbbbbbbbbbb"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, keys: dict[str, str]) -> None:
    entries = [
        {"name": n, "sha256": hashlib.sha256(k.encode()).hexdigest(), "created": "2025-01-01T00:00:00Z"}
        for n, k in keys.items()
    ]
    tmp = path.with_name("tmp.json")
    tmp.write_text(json.dumps({"keys": entries}))
    os.replace(tmp, path)


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    write(path, {"default": KEY})
    return path


def test_a_key_whose_hash_is_in_the_file_is_valid_and_named(keyfile: Path) -> None:
    ring = KeyRing(str(keyfile))
    assert ring.check(KEY) == "default"
    assert ring.check(OTHER) is None
    assert ring.check(None) is None and ring.check("") is None


def test_the_hash_is_the_hex_sha256_of_the_key_and_upper_case_hex_is_accepted(tmp_path: Path) -> None:
    assert key_hash(KEY) == hashlib.sha256(KEY.encode()).hexdigest().encode()
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "x", "sha256": hashlib.sha256(KEY.encode()).hexdigest().upper()}]}))
    assert KeyRing(str(path)).check(KEY) == "x"


def test_a_removed_key_is_refused_at_the_next_check_without_a_new_ring(keyfile: Path) -> None:
    clock = Clock()
    ring = KeyRing(str(keyfile), clock=clock)
    write(keyfile, {"other": OTHER})
    assert ring.check(KEY) == "default"  # not looked at again yet
    clock.now += CHECK_EVERY_S
    assert ring.check(KEY) is None
    assert ring.check(OTHER) == "other"


def test_the_file_is_looked_at_no_more_often_than_the_check_interval(
    keyfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    ring = KeyRing(str(keyfile), clock=clock)
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    for _ in range(100):
        ring.check(KEY)
    assert stats == []
    clock.now += CHECK_EVERY_S
    ring.check(KEY)
    ring.check(KEY)
    assert len(stats) == 1


def test_a_file_made_malformed_later_refuses_every_key_until_it_is_fixed(
    keyfile: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    ring = KeyRing(str(keyfile), clock=clock)
    keyfile.write_text('{"keys": [{"name": "default", "sha256": "' + KEY + '"}]}')  # someone pasted the key itself
    clock.now += CHECK_EVERY_S
    with caplog.at_level(logging.ERROR):
        assert ring.check(KEY) is None
    assert "keys[0].sha256 is not 64 hex digits" in caplog.text
    assert KEY not in caplog.text
    write(keyfile, {"default": KEY})
    clock.now += CHECK_EVERY_S
    assert ring.check(KEY) == "default"


def test_a_deleted_file_refuses_every_key(keyfile: Path) -> None:
    clock = Clock()
    ring = KeyRing(str(keyfile), clock=clock)
    keyfile.unlink()
    clock.now += CHECK_EVERY_S
    assert ring.check(KEY) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json", "is not a key file"),
        (b'{"keys": [{"name": "a"}]}', "is not a key file"),
        (b'{"keys": [{"name": "", "sha256": "' + b"0" * 64 + b'"}]}', "keys[0].name is empty"),
        (b'{"keys": [{"name": "a", "sha256": "' + KEY.encode() + b'"}]}', "keys[0].sha256 is not 64 hex digits"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_variable_never_the_content(content: bytes, reason: str) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_key_file(content, "/data/gateway-keys.json")
    assert str(caught.value).startswith("MODELBUS_GATEWAY_KEYS: ")
    assert reason in str(caught.value)
    assert KEY not in str(caught.value)


def test_a_missing_file_at_start_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="MODELBUS_GATEWAY_KEYS: cannot read"):
        KeyRing(str(tmp_path / "absent.json"))
