"""One benchmark run: servers up, scenarios in order, servers down, results collected.

The order is fixed so servers can be stopped once nothing later needs them:
a and g together (then the traced stack and the OTLP sink go), b (then
LiteLLM goes), c, f, d, e (with its own multi-router stack). A scenario that
raises is recorded as ``status: error`` with its message, its traceback goes
to stderr, and the run carries on; the exit status then says the run was
not clean. Ctrl-C stops every server on the way out.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bench import progress, servers, targets
from bench.litellm_proxy import LiteLLMProxy
from bench.peers import registry
from bench.scenarios.hotswap import run_hot_swap
from bench.scenarios.latency import run_latency
from bench.scenarios.memory import MemorySampler, run_own_load
from bench.scenarios.peers import run_peers
from bench.scenarios.streaming import run_streaming
from bench.scenarios.throughput import run_bus_only, run_throughput
from bench.settings import TITLES, Settings
from shared.natsserver import find_nats_server

T = TypeVar("T")


class Run:
    """The results of one run as they accumulate."""

    def __init__(self, settings: Settings, command: str) -> None:
        self.settings = settings
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": command,
            "machine": machine_facts(),
            "versions": {},
            "settings": settings_json(settings),
            "litellm": {},
            "scenarios": {},
            "notes": [],
        }
        self.raw: dict[str, Any] = {}
        self.clean = True

    def attempt(self, what: str, action: Callable[[], T]) -> tuple[T | None, str | None]:
        """Run one step; on an exception print its traceback and return ``(None, message)``."""
        try:
            return action(), None
        except Exception as exc:
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}"
            progress(f"{what} failed: {message}")
            self.clean = False
            return None, message

    def record(self, letter: str, section: dict[str, Any] | None, error: str | None) -> None:
        """Store one scenario's section, or the error that prevented it."""
        if section is None:
            section = {"status": "error", "error": error or "unknown error"}
        self.results["scenarios"][letter] = {"title": TITLES[letter], **section}

    def finish(self, survivors: list[str]) -> None:
        """Targets, versions, duration."""
        scenarios = self.results["scenarios"]
        for letter in TITLES:
            if letter not in scenarios:
                scenarios[letter] = {"title": TITLES[letter], "status": "not run"}
        self.results["targets"] = targets.as_json(targets.evaluate(scenarios))
        self.results["versions"] = versions(self.results["litellm"].get("version"))
        self.results["survivors"] = survivors
        self.results["duration_s"] = time.perf_counter() - self.started
        self.results["raw_file"] = "raw_latencies.json"


def run_benchmark(settings: Settings, command: str) -> Run:
    """Measure every selected scenario; always stop every server."""
    # The bench decides where spans go: an OTLP endpoint inherited from the shell
    # would turn tracing on in the "tracing off" stack.
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        del os.environ[name]
    run = Run(settings, command)
    selected = set(settings.scenarios)
    work_dir = Path(tempfile.mkdtemp(prefix="modelbus-bench-"))
    lab = servers.Lab(work_dir, settings.out_dir.resolve(), swap_routers=settings.swap_routers)
    survivors: list[str] = []
    try:
        _scenarios(run, lab, selected)
    finally:
        survivors = lab.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        if survivors:
            progress(f"child processes survived and were killed: {survivors}")
    run.finish(survivors)
    return run


def _scenarios(run: Run, lab: servers.Lab, selected: set[str]) -> None:
    settings = run.settings
    memory: MemorySampler | None = None
    memory_error: str | None = None
    if "f" in selected:
        memory, memory_error = run.attempt("f (idle sample)", lambda: _idle_memory(lab))

    if "p" in selected:
        progress(f"p: peers ({', '.join(settings.peers) or 'none'}), direct and modelbus, one client")
        run.record("p", *run.attempt("p", lambda: run_peers(lab, settings, registry.selected(settings.peers))))
    litellm, note = _litellm(run, lab) if selected & {"a", "b"} else (None, "not needed")
    if selected & {"a", "g"}:
        progress("a, g: latency at concurrency 1 (direct, litellm, modelbus with and without tracing)")
        measured, error = run.attempt("a, g", lambda: run_latency(lab, settings, litellm, note))
        if measured is not None:
            run.raw["a"] = measured[2]
        for letter, index in (("a", 0), ("g", 1)):
            if letter in selected:
                run.record(letter, measured[index] if measured else None, error)
        lab.release(servers.TRACED_STACK)
        lab.release(servers.OTLP_SINK)
    if "b" in selected:
        progress("b: throughput through llm-katan")
        run.record("b", *run.attempt("b", lambda: run_throughput(lab, settings, litellm, note, memory)))
    lab.release(servers.LITELLM)
    if "c" in selected:
        progress("c: bus-only throughput (mock provider)")
        run.record("c", *run.attempt("c", lambda: run_bus_only(lab, settings, memory)))
    if "f" in selected:
        if memory is None:
            run.record("f", None, f"the idle sample failed: {memory_error}")
        else:
            sampler = memory
            run.record("f", *run.attempt("f", lambda: _memory_section(lab, settings, sampler)))
    if "d" in selected:
        progress("d: streaming")
        streamed, error = run.attempt("d", lambda: run_streaming(lab, settings))
        if streamed is not None:
            run.raw["d"] = streamed[1]
        run.record("d", streamed[0] if streamed else None, error)
    lab.release(servers.PLAIN_STACK)
    if "e" in selected:
        progress("e: hot swap under load")
        run.record("e", *run.attempt("e", lambda: run_hot_swap(lab, settings)))


def _idle_memory(lab: servers.Lab) -> MemorySampler:
    sampler = MemorySampler(lab.plain_stack().processes)
    sampler.sample_idle()
    return sampler


def _memory_section(lab: servers.Lab, settings: Settings, memory: MemorySampler) -> dict[str, Any]:
    if memory.load_samples == 0:  # neither b nor c ran (or both failed before loading)
        run_own_load(lab, settings, memory)
    return memory.section(lab.plain_stack().describe())


def _litellm(run: Run, lab: servers.Lab) -> tuple[LiteLLMProxy | None, str]:
    """Start LiteLLM unless skipped; a failure is reported and the run goes on without it."""
    if run.settings.skip_litellm:
        run.results["litellm"] = {"status": "skipped", "note": "skipped (--skip-litellm)"}
        run.results["notes"].append("LiteLLM was skipped (--skip-litellm): its rows and target are not measured.")
        return None, "skipped (--skip-litellm)"
    proxy, error = run.attempt("LiteLLM", lab.litellm)
    if proxy is None:
        first_line = (error or "unknown error").splitlines()[0]
        note = f"failed to start ({first_line}; see litellm.log / litellm-install.log in the output directory)"
        run.results["litellm"] = {"status": "failed", "note": note}
        run.results["notes"].append(f"LiteLLM {note}: its rows and target are not measured.")
        return None, note
    run.results["litellm"] = {"status": "measured", "note": "measured", "version": proxy.version}
    return proxy, f"measured (LiteLLM {proxy.version}, 1 worker)"


# ---------------------------------------------------------------- facts


def machine_facts() -> dict[str, Any]:
    """What the numbers depend on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def versions(litellm: str | None) -> dict[str, str | None]:
    """Versions of everything measured or measuring."""
    found: dict[str, str | None] = {}
    for package in ("modelbus", "llm-katan", "nats-py", "httpx", "uvloop"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["litellm"] = litellm
    try:
        output = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10).stdout
        found["nats-server"] = output.strip().rpartition(" ")[2] or None
    except (OSError, RuntimeError, subprocess.SubprocessError):
        found["nats-server"] = None
    return found


def settings_json(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values."""
    out = asdict(settings)
    out["out_dir"] = str(settings.out_dir)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}
