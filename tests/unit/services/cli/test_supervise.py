"""Supervision rules of `modelbus up`: backoff, crash loops, causes, status, shutdown.

The rules are checked with explicit times; the supervisor itself runs tiny
real processes (``python -c``), with a fast policy so each test takes well under
a second or two.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from services.cli.processes import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    CRASH_LOOP_EXITS,
    CRASH_LOOP_WINDOW_S,
    NatsProcess,
    RestartPolicy,
    RestartTracker,
    ServiceProcess,
    State,
    tail_file,
)
from services.cli.supervise import Supervisor
from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats
from tests.conftest import run

FAST = RestartPolicy(initial_s=0.01, max_s=0.04, reset_after_s=30.0, loop_exits=4, loop_window_s=60.0)


# ---------------------------------------------------------------- the rules, on an explicit clock


def test_the_backoff_starts_at_a_quarter_second_and_doubles_up_to_eight_seconds() -> None:
    tracker = RestartTracker(RestartPolicy(loop_exits=100))
    delays = [tracker.record_exit(ran_s=1.0, now=float(i)) for i in range(8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert (BACKOFF_INITIAL_S, BACKOFF_MAX_S) == (0.25, 8.0)


def test_a_process_that_ran_thirty_seconds_restarts_after_the_shortest_backoff_again() -> None:
    tracker = RestartTracker(RestartPolicy())
    assert [tracker.record_exit(ran_s=1.0, now=t) for t in (0.0, 1.0, 2.0)] == [0.25, 0.5, 1.0]
    assert tracker.record_exit(ran_s=30.0, now=100.0) == 0.25
    assert tracker.record_exit(ran_s=1.0, now=101.0) == 0.5


def test_the_fifth_exit_within_a_minute_is_a_crash_loop() -> None:
    assert (CRASH_LOOP_EXITS, CRASH_LOOP_WINDOW_S) == (5, 60.0)
    tracker = RestartTracker(RestartPolicy())
    assert all(tracker.record_exit(ran_s=0.5, now=t) is not None for t in (0.0, 10.0, 20.0, 30.0))
    assert tracker.record_exit(ran_s=0.5, now=59.0) is None
    assert tracker.recent_exits == 5


def test_exits_spread_over_more_than_the_window_are_never_a_crash_loop() -> None:
    tracker = RestartTracker(RestartPolicy())
    assert all(tracker.record_exit(ran_s=5.0, now=t * 16.0) is not None for t in range(50))
    assert tracker.recent_exits == 4


# ---------------------------------------------------------------- the supervisor, with real processes


def _py(code: str, name: str = "svc") -> ServiceProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return ServiceProcess(name, [sys.executable, "-c", code], env, FAST)


SERVE = f"import sys, time; print('{READY_MARKER} x', file=sys.stderr, flush=True); time.sleep(60)"
"""A service that says it is ready and then serves until stopped."""


class Said:
    """What the supervisor said, one entry per message."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)

    def text(self) -> str:
        return "\n".join(self.lines)


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_a_service_that_dies_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        said = Said()
        sup = Supervisor(status_file=tmp_path / "processes.json", out=said)
        keeper, victim = _py(SERVE, "keeper"), _py(SERVE, "victim")
        for proc in (keeper, victim):
            await sup.start(proc)
        await sup.wait_ready([keeper, victim], 20)
        sup.stack_ready = True
        first_pid, keeper_pid = victim.pid, keeper.pid
        assert victim.process is not None
        victim.process.kill()
        await _until(lambda: victim.restarts == 1 and victim.state is State.RUNNING)
        assert victim.pid != first_pid and keeper.pid == keeper_pid and keeper.state is State.RUNNING
        assert victim.last_exit == "-9 (killed by SIGKILL)"
        assert "victim exited with status -9 (killed by SIGKILL) after" in said.text()
        assert "; restart 1 in 0.01s" in said.text()
        await sup.shutdown([[keeper, victim]])
        assert {keeper.state, victim.state} == {State.STOPPED}

    run(scenario())


def test_a_crash_loop_gives_up_naming_the_process_the_count_its_status_and_its_last_lines(tmp_path: Path) -> None:
    async def scenario() -> int:
        sup = Supervisor(status_file=tmp_path / "processes.json", out=Said())
        sup.stack_ready = True
        loop = _py("import sys; print('cannot read /etc/route.yaml', flush=True); sys.exit(3)", "config")
        await sup.start(loop)
        status = await asyncio.wait_for(sup.run(asyncio.Event()), 10)
        table = json.loads((tmp_path / "processes.json").read_text())
        assert table["processes"][0]["state"] == "failed"
        await sup.shutdown([[loop]])
        assert "giving up on config: it exited 4 times within 60s (crash loop; last status 3)" in sup.failure
        assert "  | cannot read /etc/route.yaml" in sup.failure
        assert loop.restarts == 3 and loop.state is State.FAILED
        return status

    assert run(scenario()) == 1


def test_an_exit_while_the_stack_starts_fails_at_once_with_the_last_lines() -> None:
    async def scenario() -> None:
        sup = Supervisor(out=Said())
        proc = _py("import sys; print('invalid configuration: spec.x: bad', flush=True); sys.exit(2)", "config")
        await sup.start(proc)
        with pytest.raises(RuntimeError) as caught:
            await sup.wait_ready([proc], 10)
        assert "config exited with status 2 while the stack was starting" in str(caught.value)
        assert "invalid configuration: spec.x: bad" in str(caught.value)
        assert proc.restarts == 0
        await sup.shutdown([[proc]])

    run(scenario())


def test_nothing_is_restarted_during_a_shutdown(tmp_path: Path) -> None:
    async def scenario() -> None:
        said = Said()
        sup = Supervisor(status_file=tmp_path / "processes.json", out=said)
        procs = [_py(SERVE, f"svc-{i}") for i in range(3)]
        for proc in procs:
            await sup.start(proc)
        await sup.wait_ready(procs, 20)
        sup.stack_ready = True
        pids = [p.pid for p in procs]
        await sup.shutdown([procs[:1], procs[1:]])
        assert [p.pid for p in procs] == pids and all(p.restarts == 0 for p in procs)
        assert all(p.process is not None and p.process.returncode == -15 for p in procs)
        assert "restart" not in said.text()
        table = json.loads((tmp_path / "processes.json").read_text())
        assert [p["state"] for p in table["processes"]] == ["stopped"] * 3

    run(scenario())


def test_a_dead_nats_server_is_named_first_and_a_service_exit_after_it_is_its_consequence(tmp_path: Path) -> None:
    async def scenario() -> None:
        said = Said()
        sup = Supervisor(out=said)
        server = EmbeddedNats(tmp_path / "nats", log_file=tmp_path / "nats.log")
        url = server.start()
        nats = NatsProcess("nats-server", server, FAST)
        sup.adopt(nats)
        service = _py(SERVE, "config")
        await sup.start(service)
        await sup.wait_ready([service], 20)
        sup.stack_ready = True
        server.kill()
        assert service.process is not None
        service.process.terminate()  # the service gives up on its connection right after
        await _until(lambda: service.restarts == 1 and nats.restarts == 1 and nats.state is State.RUNNING)
        text = said.text()
        assert text.index("nats-server exited with status -9 (killed by SIGKILL)") < text.index("config exited")
        assert "config exited with status -15 (killed by SIGTERM) after" in text
        assert "after nats-server died" in text and "s earlier; restart 1 in" in text
        assert f"last lines of {tmp_path / 'nats.log'}" in text
        assert server.url == url and server.alive
        await sup.shutdown([[service], [nats]])
        assert not server.alive

    run(scenario())


def test_the_status_file_is_private_and_lists_state_pid_and_restarts(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "processes.json"
        sup = Supervisor(status_file=path, out=Said())
        proc = _py(SERVE, "router")
        await sup.start(proc)
        await sup.wait_ready([proc], 20)
        table = json.loads(path.read_text())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert table["supervisor_pid"] == os.getpid()
        (row,) = table["processes"]
        assert row["name"] == "router" and row["state"] == "running" and row["pid"] == proc.pid
        assert row["restarts"] == 0 and row["last_exit"] is None and row["started_at"] > 0
        await sup.shutdown([[proc]])

    run(scenario())


def test_the_tail_of_a_log_file_is_its_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_file(log, 3) == ["line 97", "line 98", "line 99"]
    assert tail_file(tmp_path / "missing.log", 3) == []
