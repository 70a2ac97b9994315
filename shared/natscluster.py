"""A local NATS cluster with JetStream: several :class:`~shared.natsserver.EmbeddedNats` on loopback.

``modelbus up --cluster N`` runs one in its data directory, and the cluster
tests and chaos runs use it, so anyone can try HA on one machine: kill a node
(:meth:`EmbeddedCluster.kill`) and start it again on its own ports and store
(:meth:`EmbeddedCluster.restart`) while the others carry on.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from shared.natsserver import EmbeddedNats, NatsServerError, terminate

ROUTE_USER = "modelbus-route"
"""The user cluster nodes connect to each other as when the cluster has a route password."""
META_LEADER_PROBE_S = 0.1
"""How often :meth:`EmbeddedCluster.wait_meta_leader` asks JetStream again."""

T = TypeVar("T")


class EmbeddedCluster:
    """``size`` :class:`EmbeddedNats` nodes on loopback forming one NATS cluster with JetStream.

    Node ``i`` (from 1) keeps its store in ``base_dir/node-<i>``, is named
    ``<name>-<i>``, and logs to ``base_dir/node-<i>/nats-server.log``. Client and
    cluster ports are chosen before the first start and every node lists every
    route, so any node can be killed and restarted (:meth:`restart`) on its own
    ports and store. ``extra_config`` (e.g. an ``authorization`` block) goes into
    every node. With ``route_password`` the nodes' route connections
    authenticate too (user :data:`ROUTE_USER`): a cluster with client
    authorization needs it, or any local process could join as a route and
    bypass every permission. ``probe_login`` (``nats.connect`` keyword
    arguments: ``user``, ``password``, ``inbox_prefix``) is who asks JetStream
    whether it has a leader when clients must authenticate. ``ports`` fixes the
    client ports (one per node); by default they are chosen free, like the
    cluster ports always are.
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        extra_config: str = "",
        name: str = "modelbus",
        route_password: str | None = None,
        probe_login: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        ports: Sequence[int] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.name = name
        self.host = host
        self.probe_login = dict(probe_login or {})
        self.route_password = route_password
        if ports is not None and len(ports) != size:
            raise ValueError(f"{size} nodes need {size} client ports, got {len(ports)}")
        chosen = free_ports(size if ports else 2 * size, host)
        self.client_ports = list(ports) if ports else chosen[:size]
        self.cluster_ports = chosen[-size:]
        self.nodes = [
            EmbeddedNats(
                self.base_dir / f"node-{i}",
                port=self.client_ports[i - 1],
                host=host,
                extra_config=extra_config,
                log_file=self.base_dir / f"node-{i}" / "nats-server.log",
                server_name=f"{name}-{i}",
                cluster_config=self._cluster_block(i),
            )
            for i in range(1, size + 1)
        ]

    def _cluster_block(self, i: int) -> str:
        auth = ""
        login = ""
        if self.route_password is not None:
            from shared.identities import bcrypt_hash

            hashed = json.dumps(bcrypt_hash(self.route_password))
            auth = f"  authorization {{ user: {ROUTE_USER}, password: {hashed} }}\n"
            login = f"{ROUTE_USER}:{self.route_password}@"
        routes = ", ".join(json.dumps(f"nats-route://{login}{self.host}:{p}") for p in self.cluster_ports)
        return (
            f"cluster {{\n  name: {json.dumps(self.name)}\n  listen: {self.host}:{self.cluster_ports[i - 1]}\n"
            f"{auth}  routes: [{routes}]\n}}\n"
        )

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, in node order."""
        return [f"nats://{self.host}:{p}" for p in self.client_ports]

    @property
    def url(self) -> str:
        """All client URLs, comma-joined (what ``NATS_URL`` takes)."""
        return ",".join(self.urls)

    def start(self, timeout_s: float = 30.0) -> list[str]:
        """Start every node; return the client URLs once JetStream has elected a meta leader."""
        deadline = time.monotonic() + timeout_s
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                while not node.poll_ready():
                    if time.monotonic() >= deadline:
                        raise NatsServerError(f"{node.server_name} did not accept connections within {timeout_s:g}s")
                    time.sleep(0.02)
            self.wait_meta_leader(max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.stop()
            raise
        return self.urls

    def wait_meta_leader(self, timeout_s: float = 30.0) -> None:
        """Wait until JetStream answers an account-info request (it has a meta leader)."""
        last = run_in_thread(_jetstream_answers(self.urls, self.probe_login, timeout_s))
        if last:
            raise NatsServerError(f"the JetStream cluster elected no leader within {timeout_s:g}s: {last}")

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (counted from 0, like :attr:`nodes`)."""
        self.nodes[i].kill()

    def restart(self, i: int, timeout_s: float = 15.0) -> str:
        """Start node ``i`` (from 0) again on its ports and store; returns its URL."""
        return self.nodes[i].restart(timeout_s)

    def reload(self, extra_config: str, timeout_s: float = 5.0) -> None:
        """:meth:`EmbeddedNats.reload` on every running node; raises the first failure after trying all.

        A node that is down gets the configuration written, and uses it when it starts again.
        """
        errors: list[str] = []
        for node in self.nodes:
            try:
                node.reload(extra_config, timeout_s)
            except NatsServerError as exc:
                if node.alive:
                    errors.append(f"{node.server_name}: {exc}")
        if errors:
            raise NatsServerError("; ".join(errors))

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every node at once, then wait for each (SIGKILL after ``timeout_s``)."""
        live = [n.process for n in self.nodes if n.process is not None and n.process.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        for proc in live:
            terminate(proc, timeout_s)

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _jetstream_answers(urls: list[str], login: Mapping[str, str], timeout_s: float) -> str:
    """Ask JetStream for account info until it answers; ``""`` on success, else the last error."""
    import nats

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = "no answer"
    while loop.time() < deadline:
        try:
            nc = await nats.connect(
                servers=urls, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False, **login
            )
        except Exception as exc:  # any failure means "not yet"; the last one is reported
            last = f"{type(exc).__name__}: {exc}"
        else:
            try:
                await nc.jetstream().account_info()
                return ""
            except Exception as exc:  # e.g. 503 "JetStream system temporarily unavailable"
                last = f"{type(exc).__name__}: {exc}"
            finally:
                await nc.close()
        await asyncio.sleep(META_LEADER_PROBE_S)
    return last


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh event loop in another thread (callable from inside a running loop)."""
    box: list[T] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return box[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now (held together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()
