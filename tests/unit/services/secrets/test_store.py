"""How the store names things in the KV bucket, and what the admin view may show of a value."""

from __future__ import annotations

import pytest
from nats.js.kv import VALID_KEY_RE

from services.secrets.store import KEYCHECK_KEY, SECRET_KEY_PREFIX, kv_key, last4, name_of, name_problem

NAMES = [
    "openai-api-key",
    "llm-providers/openai",
    "team-a/openai-api-key",
    "a",
    "OPENAI_API_KEY",
    "v1.2.3",
    "x" * 253,
]


@pytest.mark.parametrize("name", NAMES)
def test_every_valid_name_maps_to_a_valid_single_token_kv_key_and_back(name: str) -> None:
    assert name_problem(name) is None
    key = kv_key(name)
    assert VALID_KEY_RE.match(key)
    assert key.startswith(SECRET_KEY_PREFIX)
    assert "." not in key.removeprefix(SECRET_KEY_PREFIX)  # one token after the prefix
    assert "/" not in key
    assert name_of(key) == name


def test_distinct_names_never_share_a_kv_key_and_none_collides_with_the_key_check() -> None:
    keys = {kv_key(n) for n in [*NAMES, "a/b", "a-b", "a_b", "a.b", "A"]}
    assert len(keys) == len(NAMES) + 5
    assert KEYCHECK_KEY not in keys


@pytest.mark.parametrize(
    "name",
    ["", " ", "has space", "colon:name", "-leading", "trailing-", "/leading", "trailing/", "x" * 254, "ünï", "a\nb"],
)
def test_names_outside_the_allowed_alphabet_are_refused_with_a_reason(name: str) -> None:
    assert name_problem(name)


@pytest.mark.parametrize("key", ["keycheck", "secret.!!", "secret.__8"])
def test_kv_keys_that_are_not_secrets_are_not_mistaken_for_one(key: str) -> None:
    with pytest.raises(ValueError):
        name_of(key)


def test_the_last_four_characters_are_shown_only_for_values_long_enough_to_spare_them() -> None:
    assert last4("sk-0123456789abcd") == "abcd"
    assert last4("short-value") is None
    assert last4("") is None
