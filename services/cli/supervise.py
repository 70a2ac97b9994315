"""Supervision for ``modelbus up``: restart what crashed, give up on a crash loop, name the cause.

The rules (each number is a constant in :mod:`services.cli.processes`):

* A process that exits while the stack runs is restarted after a backoff of
  :data:`BACKOFF_INITIAL_S`, doubling on each exit up to :data:`BACKOFF_MAX_S`;
  once it has run :data:`BACKOFF_RESET_AFTER_S`, its next backoff starts small again.
  One process dying never stops the others.
* A process that exits :data:`CRASH_LOOP_EXITS` times within
  :data:`CRASH_LOOP_WINDOW_S` is in a crash loop: the supervisor gives up and
  stops the whole stack with exit status 1, naming the process, the count, its
  last status and its last log lines.
* While the stack starts (before its ``ready`` line) any exit stops it at once:
  a broken configuration fails fast instead of being retried.
* The embedded nats-server (each node of a cluster) follows the same rules and
  is restarted on its port and store. While it is down the services reconnect
  by themselves and are not restarted for it; a service that exits anyway within
  :data:`CONSEQUENCE_WINDOW_S` of a nats-server death is reported as its
  consequence, after the death itself.
* On SIGINT/SIGTERM the services stop in tiers (routers, provider workers,
  config, secrets), then nats-server; nothing is restarted during a shutdown.
  Children run in their own process group, so a Ctrl-C in the terminal reaches
  only the supervisor, which then stops them in that order.

The state of every process is written to ``processes.json`` (0600) in the data
directory on each change and every :data:`STATUS_INTERVAL_S`, for ``modelbus status``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from services.cli.processes import (
    CONSEQUENCE_WINDOW_S,
    NATS_POLL_S,
    STATUS_INTERVAL_S,
    NatsProcess,
    StartInterrupted,
    State,
    Supervised,
)
from shared.keyfile import write_private_file
from shared.natsserver import NatsServerError, describe_status


class Supervisor:
    """Keeps every process of the stack running by the rules in the module docstring."""

    def __init__(
        self,
        *,
        status_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.processes: list[Supervised] = []
        self.status_file = status_file
        self.clock = clock
        self.say = out or (lambda text: print(f"[modelbus] {text}", flush=True))
        self.stack_ready = False
        """Set once the stack printed its ready line: from then on, exits are restarted."""
        self.stopping = False
        self.failure = ""
        self.failed = asyncio.Event()
        self._keepers: list[asyncio.Task[None]] = []
        self._nats_deaths: dict[str, float] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ starting

    def _register(self, proc: Supervised) -> None:
        proc.on_change = self.write_status
        self.processes.append(proc)
        if self._heartbeat is None and self.status_file is not None:
            self._heartbeat = asyncio.create_task(self._write_periodically())

    async def start(self, proc: Supervised) -> None:
        """Launch ``proc`` and keep it running."""
        self._register(proc)
        await self._launch(proc)
        self._keepers.append(asyncio.create_task(self._keep(proc)))

    def adopt(self, proc: NatsProcess) -> None:
        """Keep running a nats-server that was started (and is ready) already."""
        self._register(proc)
        proc.started_at, proc.started_wall = self.clock(), time.time()
        proc.ready.set()
        proc.set_state(State.RUNNING)
        self._keepers.append(asyncio.create_task(self._keep(proc)))

    async def _launch(self, proc: Supervised) -> str | None:
        """Start a run of ``proc``; why it could not start, or ``None``."""
        proc.started_at, proc.started_wall = self.clock(), time.time()
        proc.set_state(State.STARTING)
        try:
            await proc.launch()
        except (OSError, NatsServerError) as exc:
            return f"could not start: {exc}"
        return None

    async def wait_ready(
        self, procs: Iterable[Supervised], timeout_s: float, *, stop: asyncio.Event | None = None
    ) -> None:
        """Wait until each of ``procs`` is serving; raise ``RuntimeError`` if one fails or time runs out,
        :class:`StartInterrupted` if ``stop`` is set first (SIGINT/SIGTERM while starting)."""
        waiting = {asyncio.create_task(p.ready.wait()): p for p in procs}
        failed = asyncio.create_task(self.failed.wait())
        stopped = asyncio.create_task((stop or asyncio.Event()).wait())
        try:
            pending = set(waiting)
            deadline = self.clock() + timeout_s
            while pending:
                left = deadline - self.clock()
                if left <= 0:
                    raise RuntimeError(
                        f"not ready after {timeout_s:.0f}s: {', '.join(waiting[t].name for t in pending)}"
                    )
                done, _ = await asyncio.wait(
                    pending | {failed, stopped}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if failed in done:
                    raise RuntimeError(self.failure)
                if stopped in done:
                    raise StartInterrupted("stopped while starting")
                pending -= done
        finally:
            for task in [*waiting, failed, stopped]:
                task.cancel()

    # ------------------------------------------------------------ keeping

    async def _keep(self, proc: Supervised) -> None:
        """Watch ``proc`` and restart it by the rules, until the stack stops or gives up on it."""
        launch_error: str | None = None
        while True:
            status: int | None = None
            if launch_error is None:
                status = await proc.wait_exit()
            if self.stopping:
                proc.set_state(State.STOPPED)
                return
            if proc.kind != NatsProcess.kind and any(
                isinstance(p, NatsProcess) and p.died_unnoticed() for p in self.processes
            ):
                await asyncio.sleep(NATS_POLL_S * 4)  # let the nats-server death be reported first
            now = self.clock()
            ran_s = now - proc.started_at
            ended = launch_error or f"exited with status {describe_status(status)}"
            proc.last_exit = launch_error or describe_status(status)
            if isinstance(proc, NatsProcess):
                self._nats_deaths[proc.name] = now
            cause = self._cause(proc, now)
            if not self.stack_ready:
                self._give_up(proc, f"{proc.name} {ended}{cause} while the stack was starting")
                return
            delay = proc.tracker.record_exit(ran_s=ran_s, now=now)
            if delay is None:
                window = proc.tracker.policy.loop_window_s
                self._give_up(
                    proc,
                    f"giving up on {proc.name}: it exited {proc.tracker.recent_exits} times within {window:g}s "
                    f"(crash loop; last status {proc.last_exit}){cause}",
                )
                return
            proc.set_state(State.BACKOFF)
            self.say(f"{proc.name} {ended} after {ran_s:.1f}s{cause}; restart {proc.restarts + 1} in {delay:g}s")
            if isinstance(proc, NatsProcess):
                self._show_tail(proc)
            await asyncio.sleep(delay)
            if self.stopping:
                proc.set_state(State.STOPPED)
                return
            proc.restarts += 1
            launch_error = await self._launch(proc)

    def _cause(self, proc: Supervised, now: float) -> str:
        """`` after nats-server died 0.4s earlier`` when a nats-server death explains ``proc``'s exit."""
        if isinstance(proc, NatsProcess):
            return ""
        recent = [(now - at, name) for name, at in self._nats_deaths.items() if now - at <= CONSEQUENCE_WINDOW_S]
        if not recent:
            return ""
        ago, name = min(recent)
        return f" after {name} died {ago:.1f}s earlier"

    def _show_tail(self, proc: Supervised) -> None:
        lines = proc.tail()
        if lines:
            where = proc.server.log_file if isinstance(proc, NatsProcess) else proc.name
            self.say(f"last lines of {where}:\n" + "\n".join(f"  | {line}" for line in lines))

    def _give_up(self, proc: Supervised, message: str) -> None:
        proc.set_state(State.FAILED)
        lines = proc.tail()
        if lines:
            message += f"\nits last {len(lines)} log lines:\n" + "\n".join(f"  | {line}" for line in lines)
        if not self.failure:
            self.failure = message
        self.failed.set()

    async def run(self, stop: asyncio.Event) -> int:
        """Wait for ``stop`` (a signal) or a give-up; 0 for the former, 1 (after printing why) for the latter."""
        self.stack_ready = True
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(self.failed.wait())
        try:
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
        if self.failed.is_set():
            print(f"error: {self.failure}", file=sys.stderr, flush=True)
            return 1
        return 0

    # ------------------------------------------------------------ stopping

    async def shutdown(self, tiers: Iterable[Iterable[Supervised]]) -> None:
        """Stop restarting, then stop each tier in turn (each process in a tier at once)."""
        self.stopping = True
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        for tier in tiers:
            procs = list(tier)
            await asyncio.gather(*(p.terminate() for p in procs), return_exceptions=True)
            for proc in procs:
                if proc.state is not State.FAILED:  # the one given up on stays marked as such
                    proc.state = State.STOPPED
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self.write_status()

    # ------------------------------------------------------------ status

    def write_status(self) -> None:
        """Write ``processes.json`` (0600, atomically) for ``modelbus status``."""
        if self.status_file is None:
            return
        now = time.time()
        body = {
            "supervisor_pid": os.getpid(),
            "updated_at": now,
            "processes": [p.record(now) for p in self.processes],
        }
        try:
            write_private_file(self.status_file, json.dumps(body, indent=2).encode())
        except OSError as exc:  # status is for people; the stack keeps running without it
            print(f"[modelbus] warning: cannot write {self.status_file}: {exc}", file=sys.stderr, flush=True)

    async def _write_periodically(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(STATUS_INTERVAL_S)
