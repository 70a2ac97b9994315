"""What `modelbus up` prepares for the HTTP gateway: its identity, its default key, client.json and the flag."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services.cli import datadir
from services.cli.datadir import (
    GATEWAY_KEY_FILE,
    GATEWAY_KEYS_FILE,
    DataDirError,
    RunInfo,
    ensure_gateway_key,
    prepare,
    read_run_info,
    write_run_info,
)
from services.cli.main import build_parser
from services.cli.up import build_children
from shared import identities
from shared.client import load_credentials

OLD_ROLES = ("config", "config-state", "router", "router-state", "providers", "secrets", "secrets-state", "client")


@pytest.fixture(autouse=True)
def _no_operator_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELBUS_GATEWAY_KEYS", raising=False)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# ---------------------------------------------------------------- the default key


def test_the_first_run_creates_a_default_key_in_a_0600_file_and_later_runs_reuse_it(tmp_path: Path) -> None:
    first = ensure_gateway_key(tmp_path)
    assert first is not None and first.created
    key = (tmp_path / GATEWAY_KEY_FILE).read_text().strip()
    assert first.api_key == key and key.startswith("mb-") and len(key) == 3 + 43  # 32 url-safe random bytes
    assert _mode(tmp_path / GATEWAY_KEY_FILE) == 0o600
    again = ensure_gateway_key(tmp_path)
    assert again is not None and again.api_key == key and not again.created


def test_no_hash_file_is_written_any_more_the_store_holds_the_hash(tmp_path: Path) -> None:
    ensure_gateway_key(tmp_path)
    assert not (tmp_path / GATEWAY_KEYS_FILE).exists()


def test_a_deleted_key_file_gets_a_new_default_key_marked_new(tmp_path: Path) -> None:
    old = ensure_gateway_key(tmp_path)
    (tmp_path / GATEWAY_KEY_FILE).unlink()
    new = ensure_gateway_key(tmp_path)
    assert old is not None and new is not None and new.api_key != old.api_key and new.created


def test_an_empty_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / GATEWAY_KEY_FILE).write_text("\n")
    with pytest.raises(DataDirError, match=str(tmp_path / GATEWAY_KEY_FILE)):
        ensure_gateway_key(tmp_path)


def test_an_operators_keys_file_means_no_key_is_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUS_GATEWAY_KEYS", str(tmp_path / "theirs.json"))
    assert ensure_gateway_key(tmp_path) is None
    assert not (tmp_path / GATEWAY_KEY_FILE).exists()


def test_a_gateway_key_file_others_can_read_is_refused_at_start(tmp_path: Path) -> None:
    ensure_gateway_key(tmp_path)
    (tmp_path / GATEWAY_KEY_FILE).chmod(0o644)
    with pytest.raises(DataDirError, match=f"chmod 600 {tmp_path / GATEWAY_KEY_FILE}"):
        prepare(tmp_path)


def test_an_old_open_keys_file_of_hashes_is_still_narrowed_on_start(tmp_path: Path) -> None:
    (tmp_path / GATEWAY_KEYS_FILE).write_text('{"keys": []}')
    (tmp_path / GATEWAY_KEYS_FILE).chmod(0o644)
    prepare(tmp_path)
    assert _mode(tmp_path / GATEWAY_KEYS_FILE) == 0o600


def test_the_key_reaches_no_child_and_only_an_operators_key_file_reaches_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ensure_gateway_key(tmp_path)
    assert keys is not None
    passwords = {role: f"pw-{role}" for role in identities.ROLES}
    args = argparse.Namespace(config=None, routers=1, provider_workers=1, http_port=0)
    children = build_children(args, "nats://127.0.0.1:1", passwords=passwords)
    for child in children.all:
        assert not [v for v in child.env.values() if keys.api_key in v], child.name
        assert not [a for a in child.argv if keys.api_key in a], child.name
        assert str(tmp_path / GATEWAY_KEY_FILE) not in child.env.values(), child.name
        assert "MODELBUS_GATEWAY_KEYS" not in child.env, child.name
    monkeypatch.setenv("MODELBUS_GATEWAY_KEYS", "/etc/theirs.json")
    children = build_children(args, "nats://127.0.0.1:1", passwords=passwords)
    assert [c.name for c in children.all if c.env.get("MODELBUS_GATEWAY_KEYS") == "/etc/theirs.json"] == ["gateway"]


# ---------------------------------------------------------------- identities


def test_an_older_data_dir_gains_a_gateway_password_and_keeps_every_other(tmp_path: Path) -> None:
    old = {role: f"old-{role}" for role in OLD_ROLES} | {"admin": "old-admin"}
    (tmp_path / identities.IDENTITIES_FILE).write_text(json.dumps(old))
    (tmp_path / identities.IDENTITIES_FILE).chmod(0o600)
    passwords = identities.load_or_create(tmp_path)
    assert {role: passwords[role] for role in old} == old
    assert passwords["gateway"] and passwords["gateway"] not in old.values()
    stored = json.loads((tmp_path / identities.IDENTITIES_FILE).read_text())
    assert stored == passwords and _mode(tmp_path / identities.IDENTITIES_FILE) == 0o600
    assert identities.load_or_create(tmp_path) == passwords  # and it stays
    users = json.loads(identities.render_authorization(passwords).removeprefix("authorization "))["users"]
    assert {u["user"] for u in users} == set(identities.ROLES)


def test_the_gateway_identity_publishes_only_requests_and_reads_of_config_and_keys_and_hears_only_its_inbox() -> None:
    perms = identities.permissions("gateway")
    published = perms["publish"]["allow"]
    assert published[0] == "llm.v1.chat.completions"
    assert all(s.startswith(("$JS.API.", "$JS.FC.", "$JS.ACK.")) for s in published[1:])
    assert all("MODELBUS_CONFIG" in s or "KV_modelbus_gateway_keys" in s for s in published[1:])
    assert not [s for s in published if s.startswith(("$KV.", "$JS.API.STREAM.PURGE", "$JS.API.STREAM.DELETE"))]
    assert not [s for s in published if s.startswith(("$JS.API.STREAM.MSG.DELETE", "$JS.API.STREAM.UPDATE"))]
    assert perms["subscribe"] == {"allow": ["_INBOX_gateway.>"]}
    assert identities.connection_env("gateway", {"gateway": "pw"}) == {
        "NATS_USER": "gateway",
        "NATS_PASSWORD": "pw",
        "MODELBUS_INBOX_PREFIX": "_INBOX_gateway",
    }


def test_routers_and_provider_workers_may_answer_on_the_gateways_inbox() -> None:
    assert "_INBOX_gateway." in identities.requester_inboxes("router")
    assert "_INBOX_gateway" in identities.DELIVERY_INBOXES
    assert "_INBOX_gateway.>" in identities.permissions("router")["publish"]["allow"]
    assert "_INBOX_gateway.>" in identities.permissions("providers")["publish"]["allow"]


# ---------------------------------------------------------------- client.json and run.json


def test_client_json_gains_the_http_url_and_the_default_key(tmp_path: Path) -> None:
    passwords = {role: f"pw-{role}" for role in identities.ROLES}
    path = identities.write_client_file(
        tmp_path, "nats://127.0.0.1:4222", passwords, http_url="http://127.0.0.1:8787", api_key="mb-k"
    )
    info = json.loads(path.read_text())
    assert info == {
        "url": "nats://127.0.0.1:4222",
        "user": "client",
        "password": "pw-client",
        "inbox_prefix": "_INBOX_client.default",
        "http_url": "http://127.0.0.1:8787",
        "api_key": "mb-k",
    }
    assert _mode(path) == 0o600
    creds = load_credentials(path)  # NATS readers see the same credentials as before
    assert creds.connect_kwargs() == {
        "user": "client",
        "password": "pw-client",
        "inbox_prefix": "_INBOX_client.default",
    }


def test_client_json_without_a_gateway_is_written_as_before(tmp_path: Path) -> None:
    passwords = {role: f"pw-{role}" for role in identities.ROLES}
    info = json.loads(identities.write_client_file(tmp_path, "nats://127.0.0.1:4222", passwords).read_text())
    assert set(info) == {"url", "user", "password", "inbox_prefix"}


def test_run_json_records_the_http_url_and_an_older_one_reads_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datadir, "_alive", lambda pid: True)
    write_run_info(tmp_path, RunInfo(nats_url="nats://127.0.0.1:1", pid=1, secure=True, http_url="http://127.0.0.1:2"))
    info = read_run_info(tmp_path)
    assert info is not None and info.http_url == "http://127.0.0.1:2"
    old = {"nats_url": "nats://127.0.0.1:1", "pid": 1, "secure": True, "admin_url": None}
    (tmp_path / "run.json").write_text(json.dumps(old))
    info = read_run_info(tmp_path)
    assert info is not None and info.http_url is None


# ---------------------------------------------------------------- the flag


def test_http_port_defaults_to_8787_and_takes_zero_for_a_free_port() -> None:
    assert build_parser().parse_args(["up"]).http_port == 8787
    assert build_parser().parse_args(["up", "--http-port", "0"]).http_port == 0
    assert build_parser().parse_args(["up", "--http-port", "9000"]).http_port == 9000


@pytest.mark.parametrize("value", ["-1", "65536", "http"])
def test_http_port_refuses_what_is_not_a_port(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["up", "--http-port", value])
    assert exited.value.code == 2
    assert "--http-port" in capsys.readouterr().err
