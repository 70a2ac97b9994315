"""The processes ``modelbus up`` supervises, and the numbers of its restart rules.

:class:`ServiceProcess` is one service child (its output prefixed into the
log), :class:`NatsProcess` the embedded nats-server or one node of a local
cluster (restarted on its port and store); :class:`RestartTracker` keeps one
process's backoff and crash-loop count. The rules themselves are in
:mod:`services.cli.supervise`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats, NatsServerError, die_with_parent, port_in_use

BACKOFF_INITIAL_S = 0.25
"""The wait before the first restart of a process."""
BACKOFF_MAX_S = 8.0
"""The backoff doubles on each exit up to this."""
BACKOFF_RESET_AFTER_S = 30.0
"""A process that ran this long before exiting is restarted after :data:`BACKOFF_INITIAL_S` again."""
CRASH_LOOP_EXITS = 5
"""This many exits of one process within :data:`CRASH_LOOP_WINDOW_S` is a crash loop: the stack stops."""
CRASH_LOOP_WINDOW_S = 60.0
CONSEQUENCE_WINDOW_S = 5.0
"""A service exit this soon after a nats-server death is reported as its consequence."""
STATUS_INTERVAL_S = 2.0
"""How often ``processes.json`` is rewritten when nothing changes (``updated_at`` shows it is current)."""
STOP_GRACE_S = 10.0
"""How long a process may take to stop after SIGTERM before it gets SIGKILL."""
LOG_TAIL_LINES = 12
"""How many of a process's last log lines a crash-loop or start-up failure shows."""
NATS_POLL_S = 0.05
"""How often the supervisor checks whether a nats-server it owns still runs."""
NATS_READY_TIMEOUT_S = 15.0
PORT_FREE_TIMEOUT_S = 5.0
LINE_LIMIT = 1024 * 1024
"""Longest log line read from a child in one piece."""


class StartInterrupted(Exception):
    """SIGINT or SIGTERM arrived before the stack was ready: stop without an error."""


class State(StrEnum):
    """Where a supervised process is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """The restart rules' numbers (the module constants by default; tests use smaller ones)."""

    initial_s: float = BACKOFF_INITIAL_S
    """First backoff."""
    max_s: float = BACKOFF_MAX_S
    """Largest backoff."""
    reset_after_s: float = BACKOFF_RESET_AFTER_S
    """A run at least this long resets the backoff."""
    loop_exits: int = CRASH_LOOP_EXITS
    """Exits within :attr:`loop_window_s` that make a crash loop."""
    loop_window_s: float = CRASH_LOOP_WINDOW_S
    """The crash-loop window."""


class RestartTracker:
    """Backoff and crash-loop bookkeeping of one process; times come from the caller's clock."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.next_delay_s = policy.initial_s
        self._exits: deque[float] = deque()

    @property
    def recent_exits(self) -> int:
        """Exits counted in the crash-loop window as of the last :meth:`record_exit`."""
        return len(self._exits)

    def record_exit(self, *, ran_s: float, now: float) -> float | None:
        """Count an exit after a run of ``ran_s``; the backoff before the restart, or ``None`` for a crash loop."""
        if ran_s >= self.policy.reset_after_s:
            self.next_delay_s = self.policy.initial_s
        self._exits.append(now)
        while self._exits and now - self._exits[0] > self.policy.loop_window_s:
            self._exits.popleft()
        if len(self._exits) >= self.policy.loop_exits:
            return None
        delay = self.next_delay_s
        self.next_delay_s = min(delay * 2, self.policy.max_s)
        return delay


class Supervised(ABC):
    """One process the supervisor keeps running."""

    kind = "service"

    def __init__(self, name: str, policy: RestartPolicy) -> None:
        self.name = name
        self.state = State.STARTING
        self.restarts = 0
        self.started_at = 0.0
        """When the current run started, on the supervisor's clock."""
        self.started_wall: float | None = None
        self.last_exit: str | None = None
        """How the last run ended (``-9 (killed by SIGKILL)``, ``1``, or why it could not start)."""
        self.tracker = RestartTracker(policy)
        self.ready = asyncio.Event()
        self.on_change: Callable[[], None] = lambda: None

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The current process's PID."""

    @abstractmethod
    async def launch(self) -> None:
        """Start a new run (raises ``OSError`` or :class:`NatsServerError` when it cannot)."""

    @abstractmethod
    async def wait_exit(self) -> int:
        """Wait until the current run ends; its exit status."""

    @abstractmethod
    def tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The process's last log lines."""

    @abstractmethod
    async def terminate(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the current run, SIGKILL it after ``grace_s``."""

    def set_state(self, state: State) -> None:
        """Record a new state and have the status file rewritten."""
        self.state = state
        self.on_change()

    def record(self, now_wall: float) -> dict[str, Any]:
        """This process for ``processes.json``."""
        live = self.state in (State.STARTING, State.RUNNING)
        return {
            "name": self.name,
            "kind": self.kind,
            "state": str(self.state),
            "pid": self.pid if live else None,
            "started_at": self.started_wall if live else None,
            "uptime_s": round(now_wall - self.started_wall, 1) if live and self.started_wall else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class ServiceProcess(Supervised):
    """A modelbus service: its output is prefixed with its name, its ready line marks it running."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], policy: RestartPolicy | None = None) -> None:
        super().__init__(name, policy or RestartPolicy())
        self.argv = argv
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.ready_line = ""
        """The service's ready line of its first run (the config service's names the admin API's address)."""
        self._pump: asyncio.Task[None] | None = None
        self._lines: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def launch(self) -> None:
        self.ready.clear()
        self._lines.clear()  # the tail shown on a failure is the last run's
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            limit=LINE_LIMIT,
            # Its own session (and process group): a terminal's Ctrl-C reaches only the
            # supervisor, which stops the services before the nats-server they need to stop cleanly.
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._pump = asyncio.create_task(self._copy_output(self.process))

    async def _copy_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"[{self.name}] ".encode()
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # longer than LINE_LIMIT: dropped, and said so
                line = b"(a log line longer than 1 MiB was dropped)\n"
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self._lines.append(text)
            if READY_MARKER in text and not self.ready.is_set():
                self.ready_line = self.ready_line or text
                self.ready.set()
                self.set_state(State.RUNNING)
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()

    async def wait_exit(self) -> int:
        assert self.process is not None
        status = await self.process.wait()
        if self._pump is not None:  # its last lines, for the report
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
            except TimeoutError:
                pass
        return status

    def tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        return list(self._lines)[-lines:]

    async def terminate(self, grace_s: float = STOP_GRACE_S) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), grace_s)
        except ProcessLookupError:
            pass
        except TimeoutError:
            proc.kill()
            await proc.wait()


class NatsProcess(Supervised):
    """An embedded nats-server (or one node of a cluster), restarted on its own port and store."""

    kind = "nats-server"

    def __init__(self, name: str, server: EmbeddedNats, policy: RestartPolicy | None = None) -> None:
        super().__init__(name, policy or RestartPolicy())
        self.server = server

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def record(self, now_wall: float) -> dict[str, Any]:
        return {**super().record(now_wall), "url": f"nats://{self.server.host}:{self.server.port}"}

    def died_unnoticed(self) -> bool:
        """Whether the server exited and its keeper has not reported it yet."""
        return self.state is State.RUNNING and not self.server.alive

    async def launch(self) -> None:
        server = self.server
        deadline = time.monotonic() + PORT_FREE_TIMEOUT_S
        while port_in_use(server.host, server.port):
            if time.monotonic() >= deadline:
                raise NatsServerError(f"port {server.port} is taken by another process")
            await asyncio.sleep(NATS_POLL_S)
        server.launch()  # in the event loop's (main) thread: the parent-death signal follows it
        deadline = time.monotonic() + NATS_READY_TIMEOUT_S
        while not server.poll_ready():
            if time.monotonic() >= deadline:
                await asyncio.to_thread(server.stop)
                raise NatsServerError(f"did not accept connections within {NATS_READY_TIMEOUT_S:g}s")
            await asyncio.sleep(0.02)
        self.ready.set()
        self.set_state(State.RUNNING)

    async def wait_exit(self) -> int:
        while self.server.alive:  # noqa: ASYNC110 - a Popen child has no awaitable exit; polling is its wait
            await asyncio.sleep(NATS_POLL_S)
        status = self.server.returncode
        return -1 if status is None else status

    def tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        return tail_file(self.server.log_file, lines) if self.server.log_file else []

    async def terminate(self, grace_s: float = STOP_GRACE_S) -> None:
        await asyncio.to_thread(self.server.stop, grace_s)


def tail_file(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file (empty when it cannot be read)."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
