"""`modelbus up` keeps its stack running: a killed service or nats-server is restarted, a crash loop stops it.

Each test runs a real `modelbus up` (secure, on free ports) with its own data
directory. The PIDs it kills come from the `processes.json` of the supervisor
this test started, so only processes of that stack are ever signalled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest

from shared.client import ModelbusClient
from shared.errors import ModelbusError
from shared.natsserver import die_with_parent, port_in_use
from tests.conftest import ROOT, run

T = TypeVar("T")

MODELBUS = [sys.executable, "-m", "services.cli"]
EXAMPLE = ROOT / "services" / "config" / "example.yaml"


class Up:
    """A running `modelbus up` and everything it printed."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODELBUS_ADMIN_HTTP": "off", "MODELBUS_LOG_LEVEL": "WARNING"}
        env.pop("NATS_URL", None)
        self.proc = subprocess.Popen(
            [*MODELBUS, "--data-dir", str(home), "up", "--nats-port", "0", "--http-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env,
            preexec_fn=die_with_parent,
        )
        self.output: list[str] = []
        self._ready = threading.Event()
        self.ready = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if not self.ready and line.startswith("ready "):
                self.ready = line
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout_s: float = 60) -> Up:
        if not self._ready.wait(timeout_s) or not self.ready:
            raise AssertionError("modelbus up did not get ready:\n" + self.log()[-6000:])
        return self

    def log(self) -> str:
        return "".join(self.output)

    @property
    def urls(self) -> list[str]:
        match = re.search(r"\bnats=(\S+)", self.ready)
        assert match, self.ready
        return match.group(1).split(",")

    @property
    def creds(self) -> str:
        match = re.search(r"\bcreds=(\S+)", self.ready)
        assert match, self.ready
        return match.group(1)

    def processes(self) -> dict[str, dict[str, Any]]:
        """The supervisor's process table, by name."""
        table = json.loads((self.home / "processes.json").read_text())
        return {p["name"]: p for p in table["processes"]}

    def kill(self, name: str) -> int:
        """SIGKILL the process ``name`` of this stack (its PID from this stack's own table)."""
        pid = int(self.processes()[name]["pid"])
        assert pid not in (os.getpid(), self.proc.pid)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout_s: float = 20) -> dict[str, Any]:
        def restarted() -> dict[str, Any] | None:
            row = self.processes().get(name)
            if row and row["state"] == "running" and row["pid"] not in (None, old_pid) and row["restarts"] >= 1:
                return row
            return None

        return until(restarted, timeout_s, lambda: self.log()[-4000:])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        return subprocess.run(
            [*MODELBUS, "--data-dir", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=env,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def until(check: Callable[[], T | None], timeout_s: float, detail: Callable[[], str] = lambda: "") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``detail()`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s\n{detail()}")
        time.sleep(0.05)


async def _complete(creds: str, text: str, timeout_s: float = 5.0) -> str:
    client = await ModelbusClient.connect(creds=creds)
    try:
        body = {"model": "default", "messages": [{"role": "user", "content": text}]}
        completion, _ = await client.complete(body, timeout=timeout_s)
        return completion.choices[0].message.content or ""
    finally:
        await client.close()


def answers(up: Up, text: str) -> bool:
    """One completion through the stack, as its default application."""
    try:
        return text in run(_complete(up.creds, text))
    except (TimeoutError, ModelbusError, OSError):
        return False


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


@pytest.fixture
def stacks() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.stop()


@pytest.mark.timeout(90)
def test_a_killed_router_is_restarted_and_the_stack_keeps_answering(home: Path, stacks: list[Up]) -> None:
    up = Up(home, "--routers", "2")
    stacks.append(up)
    up.wait_ready()
    assert answers(up, "before the kill")
    old = up.kill("router-1")
    assert answers(up, "router-2 alone")  # the survivor answers while router-1 is down
    row = up.wait_restarted("router-1", old)
    assert row["last_exit"] == "-9 (killed by SIGKILL)"
    assert re.search(
        r"router-1 exited with status -9 \(killed by SIGKILL\) after [\d.]+s; restart 1 in 0\.25s", up.log()
    )
    for i in range(5):
        assert answers(up, f"after the restart {i}")
    status = json.loads(up.cli("status", "-o", "json").stdout)
    by_name = {p["name"]: p for p in status["processes"]}
    assert by_name["router-1"]["restarts"] == 1 and by_name["router-2"]["restarts"] == 0
    assert by_name["nats-server"]["state"] == "running" and by_name["router-1"]["uptime_s"] >= 0
    text = up.cli("status").stdout
    assert re.search(r"router-1\s+running\s+\d+\s+\S+\s+1\s+-9 \(killed by SIGKILL\)", text), text
    mark = len(up.output)
    assert up.stop() == 0
    shutdown = "".join(up.output[mark:])
    assert "Traceback" not in shutdown, shutdown
    assert not (home / "processes.json").exists() and not (home / "run.json").exists()
    assert "no modelbus stack found" in up.cli("status").stderr


@pytest.mark.timeout(90)
def test_a_killed_nats_server_comes_back_on_its_port_with_the_configuration(home: Path, stacks: list[Up]) -> None:
    up = Up(home)
    stacks.append(up)
    up.wait_ready()
    alias = home / "alias.yaml"
    alias.write_text(
        "apiVersion: modelbus.dev/v1\nkind: ModelAlias\nmetadata:\n  name: survivor\n"
        "spec:\n  targets:\n    - endpoint: mock\n      model: mock-survivor\n"
    )
    assert up.cli("apply", "-f", str(alias)).returncode == 0
    (url,) = up.urls
    old = up.kill("nats-server")
    row = up.wait_restarted("nats-server", old)
    assert row["url"] == url and port_in_use("127.0.0.1", int(url.rpartition(":")[2]))
    assert "nats-server exited with status -9 (killed by SIGKILL)" in up.log()
    until(lambda: "survivor" in up.cli("get", "aliases").stdout, 20, up.log)
    until(lambda: answers(up, "after the nats restart"), 20, up.log)
    services = {name: p for name, p in up.processes().items() if p["kind"] == "service"}
    assert all(p["restarts"] == 0 for p in services.values()), services  # they reconnected by themselves


@pytest.mark.timeout(90)
def test_a_crash_loop_stops_the_stack_naming_the_child_its_status_and_its_last_lines(
    home: Path, stacks: list[Up]
) -> None:
    config = home / "routing.yaml"
    config.write_text(EXAMPLE.read_text())
    up = Up(home, "--config", str(config))
    stacks.append(up)
    up.wait_ready()
    config.write_text("kind: [this is not a configuration\n")  # every new config process refuses it
    up.kill("config")
    try:
        status = up.proc.wait(45)
    except subprocess.TimeoutExpired:
        raise AssertionError("the stack did not give up:\n" + up.log()[-6000:]) from None
    log = up.log()
    assert status == 1, log[-4000:]
    assert re.search(r"error: giving up on config: it exited 5 times within 60s \(crash loop; last status 2\)", log), (
        log
    )
    assert re.search(r"its last \d+ log lines:\n(  \| .*\n)*  \| .*invalid configuration", log), log[-4000:]
    for n in range(1, 5):
        assert f"; restart {n} in" in log
    assert not (home / "run.json").exists()


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_three_node_cluster_starts_and_answers_after_a_node_is_killed(home: Path, stacks: list[Up]) -> None:
    up = Up(home, "--cluster", "3")
    stacks.append(up)
    up.wait_ready(90)
    assert len(up.urls) == 3 and len(set(up.urls)) == 3
    run_info = json.loads((home / "run.json").read_text())
    assert run_info["nats_urls"] == up.urls and run_info["cluster"] == 3
    assert [n for n in up.processes() if n.startswith("nats-")] == ["nats-1", "nats-2", "nats-3"]
    assert answers(up, "three nodes")
    old = up.kill("nats-1")
    killed_at = time.monotonic()
    until(lambda: answers(up, "two nodes"), 15, up.log)
    recovered_s = time.monotonic() - killed_at
    row = up.wait_restarted("nats-1", old)
    assert row["url"] == up.urls[0]
    assert (home / "nats" / "node-1" / "jetstream").is_dir()
    until(lambda: "default" in up.cli("get", "aliases").stdout, 15, up.log)
    created = up.cli("create", "client", "app1")
    assert created.returncode == 0, created.stderr
    login = json.loads((home / "clients" / "app1.json").read_text())
    for url in up.urls:  # the new identity was loaded by every node, the restarted one included
        run(_connect_as(url, login))
    print(f"answered again {recovered_s:.2f}s after the node was killed")


async def _connect_as(url: str, login: dict[str, str]) -> None:
    nc = await nats.connect(
        url, user=login["user"], password=login["password"], max_reconnect_attempts=0, allow_reconnect=False
    )
    await nc.close()
