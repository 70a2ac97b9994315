"""Master-key rotation at the record level: key ids, re-encryption, and interruption at every step.

The rotation runs against :class:`MemoryBucket`, an in-memory key-value bucket
that keeps revisions the way a JetStream KV bucket does (one sequence for the
whole bucket, history per key, compare-and-set on a key's last revision, a
rollup that drops the history, and every write sealed for the sequence it is
stored at). The same rotation on a real nats-server is in
tests/integration/test_key_rotation.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from services.secrets.crypto import (
    UNBOUNDED,
    KeyNotAvailable,
    Keyring,
    RecordReplayed,
    RecordUnreadable,
    SecretCipher,
    key_id,
    record_format,
    record_key_id,
)
from services.secrets.masterkey import MASTER_KEY_ENV, PREVIOUS_KEY_ENV, MasterKeyError, load_keyring
from services.secrets.rotation import RotationError, RotationReport, WrongOldKey, rotate_master_key
from services.secrets.store import KEYCHECK_KEY, NEXT_KEYCHECK_KEY, kv_key
from services.secrets.versioned import Seal
from tests.conftest import run
from tests.unit.services.secrets.legacy_records import legacy_keycheck, legacy_secret
from tests.unit.services.secrets.memory_bucket import Crash, MemoryBucket

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
THIRD_KEY = bytes(range(200, 232))
OLD, NEW, THIRD = SecretCipher(OLD_KEY), SecretCipher(NEW_KEY), SecretCipher(THIRD_KEY)
VALUES = {f"team-{i}/api-key": f"sk-value-{i:02d}-0123456789" for i in range(8)}


def sealed(cipher: SecretCipher, name: str, value: str, updated_at: str = "2025-01-02T03:04:05Z") -> Seal:
    return lambda version: cipher.seal_secret(name, value, version=version, updated_at=updated_at)


def store_under(cipher: SecretCipher, values: dict[str, str] = VALUES) -> MemoryBucket:
    """A bucket as a secrets service with ``cipher`` leaves it: a key check and one record per secret."""
    bucket = MemoryBucket()
    bucket.put(KEYCHECK_KEY, lambda v: cipher.keycheck(version=v, legacy_until=0))
    for name, value in values.items():
        bucket.put(kv_key(name), sealed(cipher, name, value))
    return bucket


def legacy_store(key: bytes, *, with_kid: bool = True) -> MemoryBucket:
    """A bucket as modelbus left it before record format 2."""
    bucket = MemoryBucket()
    bucket.put(KEYCHECK_KEY, legacy_keycheck(key, with_kid=with_kid))
    for name, value in VALUES.items():
        bucket.put(kv_key(name), legacy_secret(key, name, value, with_kid=with_kid))
    return bucket


def opened(bucket: MemoryBucket, name: str, ring: Keyring | SecretCipher, legacy_until: int = 0) -> str:
    raw, revision = bucket.stored(kv_key(name))
    return ring.open_secret(name, raw, revision=revision, legacy_until=legacy_until).value


def read_all(bucket: MemoryBucket, ring: Keyring, legacy_until: int = 0) -> dict[str, str]:
    return {name: opened(bucket, name, ring, legacy_until) for name in VALUES}


def verifies(cipher: SecretCipher, bucket: MemoryBucket, key: str) -> bool:
    raw, revision = bucket.stored(key)
    return cipher.verifies(raw, revision=revision)


def key_ids_of_secrets(bucket: MemoryBucket) -> set[str | None]:
    return {record_key_id(bucket.latest(kv_key(name))) for name in VALUES}


def rotate(
    bucket: MemoryBucket,
    old: SecretCipher = OLD,
    new: SecretCipher = NEW,
    on_reencrypted: Callable[[int], None] | None = None,
) -> RotationReport:
    return run(rotate_master_key(bucket, old, new, on_reencrypted=on_reencrypted))


def crash_after(k: int) -> Callable[[int], None]:
    """A progress callback that dies right after the k-th secret is re-encrypted."""

    def die(count: int) -> None:
        if count >= k:
            raise Crash

    return die


# ---------------------------------------------------------------- key ids and the keyring


def test_a_key_id_is_16_hex_characters_stable_per_key_and_different_between_keys() -> None:
    assert key_id(OLD_KEY) == key_id(bytes(OLD_KEY)) == OLD.key_id
    assert len(OLD.key_id) == 16
    int(OLD.key_id, 16)
    assert len({OLD.key_id, NEW.key_id, THIRD.key_id}) == 3
    assert OLD_KEY.hex()[:16] != OLD.key_id
    assert base64.b64encode(OLD_KEY).decode() not in repr(OLD)


def test_every_record_names_the_key_that_sealed_it() -> None:
    raw = NEW.seal_secret("openai", "sk-value-0123456789", version=1)
    assert record_key_id(raw) == NEW.key_id
    assert record_key_id(NEW.keycheck(version=2, legacy_until=0)) == NEW.key_id
    with pytest.raises(RecordUnreadable):
        record_key_id(b"not a record")


def test_a_record_under_another_key_is_refused_by_name_without_trying_to_decrypt_it() -> None:
    raw = OLD.seal_secret("openai", "sk-value-0123456789", version=1)
    with pytest.raises(KeyNotAvailable) as caught:
        NEW.open_secret("openai", raw, revision=1)
    assert caught.value.key_id == OLD.key_id
    with pytest.raises(KeyNotAvailable):
        Keyring(NEW).open_secret("openai", raw, revision=1)


def test_a_store_holding_both_keys_records_is_readable_with_a_keyring_of_both() -> None:
    bucket = store_under(OLD)
    for i, name in enumerate(VALUES):
        if i % 2:
            bucket.put(kv_key(name), sealed(NEW, name, VALUES[name]))
    assert key_ids_of_secrets(bucket) == {OLD.key_id, NEW.key_id}
    assert read_all(bucket, Keyring(NEW, OLD)) == VALUES
    assert read_all(bucket, Keyring(OLD, NEW)) == VALUES


def test_a_record_from_before_key_ids_opens_with_whichever_held_key_sealed_it() -> None:
    legacy = legacy_secret(OLD_KEY, "openai", "sk-legacy-0123456789", with_kid=False)
    assert record_key_id(legacy) is None
    assert OLD.open_secret("openai", legacy, revision=1, legacy_until=1).value == "sk-legacy-0123456789"
    assert Keyring(NEW, OLD).open_secret("openai", legacy, revision=1, legacy_until=1).value == "sk-legacy-0123456789"
    with pytest.raises(RecordUnreadable):
        Keyring(NEW).open_secret("openai", legacy, revision=1, legacy_until=1)


def test_the_keyring_seals_with_the_current_key_only() -> None:
    ring = Keyring(NEW, OLD)
    assert record_key_id(ring.seal_secret("openai", "sk-value-0123456789", version=1)) == NEW.key_id
    assert ring.key_ids == (NEW.key_id, OLD.key_id)


def test_the_previous_key_comes_from_its_own_variable_and_never_without_a_current_key() -> None:
    old_text, new_text = base64.b64encode(OLD_KEY).decode(), base64.b64encode(NEW_KEY).decode()
    keys = load_keyring({MASTER_KEY_ENV: new_text, PREVIOUS_KEY_ENV: old_text})
    assert keys is not None
    assert keys.ring.key_ids == (NEW.key_id, OLD.key_id)
    assert PREVIOUS_KEY_ENV in keys.source
    with pytest.raises(MasterKeyError, match="no current master key"):
        load_keyring({PREVIOUS_KEY_ENV: old_text})
    with pytest.raises(MasterKeyError, match=PREVIOUS_KEY_ENV):
        load_keyring({MASTER_KEY_ENV: new_text, PREVIOUS_KEY_ENV: "not base64!"})


# ---------------------------------------------------------------- rotation


def test_a_rotation_re_encrypts_every_secret_under_the_new_key_and_keeps_values_and_times() -> None:
    bucket = store_under(OLD)
    before = {name: bucket.latest(kv_key(name)) for name in VALUES}
    report = rotate(bucket)
    assert key_ids_of_secrets(bucket) == {NEW.key_id}
    assert read_all(bucket, Keyring(NEW)) == VALUES
    for name in VALUES:
        raw, revision = bucket.stored(kv_key(name))
        assert json.loads(raw)["nonce"] != json.loads(before[name])["nonce"]  # a fresh nonce each
        assert json.loads(raw)["ver"] == revision  # sealed for where it is stored
        assert NEW.open_secret(name, raw, revision=revision).updated_at == "2025-01-02T03:04:05Z"
    assert verifies(NEW, bucket, KEYCHECK_KEY)
    assert NEXT_KEYCHECK_KEY not in bucket.history
    assert report == RotationReport(old_key_id=OLD.key_id, new_key_id=NEW.key_id, reencrypted=8, secrets=8)


def test_after_a_rotation_no_revision_anywhere_in_the_bucket_opens_with_the_old_key() -> None:
    bucket = store_under(OLD)
    name = next(iter(VALUES))
    bucket.put(kv_key(name), sealed(OLD, name, "sk-newer-value-0123456789"))  # history: two revisions
    rotate(bucket)
    for key, revisions in bucket.history.items():
        for _, raw in revisions:
            assert record_key_id(raw) == NEW.key_id, key
    assert opened(bucket, name, NEW) == "sk-newer-value-0123456789"


@pytest.mark.parametrize("with_kid", [True, False], ids=["format-1", "format-1-before-key-ids"])
def test_a_store_in_the_old_record_format_is_rotated_into_the_current_one(with_kid: bool) -> None:
    bucket = legacy_store(OLD_KEY, with_kid=with_kid)
    rotate(bucket)
    assert key_ids_of_secrets(bucket) == {NEW.key_id}
    assert {record_format(bucket.latest(kv_key(n))) for n in VALUES} == {2}
    assert read_all(bucket, Keyring(NEW)) == VALUES
    raw, revision = bucket.stored(KEYCHECK_KEY)
    check = NEW.open_keycheck(raw, revision=revision)
    assert check is not None and check.legacy_until is not None
    assert 0 < check.legacy_until <= len(VALUES) + 2  # the horizon: before the upgrade


def test_running_a_finished_rotation_again_changes_nothing_that_matters() -> None:
    bucket = store_under(OLD)
    rotate(bucket)
    assert rotate(bucket).reencrypted == 0
    assert read_all(bucket, Keyring(NEW)) == VALUES
    assert verifies(NEW, bucket, KEYCHECK_KEY)


@pytest.mark.parametrize("k", range(1, len(VALUES) + 1))
def test_a_rotation_interrupted_after_k_secrets_loses_nothing_and_running_it_again_finishes(k: int) -> None:
    bucket = store_under(OLD)
    with pytest.raises(Crash):
        rotate(bucket, on_reencrypted=crash_after(k))
    assert sum(record_key_id(bucket.latest(kv_key(n))) == NEW.key_id for n in VALUES) == k
    assert read_all(bucket, Keyring(NEW, OLD)) == VALUES
    assert verifies(OLD, bucket, KEYCHECK_KEY)  # the old key is still the active one
    assert verifies(NEW, bucket, NEXT_KEYCHECK_KEY)
    assert rotate(bucket).reencrypted == len(VALUES) - k
    assert key_ids_of_secrets(bucket) == {NEW.key_id}
    assert read_all(bucket, Keyring(NEW)) == VALUES


def _writes_in_a_full_rotation() -> int:
    bucket = store_under(OLD)
    bucket.writes_left = 10_000
    rotate(bucket)
    return 10_000 - bucket.writes_left


@pytest.mark.parametrize("crash_at", range(_writes_in_a_full_rotation() + 1))
def test_a_crash_before_any_write_of_the_rotation_leaves_every_secret_readable_and_resumable(crash_at: int) -> None:
    bucket = store_under(OLD)
    bucket.writes_left = crash_at
    try:
        rotate(bucket)
    except Crash:
        pass
    bucket.writes_left = None
    assert read_all(bucket, Keyring(NEW, OLD)) == VALUES
    assert verifies(OLD, bucket, KEYCHECK_KEY) or verifies(NEW, bucket, KEYCHECK_KEY)
    rotate(bucket)
    assert read_all(bucket, Keyring(NEW)) == VALUES
    assert verifies(NEW, bucket, KEYCHECK_KEY)
    assert NEXT_KEYCHECK_KEY not in bucket.history


def test_a_value_stored_under_the_old_key_during_the_rotation_is_never_overwritten() -> None:
    bucket = store_under(OLD)
    name = sorted(VALUES)[3]
    key = kv_key(name)
    raced: list[str] = []

    def old_key_service_stores_first(replacing: str) -> None:
        if replacing == key and not raced:
            raced.append(replacing)
            bucket.put(key, sealed(OLD, name, "sk-stored-meanwhile-0123456789"))

    bucket.before_replace = old_key_service_stores_first
    rotate(bucket)
    assert raced
    assert opened(bucket, name, NEW) == "sk-stored-meanwhile-0123456789"
    assert key_ids_of_secrets(bucket) == {NEW.key_id}


def test_a_value_stored_under_the_new_key_during_the_rotation_is_kept_as_it_is() -> None:
    bucket = store_under(OLD)
    name = sorted(VALUES)[0]
    key = kv_key(name)

    def new_key_service_stores_first(replacing: str) -> None:
        if replacing == key and bucket.before_replace is not None:
            bucket.before_replace = None
            bucket.put(key, sealed(NEW, name, "sk-stored-with-new-key-0123456789"))

    bucket.before_replace = new_key_service_stores_first
    rotate(bucket)
    assert opened(bucket, name, NEW) == "sk-stored-with-new-key-0123456789"
    assert len(bucket.history[key]) == 1  # its old-key history rolled up


def test_a_secret_stored_under_the_old_key_between_passes_is_caught_by_the_next_pass() -> None:
    bucket = store_under(OLD)
    listings = [0]
    real_keys = bucket.keys

    async def keys() -> list[str]:
        listings[0] += 1
        if listings[0] == 2:
            bucket.put(kv_key("late/arrival"), sealed(OLD, "late/arrival", "sk-late-0123456789"))
        return await real_keys()

    bucket.keys = keys  # type: ignore[method-assign]
    rotate(bucket)
    raw, revision = bucket.stored(kv_key("late/arrival"))
    assert NEW.open_secret("late/arrival", raw, revision=revision).value == "sk-late-0123456789"


def test_a_wrong_old_key_is_refused_and_nothing_is_changed() -> None:
    bucket = store_under(OLD)
    before = bucket.snapshot()
    with pytest.raises(WrongOldKey) as caught:
        rotate(bucket, old=THIRD)
    assert THIRD.key_id in str(caught.value)
    assert OLD.key_id in str(caught.value)  # the store's active key, by id
    assert "Nothing was changed" in str(caught.value)
    assert bucket.snapshot() == before


def test_rotating_to_the_same_key_is_refused() -> None:
    bucket = store_under(OLD)
    with pytest.raises(WrongOldKey, match="the new master key is the current one"):
        rotate(bucket, new=OLD)


def test_an_unfinished_rotation_to_another_key_must_be_finished_first() -> None:
    bucket = store_under(OLD)
    with pytest.raises(Crash):
        rotate(bucket, new=THIRD, on_reencrypted=crash_after(1))
    before = bucket.snapshot()
    with pytest.raises(RotationError, match=f"another master key \\(key id {THIRD.key_id}\\)"):
        rotate(bucket)
    assert bucket.snapshot() == before
    rotate(bucket, new=THIRD)
    assert read_all(bucket, Keyring(THIRD)) == VALUES


def test_a_secret_under_a_third_key_stops_the_rotation_naming_it_and_every_secret_stays_readable() -> None:
    bucket = store_under(OLD)
    stray = sorted(VALUES)[5]
    bucket.put(kv_key(stray), sealed(THIRD, stray, VALUES[stray]))
    with pytest.raises(RotationError) as caught:
        rotate(bucket)
    assert repr(stray) in str(caught.value)
    assert THIRD.key_id in str(caught.value)
    assert verifies(OLD, bucket, KEYCHECK_KEY)  # the new key was not made active
    readable = read_all_but(bucket, stray, Keyring(NEW, OLD))
    readable[stray] = opened(bucket, stray, THIRD)
    assert readable == VALUES


def read_all_but(bucket: MemoryBucket, skip: str, ring: Keyring) -> dict[str, str]:
    return {n: opened(bucket, n, ring) for n in VALUES if n != skip}


def test_a_damaged_secret_stops_the_rotation_before_the_new_key_is_made_active() -> None:
    bucket = store_under(OLD)
    damaged = sorted(VALUES)[2]
    record = json.loads(bucket.latest(kv_key(damaged)))
    record["ciphertext"] = base64.b64encode(b"\0" * 40).decode()
    bucket.put(kv_key(damaged), json.dumps(record).encode())
    with pytest.raises(RotationError, match=f"secret {damaged!r} does not decrypt with the old master key"):
        rotate(bucket)
    assert verifies(OLD, bucket, KEYCHECK_KEY)
    assert read_all_but(bucket, damaged, Keyring(NEW, OLD)) == {n: v for n, v in VALUES.items() if n != damaged}


# ---------------------------------------------------------------- rolled-back records


def test_a_rolled_back_record_stops_the_rotation_naming_it_and_is_never_sealed_again() -> None:
    bucket = store_under(OLD)
    victim = sorted(VALUES)[4]
    older = bucket.latest(kv_key(victim))
    bucket.put(kv_key(victim), sealed(OLD, victim, "sk-rotated-by-the-owner-0123456789"))
    bucket.put(kv_key(victim), older)  # an attacker writes the older record back
    with pytest.raises(RotationError, match=f"record for {victim} was rolled back or replayed"):
        rotate(bucket)
    assert bucket.latest(kv_key(victim)) == older  # not laundered into a record valid at its new revision
    assert verifies(OLD, bucket, KEYCHECK_KEY)  # the new key was not made active
    with pytest.raises(RecordReplayed):
        opened(bucket, victim, Keyring(NEW, OLD))


def test_an_old_format_record_written_back_after_the_upgrade_stops_the_rotation() -> None:
    bucket = legacy_store(OLD_KEY)
    victim = sorted(VALUES)[1]
    saved = bucket.latest(kv_key(victim))

    def attacker_writes_the_old_record_back(replacing: str) -> None:
        if replacing == kv_key(victim) and bucket.before_replace is not None:
            bucket.before_replace = None
            bucket.put(kv_key(victim), saved)  # after the key check's upgrade: above the legacy horizon

    bucket.before_replace = attacker_writes_the_old_record_back
    with pytest.raises(RotationError, match=f"record for {victim} was rolled back or replayed"):
        rotate(bucket)
    assert bucket.latest(kv_key(victim)) == saved


def test_a_rolled_back_key_check_stops_the_rotation_and_changes_nothing() -> None:
    bucket = store_under(OLD)
    older_check = bucket.latest(KEYCHECK_KEY)
    bucket.put(KEYCHECK_KEY, lambda v: OLD.keycheck(version=v, legacy_until=0))
    bucket.put(KEYCHECK_KEY, older_check)
    before = bucket.snapshot()
    with pytest.raises(RotationError, match="rolled back or replayed"):
        rotate(bucket)
    assert bucket.snapshot() == before


def test_the_rotation_keeps_an_unbounded_horizon_only_for_a_store_that_was_never_upgraded() -> None:
    bucket = legacy_store(OLD_KEY)
    assert opened(bucket, sorted(VALUES)[0], OLD, legacy_until=UNBOUNDED) == VALUES[sorted(VALUES)[0]]
    rotate(bucket)
    raw, revision = bucket.stored(KEYCHECK_KEY)
    check = NEW.open_keycheck(raw, revision=revision)
    assert check is not None and check.legacy_until not in (None, UNBOUNDED)


def horizon_of(bucket: MemoryBucket, ring: Keyring) -> int:
    """The legacy horizon a service holding ``ring`` reads from the key checks, as the store does."""
    for key in (KEYCHECK_KEY, NEXT_KEYCHECK_KEY):
        if key in bucket.history:
            raw, revision = bucket.stored(key)
            check = ring.open_keycheck(raw, revision=revision)
            if check is not None:
                return UNBOUNDED if check.legacy_until is None else check.legacy_until
    return 0


def _writes_in_a_full_legacy_rotation() -> int:
    bucket = legacy_store(OLD_KEY)
    bucket.writes_left = 10_000
    rotate(bucket)
    return 10_000 - bucket.writes_left


@pytest.mark.parametrize("crash_at", range(_writes_in_a_full_legacy_rotation() + 1))
def test_a_crash_anywhere_in_rotating_an_old_format_store_leaves_every_secret_readable(crash_at: int) -> None:
    bucket = legacy_store(OLD_KEY)
    bucket.writes_left = crash_at
    try:
        rotate(bucket)
    except Crash:
        pass
    bucket.writes_left = None
    ring = Keyring(NEW, OLD)
    assert read_all(bucket, ring, legacy_until=horizon_of(bucket, ring)) == VALUES
    rotate(bucket)
    assert read_all(bucket, Keyring(NEW)) == VALUES
    assert {record_format(bucket.latest(kv_key(n))) for n in VALUES} == {2}
