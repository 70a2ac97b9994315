"""The stack a chaos scenario breaks: nats-server (one, or a 3-node cluster) and six service processes.

One secrets, one config, two routers, two provider workers, each started
with ``subprocess.Popen`` as ``modelbus up`` would start it (same module,
same key files, same variables; insecure mode, no broker identities), from the
main thread (their parent-death signal follows the forking thread). Every
PID is one this object started; :meth:`ChaosStack.kill` and
:meth:`ChaosStack.close` signal those PIDs and nothing else.

Each service's output goes to ``<work>/logs/<name>.log`` (appended across
restarts), read by a thread that also notices the service's ready line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from services.cli.datadir import ensure_admin_token, ensure_audit_key, ensure_master_key
from shared.keyfile import ADMIN_TOKEN_FILE_ENV, AUDIT_KEY_FILE_ENV, MASTER_KEY_FILE_ENV
from shared.logs import READY_MARKER
from shared.natscluster import EmbeddedCluster
from shared.natsserver import EmbeddedNats, die_with_parent, terminate

READY_TIMEOUT_S = 45.0
"""How long one service may take to say it is serving (2 cores, six Pythons importing at once)."""
CHAOS_MODEL = "chaos"
"""The alias the load asks for: two mock endpoints, the second a failover for the first."""
PROBE_MODEL = "chaos-slow"
"""A non-streamed alias slower than the keepalive interval, for the keepalive probe."""
REPLY_WORDS = 20
"""Words of every mock answer: a stream is this many content chunks plus finish, usage and the terminator."""
NON_STREAMED_LATENCY_MS = 300
STREAM_TTFT_MS = 100
STREAM_ITL_MS = 50
PROBE_LATENCY_MS = 2500
CREDENTIAL_VARIABLE = "CHAOS_UPSTREAM_KEY"
"""An ``env:`` credential the mock endpoints reference, so the secrets service is on the request path
(the provider fetches it on every uncached call, like a real adapter)."""
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
"""The only variables of the harness's own environment a service gets: no operator secrets leak in."""


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def chaos_config() -> str:
    """The routing configuration: alias ``chaos`` over two mock endpoints, and the slow probe alias."""
    reply = " ".join(f"w{i}" for i in range(REPLY_WORDS))
    options = {
        "reply": reply,
        "latency_ms": NON_STREAMED_LATENCY_MS,
        "ttft_ms": STREAM_TTFT_MS,
        "itl_ms": STREAM_ITL_MS,
    }
    auth = {"secretRef": f"env:{CREDENTIAL_VARIABLE}"}
    docs = [
        *(
            _doc("ModelEndpoint", name, {"provider": "mock", "default_model": model, "options": options, "auth": auth})
            for name, model in (("primary", "chaos-a"), ("secondary", "chaos-b"))
        ),
        _doc("ModelAlias", CHAOS_MODEL, {"targets": [{"endpoint": "primary"}, {"endpoint": "secondary"}]}),
        _doc(
            "ModelEndpoint",
            "slow",
            {"provider": "mock", "default_model": "chaos-slow", "options": {"latency_ms": PROBE_LATENCY_MS}},
        ),
        _doc("ModelAlias", PROBE_MODEL, {"targets": [{"endpoint": "slow"}]}),
    ]
    return "\n---\n".join(json.dumps(doc) for doc in docs) + "\n"


@dataclass
class Service:
    """One service process (and the ones that replaced it after a kill)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    starts: int = 0
    pids: list[int] = field(default_factory=list)
    """Every PID this service had, oldest first."""

    @property
    def pid(self) -> int | None:
        """The current process's PID."""
        return None if self.process is None else self.process.pid


def _pump(process: subprocess.Popen[bytes], log: IO[bytes], ready: threading.Event) -> None:
    """Copy the service's output to its log and set ``ready`` at its ready line."""
    assert process.stdout is not None
    marker = READY_MARKER.encode()
    with log:
        for line in process.stdout:
            log.write(line)
            log.flush()
            if marker in line:
                ready.set()


class ChaosStack:
    """nats-server(s) plus the six services, all children of this process."""

    def __init__(self, work_dir: Path, source: Path, *, cluster_size: int = 0) -> None:
        self.work_dir = work_dir
        self.source = source
        self.cluster_size = cluster_size
        self.nats: EmbeddedNats | None = None
        self.cluster: EmbeddedCluster | None = None
        self.urls: list[str] = []
        self.services: dict[str, Service] = {}
        (work_dir / "logs").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ start and stop

    def start(self) -> None:
        """Start NATS, then secrets, then config, then routers and workers together; each must be ready."""
        if self.cluster_size:
            self.cluster = EmbeddedCluster(self.work_dir / "nats", self.cluster_size)
            self.urls = self.cluster.start()
        else:
            self.nats = EmbeddedNats(self.work_dir / "nats", log_file=self.work_dir / "logs" / "nats-server.log")
            self.urls = [self.nats.start()]
        self._define_services()
        for first in ("secrets", "config"):
            self._launch(self.services[first])
            self._wait_ready([first])
        rest = [name for name in self.services if name not in ("secrets", "config")]
        for name in rest:
            self._launch(self.services[name])
        self._wait_ready(rest)

    def _define_services(self) -> None:
        home = self.work_dir / "home"
        home.mkdir(mode=0o700, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):  # "generated the ... key" lines are progress, not results
            master_key, audit_key, admin_token = (
                ensure_master_key(home),
                ensure_audit_key(home),
                ensure_admin_token(home),
            )
        config_file = self.work_dir / "chaos.yaml"
        config_file.write_text(chaos_config())
        common = {name: os.environ[name] for name in INHERITED if name in os.environ}
        common.update(
            {
                "NATS_URL": ",".join(self.urls),
                "PYTHONPATH": str(self.source),
                "PYTHONUNBUFFERED": "1",
                "MODELBUS_LOG_LEVEL": "WARNING",
                "OTEL_SDK_DISABLED": "true",
                "OTEL_TRACES_EXPORTER": "none",
            }
        )
        if self.cluster_size:
            common["MODELBUS_JS_REPLICAS"] = str(min(3, self.cluster_size))
        secrets_env = {**common, CREDENTIAL_VARIABLE: "chaos-not-a-real-key"}
        if master_key is not None:
            secrets_env[MASTER_KEY_FILE_ENV] = str(master_key)
        config_env = {**common, "MODELBUS_ADMIN_HTTP": "off"}
        if audit_key is not None:
            config_env[AUDIT_KEY_FILE_ENV] = str(audit_key)
        if admin_token is not None:
            config_env[ADMIN_TOKEN_FILE_ENV] = str(admin_token)
        py = sys.executable
        specs: list[tuple[str, list[str], dict[str, str]]] = [
            ("secrets", [py, "-m", "services.secrets"], secrets_env),
            ("config", [py, "-m", "services.config", "--config", str(config_file)], config_env),
            ("router-1", [py, "-m", "services.router"], dict(common)),
            ("router-2", [py, "-m", "services.router"], dict(common)),
            ("providers-1", [py, "-m", "services.providers"], dict(common)),
            ("providers-2", [py, "-m", "services.providers"], dict(common)),
        ]
        for name, argv, env in specs:
            self.services[name] = Service(name, argv, env, self.work_dir / "logs" / f"{name}.log")

    def _launch(self, service: Service) -> None:
        """Start (or start again) one service, from the calling thread (the main one)."""
        service.ready.clear()
        log = open(service.log_path, "ab")  # closed by the pump thread
        log.write(f"---- start {service.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
        service.process = subprocess.Popen(
            service.argv,
            cwd=self.source,
            env=service.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        service.starts += 1
        service.pids.append(service.process.pid)
        threading.Thread(
            target=_pump, args=(service.process, log, service.ready), name=f"log-{service.name}", daemon=True
        ).start()

    def _wait_ready(self, names: list[str], timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            service = self.services[name]
            while not service.ready.wait(0.05):
                assert service.process is not None
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with status {service.process.returncode} while starting:\n{self.tail(name)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout_s:g}s:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        """The last lines of a service's log."""
        try:
            text = self.services[name].log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """SIGTERM every service this stack started (by PID), then stop NATS."""
        live = [s.process for s in self.services.values() if s.process is not None and s.process.poll() is None]
        for process in reversed(live):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in live:
            terminate(process, 10.0)
        if self.cluster is not None:
            self.cluster.stop()
        if self.nats is not None:
            self.nats.stop()

    # ------------------------------------------------------------ faults

    def kill(self, name: str) -> None:
        """``kill -9`` one service's current process (ours, by PID) and reap it."""
        process = self.services[name].process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{name} is not running")
        process.kill()
        process.wait()

    def relaunch(self, name: str) -> None:
        """Start a killed service again without waiting; :meth:`is_ready` says when it serves."""
        self._launch(self.services[name])

    def is_ready(self, name: str) -> bool:
        """Whether the service's current process said it is serving (raises if it exited instead)."""
        service = self.services[name]
        if service.ready.is_set():
            return True
        if service.process is not None and service.process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {service.process.returncode}:\n{self.tail(name)}")
        return False

    def _node(self, node: int | None) -> EmbeddedNats:
        if self.cluster is not None:
            return self.cluster.nodes[0 if node is None else node]
        assert self.nats is not None
        return self.nats

    def kill_nats(self, node: int | None = None) -> None:
        """``kill -9`` the nats-server, or node ``node`` (from 0) of the cluster, and reap it."""
        self._node(node).kill()

    def relaunch_nats(self, node: int | None = None) -> None:
        """Start the killed server (node) again on the same port and store, without waiting."""
        server = self._node(node)
        server.wait_port_free()
        server.launch()

    def nats_ready(self, node: int | None = None) -> bool:
        """Whether the relaunched server (node) accepts connections."""
        return self._node(node).poll_ready()

    def connections_per_node(self) -> list[int]:
        """How many of the services' TCP connections go to each NATS client port, in :attr:`urls` order."""
        ports = [int(url.rpartition(":")[2]) for url in self.urls]
        pids = [s.pid for s in self.services.values() if s.pid is not None]
        counts = remote_ports(pids)
        return [counts.get(port, 0) for port in ports]


def remote_ports(pids: list[int]) -> Counter[int]:
    """Remote ports of the established TCP connections the processes ``pids`` hold (from ``/proc``).

    A socket belongs to a process when ``/proc/<pid>/fd`` links to its inode;
    ``/proc/net/tcp`` (and ``tcp6``) give each inode's remote address.
    """
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            entries = list(fd_dir.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                target = os.readlink(entry)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    counts: Counter[int] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inodes and fields[3] == "01":  # 01 = ESTABLISHED
                counts[int(fields[2].rpartition(":")[2], 16)] += 1
    return counts
