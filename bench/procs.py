"""Linux process facts from ``/proc``: the process tree, command lines, resident memory.

Used to find every process of a modelbus stack (the descendants of its
``modelbus up``), to sample their RSS, and to check that the benchmark
leaves no child behind. Processes may exit between two reads, so every
reader tolerates a vanished pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def parent_of(pid: int) -> int | None:
    """The parent pid, or ``None`` if the process is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces
    # or parentheses: the fields after the last ")" are state, then ppid.
    return int(stat.rpartition(")")[2].split()[1])


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            found.append(int(entry.name))
    return sorted(found)


def descendants_of(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid``, parents before their children."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            ppid = parent_of(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    out: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop(0)
        kids = sorted(child for child, parent in parents.items() if parent == current)
        out.extend(kids)
        frontier.extend(kids)
    return out


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (all its threads), 0.0 once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    # After the command name: state(0) ppid(1) ... utime(11) stime(12), per proc(5).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every descendant alive now (the contender's whole process tree)."""
    return sum(cpu_seconds(p) for p in (pid, *descendants_of(pid)))


def command_line(pid: int) -> list[str]:
    """The argv of ``pid`` (empty if it is gone)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def rss_mb(pid: int) -> float | None:
    """Resident set size (``VmRSS``) in MiB, or ``None`` if the process is gone."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return None


def python_module(argv: list[str]) -> str | None:
    """The module of a ``python -m module ...`` command line."""
    if "-m" in argv:
        index = argv.index("-m")
        if index + 1 < len(argv):
            return argv[index + 1]
    return None


def kill_pid(pid: int) -> None:
    """SIGKILL one process we started, if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_group(process: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """SIGTERM the process group ``process`` leads (started with ``start_new_session``),
    wait up to ``timeout_s``, then SIGKILL whatever is left of the group."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    try:  # anything the leader left behind in its group
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
