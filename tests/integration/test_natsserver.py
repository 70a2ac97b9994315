"""The embedded nats-server and the local cluster: restarts keep the port and the store, a cluster survives a node.

These run the real ``nats-server`` (no network beyond loopback).
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from shared.identities import bcrypt_hash
from shared.natscluster import EmbeddedCluster
from shared.natsserver import EmbeddedNats, NatsServerError, describe_status
from tests.conftest import run


async def _put_stream(url: str, name: str, replicas: int = 1, **login: str) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=0, **login)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"], num_replicas=replicas))
        for i in range(3):
            await js.publish(f"{name}.m", f"message {i}".encode())
    finally:
        await nc.close()


async def _messages(servers: str | list[str], name: str, **login: str) -> int:
    nc = await nats.connect(servers=servers, max_reconnect_attempts=0, connect_timeout=2, **login)
    try:
        info = await nc.jetstream().stream_info(name)
        return int(info.state.messages)
    finally:
        await nc.close()


def test_a_killed_server_restarts_on_the_same_port_with_its_jetstream_data(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    try:
        url = server.start()
        run(_put_stream(url, "KEEP"))
        first_pid = server.pid
        server.kill()
        assert not server.alive and server.returncode == -9
        assert server.restart() == url
        assert server.pid != first_pid and server.alive
        assert run(_messages(url, "KEEP")) == 3
        assert f"listen: 127.0.0.1:{server.port}" in server.config_file.read_text()
        assert stat.S_IMODE(server.config_file.stat().st_mode) == 0o600
    finally:
        server.stop()
    assert server.returncode == 0


def test_a_stopped_server_restarts_on_the_same_port_too(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", log_file=None)
    try:
        url = server.start()
        server.stop()
        assert server.restart() == url
    finally:
        server.stop()


def test_a_restart_fails_clearly_when_another_process_took_the_port(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", log_file=None)
    server.start()
    server.kill()
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        with pytest.raises(NatsServerError, match=f"127.0.0.1:{server.port}: another process took the port"):
            server.wait_port_free(timeout_s=0.3)
    finally:
        squatter.close()
        server.stop()


def test_reload_of_a_stopped_server_keeps_the_configuration_for_its_next_start(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
    try:
        url = server.start()
        server.kill()
        users = {"users": [{"user": "u", "password": bcrypt_hash("pw")}]}
        with pytest.raises(NatsServerError, match="not running"):
            server.reload("authorization " + json.dumps(users) + "\n")
        server.restart()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            run(nats.connect(url, max_reconnect_attempts=0, connect_timeout=1, allow_reconnect=False))
        run(_put_stream(url, "AUTHED", user="u", password="pw"))
    finally:
        server.stop()


def test_exit_statuses_name_the_signal_that_ended_the_process() -> None:
    assert describe_status(-9) == "-9 (killed by SIGKILL)"
    assert describe_status(-15) == "-15 (killed by SIGTERM)"
    assert describe_status(1) == "1"


def test_a_three_node_cluster_elects_a_leader_and_an_r3_stream_survives_a_killed_node(tmp_path: Path) -> None:
    with EmbeddedCluster(tmp_path / "cluster") as cluster:
        assert len(cluster.urls) == 3 and len(set(cluster.urls)) == 3
        assert cluster.url == ",".join(cluster.urls)
        names = {node.server_name for node in cluster.nodes}
        assert names == {"modelbus-1", "modelbus-2", "modelbus-3"}
        run(_put_stream(cluster.urls[0], "HA", replicas=3))
        cluster.kill(0)
        assert not cluster.nodes[0].alive
        assert run(_wait_messages(cluster.urls[1:], "HA", 3))
        assert cluster.restart(0) == cluster.urls[0]
        assert run(_wait_messages([cluster.urls[0]], "HA", 3))
        assert (tmp_path / "cluster" / "node-1" / "jetstream").is_dir()
    assert all(not node.alive for node in cluster.nodes)


def test_a_cluster_with_client_authorization_and_a_route_password_reloads_every_node(tmp_path: Path) -> None:
    users = {"users": [{"user": "u", "password": bcrypt_hash("pw")}]}
    login = {"user": "u", "password": "pw"}
    cluster = EmbeddedCluster(
        tmp_path / "cluster",
        extra_config="authorization " + json.dumps(users) + "\n",
        route_password="route-secret-1",
        probe_login=login,
    )
    with cluster:
        for node in cluster.nodes:
            text = node.config_file.read_text()
            assert "modelbus-route" in text and stat.S_IMODE(node.config_file.stat().st_mode) == 0o600
        run(_put_stream(cluster.urls[1], "SECURE", replicas=3, **login))
        both = {"users": [*users["users"], {"user": "v", "password": bcrypt_hash("pw2")}]}
        cluster.reload("authorization " + json.dumps(both) + "\n")
        for url in cluster.urls:  # every node knows the new user
            assert run(_messages(url, "SECURE", user="v", password="pw2")) == 3


async def _wait_messages(urls: list[str], name: str, expected: int, timeout_s: float = 15.0) -> bool:
    """Poll until the stream answers with ``expected`` messages through ``urls`` (a new leader may take a moment)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        try:
            if await _messages(urls, name) == expected:
                return True
        except Exception:  # no leader yet: ask again until the deadline
            pass
        await asyncio.sleep(0.1)
    return False
