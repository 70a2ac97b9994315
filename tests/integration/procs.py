"""Service processes started one by one (not under ``modelbus up``), so a test can kill exactly one.

Every process is this test's own ``Popen``; :meth:`Services.kill` sends SIGKILL
to that PID and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from services.cli.datadir import ensure_admin_token, ensure_audit_key, ensure_master_key
from shared.keyfile import ADMIN_TOKEN_FILE_ENV, AUDIT_KEY_FILE_ENV, MASTER_KEY_FILE_ENV
from shared.logs import READY_MARKER
from tests.conftest import ROOT, stop_process, wait_for_line

MODULES = {
    "secrets": "services.secrets",
    "config": "services.config",
    "router": "services.router",
    "providers": "services.providers",
    "gateway": "services.gateway",
}


class Services:
    """Named service processes against one NATS URL, with their output kept for failure messages."""

    def __init__(self, nats_url: str, home: Path, config: Path) -> None:
        self.nats_url = nats_url
        self.home = home
        self.config = config
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.output: dict[str, list[str]] = {}
        home.mkdir(parents=True, exist_ok=True)
        self._keys = {
            MASTER_KEY_FILE_ENV: str(ensure_master_key(home)),
            AUDIT_KEY_FILE_ENV: str(ensure_audit_key(home)),
            ADMIN_TOKEN_FILE_ENV: str(ensure_admin_token(home)),
        }

    def start(
        self, name: str, kind: str, *args: str, timeout_s: float = 30.0, nats_url: str | None = None
    ) -> subprocess.Popen[str]:
        """Start service ``kind`` as ``name`` (on ``nats_url``, by default everyone's) and wait for its ready line."""
        env = {**os.environ, **self._keys, "NATS_URL": nats_url or self.nats_url, "PYTHONUNBUFFERED": "1"}
        extra = ["--config", str(self.config)] if kind == "config" else []
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULES[kind], *extra, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs[name] = proc
        self.output[name] = []
        wait_for_line(proc, lambda line: READY_MARKER in line, timeout_s, self.output[name])
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL one of our own processes and reap it."""
        proc = self.procs[name]
        proc.kill()
        proc.wait(10)

    def log(self, name: str) -> str:
        return "".join(self.output.get(name, []))

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                stop_process(proc)


@contextmanager
def services(nats_url: str, home: Path, config: Path, *, routers: int = 1, providers: int = 1) -> Iterator[Services]:
    """secrets, config, ``routers`` routers and ``providers`` provider workers, all ready."""
    s = Services(nats_url, home, config)
    try:
        s.start("secrets", "secrets")
        s.start("config", "config")
        for i in range(1, routers + 1):
            s.start(f"router-{i}", "router")
        for i in range(1, providers + 1):
            s.start(f"providers-{i}", "providers")
        yield s
    finally:
        s.stop()


def start_gateway(
    s: Services,
    keys_file: Path,
    *,
    name: str = "gateway",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> str:
    """Start an HTTP gateway as ``name`` on a free loopback port, with the key file ``keys_file``
    (``env`` adds or overrides variables); returns the URL its ready line names."""
    full_env = {
        **os.environ,
        "NATS_URL": s.nats_url,
        "PYTHONUNBUFFERED": "1",
        "MODELBUS_HTTP": "127.0.0.1:0",
        "MODELBUS_GATEWAY_KEYS": str(keys_file),
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULES["gateway"]],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    s.procs[name] = proc
    s.output[name] = []
    line = wait_for_line(proc, lambda text: READY_MARKER in text, timeout_s, s.output[name])
    return line.split("http=", 1)[1].split()[0]


def write_gateway_keys(path: Path, keys: Mapping[str, str]) -> None:
    """Write a gateway key file holding the SHA-256 of each ``{name: key}``, atomically (a rename),
    as the gateway expects of anyone who edits it."""
    entries = [
        {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "created": "2025-01-01T00:00:00Z"}
        for name, key in keys.items()
    ]
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps({"keys": entries}))
    os.replace(partial, path)
