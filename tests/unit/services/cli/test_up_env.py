"""What each child of `modelbus up` inherits: its own keys and identities, nobody else's."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.cli.datadir import DEFAULT_HOME
from services.cli.processes import NatsProcess
from services.cli.up import REPLICAS_ENV, build_children, cluster_problem, data_dir_option, stop_tiers
from shared import identities
from shared.natsserver import EmbeddedNats

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


def test_a_cluster_run_tells_every_child_to_keep_three_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLICAS_ENV, raising=False)
    args = argparse.Namespace(config=None, routers=2, provider_workers=1)
    first, rest = build_children(args, "nats://a:1,nats://b:2,nats://c:3", extra_env={REPLICAS_ENV: "3"})
    for child in [*first, *rest]:
        assert child.env[REPLICAS_ENV] == "3" and child.env["NATS_URL"] == "nats://a:1,nats://b:2,nats://c:3"


def test_an_operators_replica_count_wins_over_the_clusters_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPLICAS_ENV, "5")
    args = argparse.Namespace(config=None, routers=1, provider_workers=1)
    first, rest = build_children(args, "nats://a:1", extra_env={REPLICAS_ENV: "3"})
    assert {c.env[REPLICAS_ENV] for c in [*first, *rest]} == {"5"}


def test_a_cluster_has_an_odd_number_of_nodes_from_three_and_no_external_nats() -> None:
    assert cluster_problem(0, None) is None and cluster_problem(0, "nats://x:1") is None
    assert cluster_problem(3, None) is None and cluster_problem(5, None) is None
    for nodes in (1, 2, 4, 11):
        assert "odd number of nodes from 3" in (cluster_problem(nodes, None) or "")
    assert "--nats-url" in (cluster_problem(3, "nats://x:1") or "")


def test_the_stack_stops_routers_then_workers_then_config_then_secrets_then_nats(tmp_path: Path) -> None:
    args = argparse.Namespace(config=None, routers=2, provider_workers=2)
    first, rest = build_children(args, "nats://127.0.0.1:1")
    nats = NatsProcess("nats-server", EmbeddedNats(tmp_path))
    tiers = [[p.name for p in tier] for tier in stop_tiers([nats, *first, *rest])]
    assert tiers == [["router-1", "router-2"], ["providers-1", "providers-2"], ["config"], ["secrets"], ["nats-server"]]
