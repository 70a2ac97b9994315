"""A local process tries to join the ``modelbus up --cluster`` nodes as a route, to read every message.

A route is a server-to-server link: a node forwards a route every message its
clients publish that the route has interest in, past every client permission.
With client authorization but no route authentication, any local user could
start a nats-server that routes to a node and subscribe to ``>`` there. The
nodes of :class:`shared.natscluster.EmbeddedCluster` authenticate routes with
the generated route password; these tests start a rogue nats-server (our own
Popen) and check what reaches a subscriber on it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from shared.identities import bcrypt_hash
from shared.natscluster import ROUTE_USER, EmbeddedCluster
from shared.natsserver import find_nats_server
from tests.conftest import free_port, run, stop_process

LOGIN = {"user": "u", "password": "pw"}
ROUTE_PASSWORD = "route-secret-for-the-test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    users = {"users": [{"user": "u", "password": bcrypt_hash("pw")}]}
    c = EmbeddedCluster(
        tmp_path_factory.mktemp("routes") / "cluster",
        extra_config="authorization " + json.dumps(users) + "\n",
        route_password=ROUTE_PASSWORD,
        probe_login=LOGIN,
    )
    with c:
        yield c


def rogue(tmp: Path, cluster: EmbeddedCluster, login: str) -> tuple[subprocess.Popen[str], str]:
    """A nats-server without authorization that routes to node 1 (``login``: ``user:password@`` or "")."""
    port = free_port()
    proc = subprocess.Popen(
        [
            find_nats_server(),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--cluster_name",
            cluster.name,
            "--cluster",
            f"nats://127.0.0.1:{free_port()}",
            "--routes",
            f"nats-route://{login}127.0.0.1:{cluster.cluster_ports[0]}",
            "-l",
            str(tmp / f"rogue-{port}.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return proc, f"nats://127.0.0.1:{port}"


async def eavesdrop(rogue_url: str, cluster: EmbeddedCluster, listen_s: float = 3.0) -> list[bytes]:
    """Subscribe to everything on the rogue server while a real client publishes on node 1."""
    spy = None
    for _ in range(100):  # the rogue server takes a moment to listen
        try:
            spy = await nats.connect(rogue_url, allow_reconnect=False, connect_timeout=0.5)
            break
        except Exception:
            await asyncio.sleep(0.05)
    assert spy is not None, "the rogue server never accepted a connection"
    heard: list[bytes] = []

    async def keep(msg: Msg) -> None:
        heard.append(msg.data)

    await spy.subscribe(">", cb=keep)
    await spy.flush()
    real = await nats.connect(cluster.urls[0], **LOGIN)
    try:
        loop = asyncio.get_running_loop()
        until = loop.time() + listen_s
        while loop.time() < until and not heard:
            await real.publish("llm.v1.chat.completions", b"a secret prompt")
            await asyncio.sleep(0.1)
    finally:
        await real.close()
        await spy.close()
    return heard


def test_a_rogue_server_routing_without_the_password_hears_nothing(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    proc, url = rogue(tmp_path, cluster, "")
    try:
        assert run(eavesdrop(url, cluster)) == []
    finally:
        stop_process(proc)


def test_a_rogue_server_routing_with_a_guessed_password_hears_nothing(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    proc, url = rogue(tmp_path, cluster, f"{ROUTE_USER}:guess@")
    try:
        assert run(eavesdrop(url, cluster)) == []
    finally:
        stop_process(proc)


def test_a_server_with_the_route_password_does_join_so_the_two_refusals_above_prove_something(
    cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    proc, url = rogue(tmp_path, cluster, f"{ROUTE_USER}:{ROUTE_PASSWORD}@")
    try:
        assert b"a secret prompt" in run(eavesdrop(url, cluster, listen_s=10.0))
    finally:
        stop_process(proc)
