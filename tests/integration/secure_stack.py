"""A real ``modelbus up`` in its default secure mode, for attack tests.

``start_secure_stack`` runs the CLI as a subprocess on a free port with its
own data directory, waits for the ``ready`` line, and keeps every output line
(``SecureStack.output``) so tests can assert what a service logged. Logins
for every identity come from the stack's own ``identities.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from shared import identities
from shared.natsserver import die_with_parent
from tests.conftest import ROOT


class SecureStack:
    """Handles to a running secure stack."""

    def __init__(self, proc: subprocess.Popen[str], url: str, home: Path, ready: str, output: list[str]) -> None:
        self.proc, self.url, self.home, self.ready, self.output = proc, url, home, ready, output
        self.passwords: dict[str, str] = json.loads((home / identities.IDENTITIES_FILE).read_text())

    def login(self, role: str) -> dict[str, Any]:
        """``nats.connect`` keyword arguments for ``role``."""
        return {"user": role, "password": self.passwords[role], "inbox_prefix": identities.inbox_prefix(role)}

    async def connect(self, role: str, errors: list[str] | None = None) -> Client:
        """A connection as ``role``; broker errors are appended to ``errors``."""

        async def error_cb(err: Exception) -> None:
            if errors is not None:
                errors.append(str(err))

        return await nats.connect(self.url, error_cb=error_cb, max_reconnect_attempts=0, **self.login(role))

    def log_since(self, mark: int) -> str:
        """Everything the stack printed after ``mark`` (a ``len(output)`` taken earlier)."""
        return "".join(self.output[mark:])


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)


@contextmanager
def start_secure_stack(
    home: Path, *extra: str, env: Mapping[str, str] | None = None, timeout_s: float = 90
) -> Iterator[SecureStack]:
    """``modelbus up`` (secure) with ``--data-dir home``; stopped by its own PID at exit."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODELBUS_ADMIN_HTTP": "off", **(env or {})}
    full_env.pop("NATS_URL", None)
    ports = ["--nats-port", "0", "--http-port", "0"]  # free ones: never a port another stack may hold
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "--data-dir", str(home), "up", *ports, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=full_env,
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    ready_box: list[str] = []
    got_ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if not ready_box and line.startswith("ready "):
                ready_box.append(line)
                got_ready.set()
        got_ready.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        if not got_ready.wait(timeout_s) or not ready_box:
            raise RuntimeError("secure stack did not get ready:\n" + "".join(output[-80:]))
        url = re.search(r"nats=(\S+)", ready_box[0]).group(1)  # type: ignore[union-attr]
        yield SecureStack(proc, url, home, ready_box[0], output)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
