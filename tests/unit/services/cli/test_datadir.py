"""The data directory: key files others can read are refused, everything else made private."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.cli import datadir
from services.cli.datadir import DataDirError, RunInfo, prepare, read_run_info, write_run_info
from shared import identities


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_key_file_others_can_read_is_refused_naming_the_chmod_that_fixes_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = home / "master.key"
    key.write_text("k\n")
    key.chmod(0o644)
    with pytest.raises(DataDirError) as caught:
        prepare(home)
    assert f"chmod 600 {key}" in str(caught.value)
    assert _mode(key) == 0o644  # refused, not quietly narrowed: it may already have been read


@pytest.mark.parametrize(
    "name", ["audit.key", "admin.token", identities.IDENTITIES_FILE, identities.CLIENT_FILE, "clients/app.json"]
)
def test_every_key_and_credentials_file_is_held_to_the_rule(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text("{}")
    path.chmod(0o640)
    with pytest.raises(DataDirError, match=f"chmod 600 {path}"):
        prepare(tmp_path)


@pytest.mark.parametrize(
    "variable", ["MODELBUS_MASTER_KEY_FILE", "MODELBUS_AUDIT_KEY_FILE", "MODELBUS_ADMIN_TOKEN_FILE"]
)
def test_an_operator_supplied_key_file_others_can_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    own = tmp_path / "elsewhere" / "key"
    own.parent.mkdir()
    own.write_text("k\n")
    own.chmod(0o604)
    monkeypatch.setenv(variable, str(own))
    with pytest.raises(DataDirError, match=f"chmod 600 {own}"):
        prepare(tmp_path / "home")


def test_an_existing_data_dir_is_made_private_on_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "nats" / "jetstream" / "stream").mkdir(parents=True)
    for name in ("nats-server.log", "run.json", "clients.json", "nats/nats-server.conf", "nats/jetstream/stream/1.blk"):
        (home / name).write_text("x")
        (home / name).chmod(0o644)
    for folder in (home, home / "nats", home / "nats" / "jetstream", home / "nats" / "jetstream" / "stream"):
        folder.chmod(0o755)
    changed = prepare(home)
    assert changed
    for path in [home, *home.rglob("*")]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_files_modelbus_does_not_know_are_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    mine.chmod(0o644)
    prepare(tmp_path)
    assert _mode(mine) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a folder to another user")
def test_a_data_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "theirs"
    home.mkdir()
    os.chown(home, 65534, 65534)
    with pytest.raises(DataDirError, match="belongs to uid 65534"):
        prepare(home)


def test_the_audit_key_is_generated_once_and_privately(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELBUS_AUDIT_KEY", raising=False)
    monkeypatch.delenv("MODELBUS_AUDIT_KEY_FILE", raising=False)
    path = datadir.ensure_audit_key(tmp_path)
    assert path == tmp_path / "audit.key" and _mode(path) == 0o600
    first = path.read_text()
    assert datadir.ensure_audit_key(tmp_path) == path and path.read_text() == first
    import base64

    assert len(base64.b64decode(first.strip())) == 32


def test_an_operator_audit_key_means_none_is_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUS_AUDIT_KEY_FILE", str(tmp_path / "theirs.key"))
    assert datadir.ensure_audit_key(tmp_path) is None
    assert not (tmp_path / "audit.key").exists()


def test_the_run_file_is_private_and_a_dead_supervisor_is_no_stack(tmp_path: Path) -> None:
    info = RunInfo(nats_url="nats://127.0.0.1:1", pid=os.getpid(), secure=True, admin_url="http://127.0.0.1:2")
    write_run_info(tmp_path, info)
    assert _mode(tmp_path / "run.json") == 0o600
    assert json.loads((tmp_path / "run.json").read_text())["admin_url"] == "http://127.0.0.1:2"
    # This test's own PID is alive but is no `modelbus up`: a reused PID is not a running stack.
    assert read_run_info(tmp_path) is None


def _run_info_of(tmp_path: Path, body: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> RunInfo | None:
    (tmp_path / "run.json").write_text(json.dumps(body))
    monkeypatch.setattr(datadir, "_alive", lambda pid: True)  # stands in for a live supervisor
    return read_run_info(tmp_path)


def test_the_run_file_keeps_every_url_of_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = ("nats://127.0.0.1:1", "nats://127.0.0.1:2", "nats://127.0.0.1:3")
    info = RunInfo(nats_url=",".join(urls), pid=1, secure=True, nats_urls=urls, cluster=3)
    write_run_info(tmp_path, info)
    assert json.loads((tmp_path / "run.json").read_text())["nats_urls"] == list(urls)
    monkeypatch.setattr(datadir, "_alive", lambda pid: True)
    assert read_run_info(tmp_path) == info


def test_a_run_file_of_an_older_version_reads_as_one_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = _run_info_of(tmp_path, {"nats_url": "nats://127.0.0.1:4222", "pid": 1, "secure": True}, monkeypatch)
    assert info is not None and info.nats_urls == ("nats://127.0.0.1:4222",) and info.cluster == 0


def test_the_route_password_is_generated_private_and_kept(tmp_path: Path) -> None:
    first = datadir.ensure_route_password(tmp_path)
    path = tmp_path / datadir.ROUTE_PASSWORD_FILE
    assert _mode(path) == 0o600 and len(first) >= 32
    assert datadir.ensure_route_password(tmp_path) == first


def test_a_route_password_others_can_read_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    datadir.ensure_route_password(home)
    (home / datadir.ROUTE_PASSWORD_FILE).chmod(0o644)
    with pytest.raises(DataDirError, match=r"cluster-route\.key"):
        prepare(home)


def test_the_process_table_is_read_only_when_it_is_one(tmp_path: Path) -> None:
    assert datadir.read_processes(tmp_path) is None
    (tmp_path / datadir.PROCESSES_FILE).write_text("{not json")
    assert datadir.read_processes(tmp_path) is None
    (tmp_path / datadir.PROCESSES_FILE).write_text('{"supervisor_pid": 5, "processes": [{"name": "router"}]}')
    assert datadir.read_processes(tmp_path) == {"supervisor_pid": 5, "processes": [{"name": "router"}]}


def test_a_process_table_left_wide_open_is_narrowed_on_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / datadir.PROCESSES_FILE).write_text("{}")
    (home / datadir.PROCESSES_FILE).chmod(0o644)
    assert home / datadir.PROCESSES_FILE in prepare(home)
    assert _mode(home / datadir.PROCESSES_FILE) == 0o600
