"""What each child of `modelbus up` inherits: its own keys and identities, nobody else's."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from services.cli.datadir import DEFAULT_HOME
from services.cli.processes import NatsProcess
from services.cli.up import (
    HTTP_ENV,
    REPLICAS_ENV,
    build_children,
    cluster_problem,
    data_dir_option,
    http_port_problem,
    http_url_of,
    stop_tiers,
)
from shared import identities
from shared.natsserver import EmbeddedNats

KEYS = {
    "MODELBUS_MASTER_KEY": "m" * 44,
    "MODELBUS_AUDIT_KEY": "a" * 44,
    "MODELBUS_ADMIN_TOKEN": "t" * 40,
    "NATS_USER": "operator",
    "NATS_PASSWORD": "operator-pw",
}


def _args(routers: int = 1, workers: int = 1, http_port: int = 8787) -> argparse.Namespace:
    return argparse.Namespace(config=None, routers=routers, provider_workers=workers, http_port=http_port)


def _children(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, dict[str, str]]:
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    passwords = {role: f"pw-{role}" for role in identities.ROLES}
    children = build_children(_args(), "nats://127.0.0.1:1", passwords=passwords, audit_key_file=None)
    return {c.name: c.env for c in children.all}


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
    assert identities.STATE_USER_ENV not in envs["gateway"]  # one identity: it answers no request


def test_only_the_gateway_is_told_an_operators_key_file_and_where_to_listen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELBUS_GATEWAY_KEYS", "/operator/keys.json")
    envs = _children(monkeypatch, tmp_path)
    assert [n for n, env in envs.items() if "MODELBUS_GATEWAY_KEYS" in env] == ["gateway"]
    assert envs["gateway"]["MODELBUS_GATEWAY_KEYS"] == "/operator/keys.json"
    assert envs["gateway"][HTTP_ENV] == "127.0.0.1:8787"
    assert envs["gateway"]["NATS_USER"] == "gateway"
    assert envs["gateway"][identities.INBOX_ENV] == "_INBOX_gateway"


def test_the_gateway_sees_no_other_services_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gateway = _children(monkeypatch, tmp_path)["gateway"]
    for var in ("MODELBUS_MASTER_KEY", "MODELBUS_AUDIT_KEY", "MODELBUS_ADMIN_TOKEN"):
        assert var not in gateway
    assert not [v for v in gateway.values() if v in KEYS.values()]
    assert not [v for v in gateway.values() if v.startswith("pw-") and v != "pw-gateway"]


def test_an_operators_own_gateway_keys_file_reaches_only_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUS_GATEWAY_KEYS", "/operator/keys.json")
    children = build_children(_args(), "nats://127.0.0.1:1")
    holders = {c.name: c.env.get("MODELBUS_GATEWAY_KEYS") for c in children.all if "MODELBUS_GATEWAY_KEYS" in c.env}
    assert holders == {"gateway": "/operator/keys.json"}


def test_http_port_zero_asks_the_gateway_for_a_free_loopback_port() -> None:
    children = build_children(_args(http_port=0), "nats://127.0.0.1:1")
    assert [c.env[HTTP_ENV] for c in children.edge] == ["127.0.0.1:0"]
    assert [c.argv[-1] for c in children.edge] == ["services.gateway"]


def test_the_gateway_starts_after_the_routers_and_workers(tmp_path: Path) -> None:
    children = build_children(_args(routers=2), "nats://127.0.0.1:1")
    assert [c.name for c in children.all] == ["secrets", "config", "router-1", "router-2", "providers", "gateway"]
    assert [c.name for c in children.edge] == ["gateway"]


def test_the_hint_names_the_data_dir_unless_it_is_the_default(tmp_path: Path) -> None:
    assert data_dir_option(DEFAULT_HOME) == ""
    assert data_dir_option(tmp_path) == f" --data-dir {tmp_path}"


def test_a_cluster_run_tells_every_child_to_keep_three_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLICAS_ENV, raising=False)
    children = build_children(_args(routers=2), "nats://a:1,nats://b:2,nats://c:3", extra_env={REPLICAS_ENV: "3"})
    for child in children.all:
        assert child.env[REPLICAS_ENV] == "3" and child.env["NATS_URL"] == "nats://a:1,nats://b:2,nats://c:3"


def test_an_operators_replica_count_wins_over_the_clusters_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPLICAS_ENV, "5")
    children = build_children(_args(), "nats://a:1", extra_env={REPLICAS_ENV: "3"})
    assert {c.env[REPLICAS_ENV] for c in children.all} == {"5"}


def test_a_cluster_has_an_odd_number_of_nodes_from_three_and_no_external_nats() -> None:
    assert cluster_problem(0, None) is None and cluster_problem(0, "nats://x:1") is None
    assert cluster_problem(3, None) is None and cluster_problem(5, None) is None
    for nodes in (1, 2, 4, 11):
        assert "odd number of nodes from 3" in (cluster_problem(nodes, None) or "")
    assert "--nats-url" in (cluster_problem(3, "nats://x:1") or "")


def test_the_stack_stops_the_gateway_then_routers_then_workers_then_config_then_secrets_then_nats(
    tmp_path: Path,
) -> None:
    children = build_children(_args(routers=2, workers=2), "nats://127.0.0.1:1")
    nats = NatsProcess("nats-server", EmbeddedNats(tmp_path))
    tiers = [[p.name for p in tier] for tier in stop_tiers([nats, *children.all])]
    assert tiers == [
        ["gateway"],
        ["router-1", "router-2"],
        ["providers-1", "providers-2"],
        ["config"],
        ["secrets"],
        ["nats-server"],
    ]


def test_the_http_url_is_read_from_the_gateways_ready_line() -> None:
    line = "modelbus-service-ready modelbus.gateway gateway http=http://127.0.0.1:40123"
    assert http_url_of(line) == "http://127.0.0.1:40123"
    assert http_url_of("modelbus-service-ready modelbus.gateway gateway") is None
    assert http_url_of("modelbus-service-ready modelbus.config config admin=http://127.0.0.1:8790") is None


def test_a_taken_http_port_is_refused_before_anything_starts_and_zero_always_works() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problem = http_port_problem(port)
    assert problem is not None and f"port {port}" in problem and "--http-port" in problem
    assert http_port_problem(0) is None
    assert "0 to 65535" in (http_port_problem(70000) or "")
