"""How the store names things in the KV bucket, what the admin view may show of a value, and that a
record read back is the one last written (run on an in-memory bucket; the same on nats-server is in
tests/integration/test_secrets_attacks.py)."""

from __future__ import annotations

import json

import pytest
from nats.js.kv import VALID_KEY_RE

from services.secrets.crypto import Keyring, RecordReplayed, SecretCipher
from services.secrets.store import (
    KEYCHECK_KEY,
    SECRET_KEY_PREFIX,
    SecretStore,
    StoreStartupError,
    kv_key,
    last4,
    name_of,
    name_problem,
)
from tests.conftest import run
from tests.unit.services.secrets.legacy_records import legacy_keycheck, legacy_secret
from tests.unit.services.secrets.memory_bucket import MemoryBucket

KEY = bytes(range(32))
VALUE = "sk-current-value-0123456789"

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


# ---------------------------------------------------------------- records bound to their revision


def _store(bucket: MemoryBucket, *keys: bytes) -> SecretStore:
    ciphers = [SecretCipher(k) for k in keys or (KEY,)]
    return SecretStore(bucket, Keyring(*ciphers))  # type: ignore[arg-type]


def _opened(store: SecretStore) -> SecretStore:
    run(store._check_keys("tests"))  # what SecretStore.open does after finding the bucket
    return store


def test_a_value_is_stored_sealed_for_the_revision_it_lands_at_and_reads_back() -> None:
    bucket = MemoryBucket()
    store = _opened(_store(bucket))
    run(store.put("openai-api-key", VALUE))
    raw, revision = bucket.stored(kv_key("openai-api-key"))
    assert json.loads(raw)["ver"] == revision
    assert run(store.get("openai-api-key")) == VALUE


def test_an_older_record_written_back_is_detected_on_read_and_listed_as_absent() -> None:
    bucket = MemoryBucket()
    store = _opened(_store(bucket))
    run(store.put("openai-api-key", "sk-old-value-0123456789"))
    older = bucket.latest(kv_key("openai-api-key"))
    run(store.put("openai-api-key", VALUE))
    bucket.put(kv_key("openai-api-key"), older)  # the attacker's write: a genuine but older record
    with pytest.raises(RecordReplayed):
        run(store.get("openai-api-key"))
    (info,) = run(store.infos())
    assert (info.name, info.key_present, info.key_last4) == ("openai-api-key", False, None)


def test_a_store_in_the_old_format_stays_readable_and_its_key_check_is_upgraded_on_open() -> None:
    bucket = MemoryBucket()
    bucket.put(KEYCHECK_KEY, legacy_keycheck(KEY))
    bucket.put(kv_key("openai-api-key"), legacy_secret(KEY, "openai-api-key", VALUE))
    store = _opened(_store(bucket))
    raw, revision = bucket.stored(KEYCHECK_KEY)
    check = SecretCipher(KEY).open_keycheck(raw, revision=revision)
    assert check is not None and check.legacy_until == revision - 1  # every record before the upgrade
    assert run(store.get("openai-api-key")) == VALUE  # old record, read once more
    run(store.put("openai-api-key", VALUE))  # the next write migrates it
    assert json.loads(bucket.latest(kv_key("openai-api-key")))["v"] == 2


def test_an_old_format_record_written_back_after_the_upgrade_is_refused() -> None:
    bucket = MemoryBucket()
    bucket.put(KEYCHECK_KEY, legacy_keycheck(KEY))
    saved = legacy_secret(KEY, "openai-api-key", "sk-before-upgrade-0123456789")
    bucket.put(kv_key("openai-api-key"), saved)
    store = _opened(_store(bucket))
    run(store.put("openai-api-key", VALUE))
    bucket.put(kv_key("openai-api-key"), saved)
    with pytest.raises(RecordReplayed):
        run(store.get("openai-api-key"))


def test_an_old_format_key_check_written_back_beside_new_records_grants_no_old_record() -> None:
    bucket = MemoryBucket()
    store = _opened(_store(bucket))
    run(store.put("openai-api-key", VALUE))
    bucket.put(KEYCHECK_KEY, legacy_keycheck(KEY))  # an attacker puts a pre-upgrade key check back...
    bucket.put(kv_key("openai-api-key"), legacy_secret(KEY, "openai-api-key", "sk-saved-0123456789"))  # ...and a record
    with pytest.raises(RecordReplayed):
        run(store.get("openai-api-key"))  # the running service saw the upgraded check


def test_a_restart_after_an_old_key_check_is_written_back_beside_new_records_refuses_old_records() -> None:
    bucket = MemoryBucket()
    store = _opened(_store(bucket))
    run(store.put("openai-api-key", VALUE))
    run(store.put("other-key", VALUE))
    bucket.put(KEYCHECK_KEY, legacy_keycheck(KEY))
    bucket.put(kv_key("openai-api-key"), legacy_secret(KEY, "openai-api-key", "sk-saved-0123456789"))
    restarted = _opened(_store(bucket))  # "other-key" is in the new format: the store was upgraded before
    with pytest.raises(RecordReplayed):
        run(restarted.get("openai-api-key"))
    assert run(restarted.get("other-key")) == VALUE


def test_a_store_whose_key_check_was_rolled_back_refuses_to_open_and_changes_nothing() -> None:
    bucket = MemoryBucket()
    store = _opened(_store(bucket))
    run(store.put("openai-api-key", VALUE))
    older_check = bucket.latest(KEYCHECK_KEY)
    bucket.put(KEYCHECK_KEY, older_check)
    before = bucket.snapshot()
    with pytest.raises(StoreStartupError, match="rolled back or replayed"):
        _opened(_store(bucket))
    assert bucket.snapshot() == before
