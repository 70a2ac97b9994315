"""Master-key rotation with real processes over a real nats-server: interrupted, recovered, finished.

The secrets service runs as ``python -m services.secrets``; the rotation as
``python -m services.secrets rotate-master-key`` and through the ``modelbus``
CLI. ``MODELBUS_ROTATION_CRASH_AFTER`` makes the rotation exit abruptly (status
3) right after re-encrypting that many secrets, as a kill would.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.secrets.crypto import key_id, record_key_id
from shared import identities
from shared.natsserver import EmbeddedNats
from shared.subjects import SECRETS_BUCKET, SECRETS_GET, SECRETS_PUT
from tests.conftest import ROOT, stop_process
from tests.integration import test_secrets_attacks as secure
from tests.integration.test_secrets import ask, get, put, raw_entries, secrets_refusing_to_start, start_secrets

KEY_A = os.urandom(32)
KEY_B = os.urandom(32)
A, B = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()
ID_A, ID_B = key_id(KEY_A), key_id(KEY_B)
SECRETS = {f"team-{i:02d}/openai-api-key": f"sk-rotation-value-{i:02d}-0123456789" for i in range(20)}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of the test's own: each test starts from an empty store."""
    nats = EmbeddedNats(tmp_path / "nats", log_file=None)
    nats.start()
    try:
        yield nats
    finally:
        nats.stop()


def key_file(path: Path, key_text: str) -> Path:
    path.write_text(key_text + "\n")
    path.chmod(0o600)
    return path


def clean_env(url: str, **extra: str) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELBUS_MASTER_KEY", "MODELBUS_ROTATION", "NATS_")) and k != "MODELBUS_HOME"
    }
    return {**inherited, "NATS_URL": url, "PYTHONUNBUFFERED": "1", "OTEL_TRACES_EXPORTER": "none", **extra}


def rotate(url: str, old: str, new_key_file: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m services.secrets rotate-master-key`` with ``old`` as the configured key."""
    return subprocess.run(
        [sys.executable, "-m", "services.secrets", "rotate-master-key", "--new-key-file", str(new_key_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=clean_env(url, MODELBUS_MASTER_KEY=old, **extra),
    )


def stored_key_ids(url: str) -> dict[str, set[str | None]]:
    """The key id of every record in the bucket's stream, history included, by subject."""
    found: dict[str, set[str | None]] = {}
    for _, subject, data, _ in raw_entries(url):
        if data:  # purge markers carry no record
            found.setdefault(subject, set()).add(record_key_id(data))
    return found


def values_served(url: str) -> dict[str, str]:
    """Every secret of :data:`SECRETS` as the running service answers it (each must answer 200)."""
    served = {}
    for name in SECRETS:
        status, body = get(url, f"secret:{name}")
        assert status == 200, (name, body)
        served[name] = body["value"]
    return served


def test_a_master_key_rotation_is_interrupted_and_then_recovered(server: EmbeddedNats, tmp_path: Path) -> None:
    url = server.url
    expected = dict(SECRETS)
    new_key = key_file(tmp_path / "new.key", B)
    old_service = start_secrets(url, key=A)
    try:
        for name, value in SECRETS.items():
            put(url, name, value)

        crashed = rotate(url, A, new_key, MODELBUS_ROTATION_CRASH_AFTER="7")
        assert crashed.returncode == 3, crashed.stderr
        assert f"old key id {ID_A}" in crashed.stdout and f"new key id {ID_B}" in crashed.stdout

        # The old-key service still answers every secret the rotation has not
        # reached, and names the key it lacks for those it has.
        statuses = {name: get(url, f"secret:{name}") for name in SECRETS}
        moved = [name for name, (status, _) in statuses.items() if status != 200]
        assert len(moved) == 7
        for name in moved:
            message = statuses[name][1]["error"]["message"]
            assert ID_B in message and "restart" in message
            assert SECRETS[name] not in message
        # ...and may still change one: the old key is still the store's active key.
        expected[moved[0]] = "sk-changed-during-the-interruption-0123"
        put(url, moved[0], expected[moved[0]])
    finally:
        stop_process(old_service.proc)

    before = raw_entries(url)
    status, output = secrets_refusing_to_start(url, A)
    assert status == 2
    assert f"under key id {ID_B}" in output
    assert "rotate-master-key" in output
    assert A not in output and B not in output
    assert raw_entries(url) == before

    both = start_secrets(url, key=B, extra={"MODELBUS_MASTER_KEY_PREVIOUS": A})
    try:
        assert values_served(url) == expected
        finished = rotate(url, A, new_key)
        assert finished.returncode == 0, finished.stderr
        assert "done:" in finished.stdout
        assert values_served(url) == expected
    finally:
        stop_process(both.proc)

    assert all(ids == {ID_B} for ids in stored_key_ids(url).values())  # no revision left under the old key
    new_only = start_secrets(url, key=None, extra={"MODELBUS_MASTER_KEY_FILE": str(new_key)})
    try:
        assert values_served(url) == expected
    finally:
        stop_process(new_only.proc)

    before = raw_entries(url)
    status, output = secrets_refusing_to_start(url, A)
    assert status == 2
    assert "master key does not match the secrets store" in output
    assert f"its active master key is key id {ID_B}" in output
    assert raw_entries(url) == before


def test_running_the_rotation_again_after_it_finished_changes_no_value(server: EmbeddedNats, tmp_path: Path) -> None:
    url = server.url
    new_key = key_file(tmp_path / "new.key", B)
    service = start_secrets(url, key=A)
    try:
        put(url, "only/one", "sk-only-one-0123456789")
    finally:
        stop_process(service.proc)
    assert rotate(url, A, new_key).returncode == 0
    again = rotate(url, A, new_key)
    assert again.returncode == 0, again.stderr
    assert "0 secret(s) re-encrypted" in again.stdout
    service = start_secrets(url, key=B)
    try:
        assert get(url, "secret:only/one")[1]["value"] == "sk-only-one-0123456789"
    finally:
        stop_process(service.proc)


def test_after_a_rotation_a_service_still_on_the_old_key_stores_nothing(server: EmbeddedNats, tmp_path: Path) -> None:
    url = server.url
    service = start_secrets(url, key=A)
    try:
        put(url, "kept", "sk-kept-value-0123456789")
        assert rotate(url, A, key_file(tmp_path / "new.key", B)).returncode == 0
        status, body = ask(url, SECRETS_PUT, {"name": "late", "value": "sk-late-value-0123456789"})
        assert status == 503
        assert body["error"]["code"] == "master_key_rotated"
        assert ID_B in body["error"]["message"]
        status, body = ask(url, SECRETS_GET, {"ref": "secret:kept"})
        assert status != 200 and ID_B in body["error"]["message"]
    finally:
        stop_process(service.proc)
    assert all(ids == {ID_B} for ids in stored_key_ids(url).values())


def test_a_rotation_given_the_wrong_old_key_changes_nothing(server: EmbeddedNats, tmp_path: Path) -> None:
    url = server.url
    service = start_secrets(url, key=A)
    try:
        put(url, "untouched", "sk-untouched-0123456789")
    finally:
        stop_process(service.proc)
    before = raw_entries(url)
    wrong = base64.b64encode(os.urandom(32)).decode()
    refused = rotate(url, wrong, key_file(tmp_path / "new.key", B))
    assert refused.returncode == 2
    assert "does not match the secrets store" in refused.stderr
    assert "Nothing was changed" in refused.stderr
    assert wrong not in refused.stderr + refused.stdout
    assert raw_entries(url) == before


def test_the_modelbus_cli_generates_a_new_key_and_rotates_with_the_data_dir_key(
    server: EmbeddedNats, tmp_path: Path
) -> None:
    url = server.url
    home = tmp_path / "home"
    home.mkdir()
    key_file(home / "master.key", A)
    service = start_secrets(url, key=None, extra={"MODELBUS_MASTER_KEY_FILE": str(home / "master.key")})
    try:
        put(url, "via/cli", "sk-via-the-cli-0123456789")
    finally:
        stop_process(service.proc)
    new_key = tmp_path / "keys" / "master.key.new"
    cli = [sys.executable, "-m", "services.cli", "--data-dir", str(home), "secrets", "rotate-master-key"]

    def modelbus_rotate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean_env(url))

    done = modelbus_rotate("--new-key-file", str(new_key), "--generate")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(new_key.stat().st_mode) == 0o600
    assert "done:" in done.stdout
    assert str(home / "master.key") in done.stdout  # the next step names the file to replace

    again = modelbus_rotate("--new-key-file", str(new_key), "--generate")
    assert again.returncode != 0
    assert "already exists" in again.stderr and "without --generate" in again.stderr

    service = start_secrets(url, key=None, extra={"MODELBUS_MASTER_KEY_FILE": str(new_key)})
    try:
        assert get(url, "secret:via/cli")[1]["value"] == "sk-via-the-cli-0123456789"
    finally:
        stop_process(service.proc)


def test_a_service_with_only_the_new_key_starts_once_every_secret_is_under_it_even_before_the_switch(
    server: EmbeddedNats, tmp_path: Path
) -> None:
    url = server.url
    new_key = key_file(tmp_path / "new.key", B)
    names = ["first", "second", "third"]
    service = start_secrets(url, key=A)
    try:
        for name in names:
            put(url, name, f"sk-{name}-value-0123456789")
    finally:
        stop_process(service.proc)
    crashed = rotate(url, A, new_key, MODELBUS_ROTATION_CRASH_AFTER=str(len(names)))
    assert crashed.returncode == 3, crashed.stderr
    ids = stored_key_ids(url)
    assert ids[f"$KV.{SECRETS_BUCKET}.keycheck"] == {ID_A}  # the old key is still the active one
    assert ids[f"$KV.{SECRETS_BUCKET}.keycheck.next"] == {ID_B}

    service = start_secrets(url, key=B)
    try:
        assert [get(url, f"secret:{name}")[1]["value"] for name in names] == [
            f"sk-{name}-value-0123456789" for name in names
        ]
    finally:
        stop_process(service.proc)
    assert rotate(url, A, new_key).returncode == 0
    assert all(ids == {ID_B} for ids in stored_key_ids(url).values())


def test_in_secure_mode_the_rotation_runs_as_the_state_identity_and_never_as_the_serving_one(tmp_path: Path) -> None:
    with secure.secure_boundary(tmp_path / "secure-nats") as boundary:
        old_text = base64.b64encode(secure.MASTER_KEY).decode()
        new_key = key_file(tmp_path / "new.key", B)
        service = secure.start_service(boundary)
        try:
            secure.put(boundary, "team-a/openai-api-key", "sk-secure-rotation-0123456789")
        finally:
            stop_process(service.proc)
        serving = identities.connection_env("secrets", boundary.passwords)
        as_serving = {k: v for k, v in serving.items() if not k.startswith("MODELBUS_STATE_")}
        refused = rotate(boundary.url, old_text, new_key, **as_serving)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "MODELBUS_STATE_USER=secrets-state" in refused.stderr  # the hint: which identity it needs
        done = rotate(boundary.url, old_text, new_key, **serving)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "all 1 stored secret(s) are under key id" in done.stdout
        restarted = secure.start_service(boundary, master_key=KEY_B)
        try:
            status, body = secure.ask(boundary, "providers", SECRETS_GET, {"ref": "secret:team-a/openai-api-key"})
            assert status == 200 and b"sk-secure-rotation-0123456789" in body
        finally:
            stop_process(restarted.proc)
