"""The key rules every side shares: durations, names, the key's shape and what ``get keys`` shows."""

from __future__ import annotations

import hashlib

import pytest

from shared.gateway_keys import (
    KEY_PREFIX,
    StoredKey,
    key_info,
    key_sha256,
    name_problem,
    namespace_problem,
    new_key,
    parse_duration,
    sha256_problem,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 12 * 3600), ("15m", 900), ("90s", 90), ("1d12h", 129600), (" 2H ", 7200)],
)
def test_durations_are_days_hours_minutes_and_seconds_alone_or_combined(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "1y", "1.5h", "-1h", "12h30d", "1h 30m", "3w", "0s", "0d0h"])
def test_anything_else_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="--expires"):
        parse_duration(text)


def test_more_than_ten_years_is_refused() -> None:
    assert parse_duration("3660d") == 3660 * 86400
    with pytest.raises(ValueError, match="at most ten years"):
        parse_duration("3661d")


@pytest.mark.parametrize("name", ["default", "ci", "a", "team-bot_2", "x" * 64])
def test_good_key_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", "Bad", "a b", "-x", "x-", "_x", "x.y", "x/y", "x" * 65, "ü"])
def test_bad_key_names_are_refused(name: str) -> None:
    assert name_problem(name)


def test_a_key_is_the_prefix_and_256_random_bits_and_only_its_sha256_is_kept() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43
        assert key_sha256(key) == hashlib.sha256(key.encode()).hexdigest()
        assert sha256_problem(key_sha256(key)) is None
    assert sha256_problem("A" * 64) and sha256_problem("a" * 63)


def test_namespaces_follow_config_names() -> None:
    assert namespace_problem("team") is None and namespace_problem("a.b-c") is None
    assert namespace_problem("Team") and namespace_problem("a/b") and namespace_problem("")


def test_get_keys_shows_a_key_as_expired_from_its_expiry_on_and_never_its_hash() -> None:
    stored = StoredKey(name="k", sha256="0" * 64, created="2026-01-01T00:00:00Z", expires="2026-01-02T00:00:00Z")
    at_expiry = 1767312000.0  # 2026-01-02T00:00:00Z
    assert key_info(stored, at_expiry - 1).status == "active"
    assert key_info(stored, at_expiry).status == "expired"
    assert "sha256" not in type(key_info(stored, 0)).__struct_fields__
    assert key_info(StoredKey(name="k", sha256="0" * 64, created="x"), 1e12).status == "active"
