"""What each child of `modelbus up` inherits: its own keys and identities, nobody else's."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.cli.datadir import DEFAULT_HOME
from services.cli.up import build_children, data_dir_option
from shared import identities

KEYS = {
    "MODELBUS_MASTER_KEY": "m" * 44,
    "MODELBUS_AUDIT_KEY": "a" * 44,
    "MODELBUS_ADMIN_TOKEN": "t" * 40,
    "NATS_USER": "operator",
    "NATS_PASSWORD": "operator-pw",
}


def _children(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, dict[str, str]]:
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    args = argparse.Namespace(config=None, routers=1, provider_workers=1)
    passwords = {role: f"pw-{role}" for role in identities.ROLES}
    first, rest = build_children(args, "nats://127.0.0.1:1", passwords=passwords, audit_key_file=None)
    return {c.name: c.env for c in [*first, *rest]}


def test_only_the_secrets_service_sees_the_master_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    envs = _children(monkeypatch, tmp_path)
    assert envs["secrets"]["MODELBUS_MASTER_KEY"] == KEYS["MODELBUS_MASTER_KEY"]
    assert [n for n, env in envs.items() if "MODELBUS_MASTER_KEY" in env] == ["secrets"]


def test_only_the_config_service_sees_the_audit_key_and_admin_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    envs = _children(monkeypatch, tmp_path)
    for var in ("MODELBUS_AUDIT_KEY", "MODELBUS_ADMIN_TOKEN"):
        assert [n for n, env in envs.items() if var in env] == ["config"], var


def test_each_child_connects_as_its_own_role_not_the_operators(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    envs = _children(monkeypatch, tmp_path)
    for name, env in envs.items():
        assert env["NATS_USER"] == name and env["NATS_PASSWORD"] == f"pw-{name}"
        assert "operator-pw" not in env.values()
    assert envs["router"][identities.STATE_USER_ENV] == "router-state"
    assert identities.STATE_USER_ENV not in envs["providers"]


def test_the_hint_names_the_data_dir_unless_it_is_the_default(tmp_path: Path) -> None:
    assert data_dir_option(DEFAULT_HOME) == ""
    assert data_dir_option(tmp_path) == f" --data-dir {tmp_path}"
