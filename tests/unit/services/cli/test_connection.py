"""How a command finds its stack and identity: no guessing, the data dir's identities for its own URL."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from services.cli import connection, datadir
from services.cli.connection import CliError, resolve, same_server
from services.cli.datadir import RunInfo, write_run_info
from shared import identities

URL = "nats://127.0.0.1:4333"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "MODELBUS_INBOX_PREFIX", "MODELBUS_CREDS"):
        monkeypatch.delenv(var, raising=False)


def _args(home: Path, **kw: object) -> argparse.Namespace:
    return argparse.Namespace(data_dir=str(home), nats_url=kw.get("nats_url"), creds=kw.get("creds"))


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir as a running secure stack leaves it."""
    monkeypatch.setattr(datadir, "_alive", lambda pid: True)
    identities.load_or_create(tmp_path)
    write_run_info(tmp_path, RunInfo(nats_url=URL, pid=os.getpid(), secure=True))
    return tmp_path


def _creds(path: Path, user: str, url: str = "nats://127.0.0.1:5999") -> Path:
    path.write_text(json.dumps({"url": url, "user": user, "password": "pw", "inbox_prefix": f"_INBOX_{user}"}))
    return path


def test_a_forgotten_data_dir_is_an_error_not_a_guess_at_localhost(tmp_path: Path) -> None:
    with pytest.raises(CliError) as caught:
        resolve(_args(tmp_path / "empty"), "client")
    message = str(caught.value)
    assert "no modelbus stack found" in message and str(tmp_path / "empty") in message
    assert "4222" not in message


def test_the_data_dir_gives_the_role_its_identity(stack: Path) -> None:
    target = resolve(_args(stack), "admin")
    assert target.url == URL
    assert target.login and target.login["user"] == "admin" and target.login["inbox_prefix"] == "_INBOX_admin"


def test_nats_url_of_the_local_stack_still_uses_its_identities(stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://localhost:4333")
    target = resolve(_args(stack), "client")
    assert target.login and target.login["user"] == "client"
    assert target.login["inbox_prefix"] == "_INBOX_client.default"


def test_another_servers_url_gets_none_of_the_local_identities(stack: Path) -> None:
    target = resolve(_args(stack, nats_url="nats://127.0.0.1:9999"), "admin")
    assert target.url == "nats://127.0.0.1:9999" and target.login is None


def test_a_credentials_file_gives_url_and_identity_and_beats_the_data_dir(stack: Path, tmp_path: Path) -> None:
    creds = _creds(tmp_path / "app.json", "client-app")
    target = resolve(_args(stack, creds=str(creds)), "client")
    assert target.url == "nats://127.0.0.1:5999" and target.login and target.login["user"] == "client-app"
    assert str(creds) in target.source


def test_the_creds_variable_is_used_without_a_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUS_CREDS", str(_creds(tmp_path / "app.json", "client-app")))
    target = resolve(_args(tmp_path / "none"), "client")
    assert target.login and target.login["user"] == "client-app"


def test_the_environment_identity_beats_the_creds_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUS_CREDS", str(_creds(tmp_path / "app.json", "client-app")))
    monkeypatch.setenv("NATS_USER", "me")
    monkeypatch.setenv("NATS_PASSWORD", "secret")
    target = resolve(_args(tmp_path / "none", nats_url=URL), "client")
    assert target.login and target.login["user"] == "me"


def test_a_broken_credentials_file_is_named_without_quoting_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"password": "hunter2-secret"}')
    with pytest.raises(CliError) as caught:
        resolve(_args(tmp_path, creds=str(bad)), "client")
    assert str(bad) in str(caught.value) and "hunter2" not in str(caught.value)


def test_the_secrets_tool_gets_the_service_and_state_identities(stack: Path) -> None:
    env = connection.service_env(_args(stack), "secrets")
    assert env["NATS_URL"] == URL
    assert env[identities.USER_ENV] == "secrets" and env[identities.STATE_USER_ENV] == "secrets-state"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("nats://127.0.0.1:4222", "nats://localhost:4222", True),
        ("127.0.0.1:4222", "nats://127.0.0.1", True),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4223", False),
        ("nats://10.0.0.1:4222", "nats://127.0.0.1:4222", False),
    ],
)
def test_urls_naming_the_same_server_match(a: str, b: str, same: bool) -> None:
    assert same_server(a, b) is same
