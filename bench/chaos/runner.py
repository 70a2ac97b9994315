"""One chaos scenario end to end, and a run of several.

A scenario that fails to run (the stack did not start, was not healthy,
or a restart failed) is recorded as ``status: error`` with its message and
the run goes on with the next one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import progress
from bench.chaos import counting
from bench.chaos.counting import Outcome, RequestRecord
from bench.chaos.loadgen import LoadGenerator, LoadPlan, LoadResult
from bench.chaos.scenarios import RESTART_DELAY_S, Scenario, Timing
from bench.chaos.stack import CHAOS_MODEL, PROBE_MODEL, READY_TIMEOUT_S, ChaosStack

TIMELINE_STEP_S = 0.5
CLUSTER_SIZE = 3


def _node_index(scenario: Scenario, stack: ChaosStack) -> int | None:
    """Which node (from 0) the scenario kills, or ``None`` for a lone server / a service."""
    if scenario.target == "busiest-node":
        counts = stack.connections_per_node()
        return counts.index(max(counts))
    if scenario.target.startswith("node-"):
        return int(scenario.target.removeprefix("node-")) - 1
    return None


def _client_servers(urls: list[str], node: int | None) -> list[str]:
    """The load generator's URLs: the node to be killed last, so the client itself sits on a survivor."""
    if node is None:
        return list(urls)
    return [url for i, url in enumerate(urls) if i != node] + [urls[node]]


def run_scenario(scenario: Scenario, timing: Timing, source: Path, logs_dir: Path) -> dict[str, Any]:
    """Start a fresh stack, load it, inject the fault, count; always stop the stack."""
    work = Path(tempfile.mkdtemp(prefix=f"modelbus-chaos-{scenario.name}-"))
    stack = ChaosStack(work, source, cluster_size=CLUSTER_SIZE if scenario.cluster else 0)
    section: dict[str, Any] = {"name": scenario.name, "fault": scenario.fault}
    started = time.monotonic()
    try:
        stack.start()
        section["stack_start_s"] = round(time.monotonic() - started, 2)
        section.update(_inject_under_load(scenario, timing, stack))
        section["status"] = "ok"
    except Exception as exc:
        traceback.print_exc()
        section.update({"status": "error", "error": f"{type(exc).__name__}: {exc}"})
        progress(f"{scenario.name}: failed: {exc}")
    finally:
        stack.close()
        target = logs_dir / scenario.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(work / "logs", target, dirs_exist_ok=True)
        if stack.cluster is not None:
            for i, node in enumerate(stack.cluster.nodes, start=1):
                if node.log_file is not None and node.log_file.exists():
                    shutil.copy(node.log_file, target / f"nats-node-{i}.log")
        shutil.rmtree(work, ignore_errors=True)
    section["duration_s"] = round(time.monotonic() - started, 2)
    return section


def _inject_under_load(scenario: Scenario, timing: Timing, stack: ChaosStack) -> dict[str, Any]:
    node = _node_index(scenario, stack)
    connections = stack.connections_per_node() if scenario.cluster else None
    plan = LoadPlan(
        servers=_client_servers(stack.urls, node),
        model=CHAOS_MODEL,
        concurrency=timing.concurrency,
        stream_every=1 if scenario.streams_only else 3,
        timeout_ms=timing.timeout_ms,
        probe_model=PROBE_MODEL,
    )
    generator = LoadGenerator(plan)
    generator.start()
    try:
        fault_at, back_after = _fault(scenario, timing, stack, node, generator)
    finally:
        generator.stop_sending()
    result = generator.finish()
    if result.error is not None:
        raise RuntimeError(result.error)
    figures = counting.figures(result.records, fault_at, keepalives_promised=result.keepalives_promised)
    progress(
        f"{scenario.name}: sent {figures.sent}, ok {figures.counts['ok']}, error {figures.counts['error']}, "
        f"never {figures.counts['never']}, duplicated {figures.counts['duplicated']}"
    )
    killed = f"node-{node + 1}" if node is not None else scenario.target
    return {
        "killed": killed,
        "service_connections_per_node": connections,
        "restart_delay_s": RESTART_DELAY_S,
        "back_after_restart_s": round(back_after, 3),
        "keepalives_promised": result.keepalives_promised,
        "figures": figures.as_json(),
        "load": _load_facts(result, timing),
        "timeline": timeline(result.records, fault_at, keepalives_promised=result.keepalives_promised),
        "samples": samples(result.records, fault_at, keepalives_promised=result.keepalives_promised),
    }


def _fault(
    scenario: Scenario, timing: Timing, stack: ChaosStack, node: int | None, generator: LoadGenerator
) -> tuple[float, float]:
    """Kill, restart after the delay, keep loading until ``post_s``; return the fault time and the restart's
    time to ready (measured from the relaunch)."""
    time.sleep(timing.pre_s)  # a measurement window, not a wait for a condition
    fault_at = time.monotonic()
    if scenario.is_nats:
        stack.kill_nats(node)
    else:
        stack.kill(scenario.target)
    time.sleep(RESTART_DELAY_S)  # the supervisor's restart delay being modelled
    relaunched_at = time.monotonic()
    if scenario.is_nats:
        stack.relaunch_nats(node)
    else:
        stack.relaunch(scenario.target)
    end_at = fault_at + timing.post_s
    back_after: float | None = None
    while True:
        now = time.monotonic()
        if back_after is None:
            if stack.nats_ready(node) if scenario.is_nats else stack.is_ready(scenario.target):
                back_after = now - relaunched_at
            elif now - relaunched_at > READY_TIMEOUT_S:
                raise RuntimeError(f"{scenario.target} did not come back within {READY_TIMEOUT_S:g}s")
        if now >= end_at:
            generator.stop_sending()  # the load window is over, even while a restart is still under way
            if back_after is not None:
                return fault_at, back_after
        time.sleep(0.02)


def _load_facts(result: LoadResult, timing: Timing) -> dict[str, Any]:
    window = max(result.wall_s, 1e-9)
    return {
        **asdict(timing),
        "warmup_requests": result.warmup_requests,
        "load_s": round(result.wall_s, 3),
        "requests_per_s": round(len(result.records) / window, 1),
        "process_cpu_s": round(result.process_cpu_s, 3),
        "thread_cpu_s": round(result.thread_cpu_s, 3),
        "recorded_s": round(result.listened_until - result.load_started, 3),
        "load_thread_cpu_percent": round(100.0 * result.thread_cpu_s / window, 1),
        "process_cpu_percent": round(100.0 * result.process_cpu_s / window, 1),
        "disconnects": result.disconnects,
        "reconnects": result.reconnects,
        "publish_errors": result.publish_errors,
        "unknown_messages": result.unknown_messages,
    }


def timeline(records: Sequence[RequestRecord], fault_at: float, *, keepalives_promised: bool) -> list[dict[str, Any]]:
    """Requests by start time in :data:`TIMELINE_STEP_S` buckets relative to the fault: started, OK, not OK."""
    buckets: dict[int, dict[str, Any]] = {}
    for record in records:
        index = int((record.started - fault_at) // TIMELINE_STEP_S)
        bucket = buckets.setdefault(index, {"t": round(index * TIMELINE_STEP_S, 2), "started": 0, "ok": 0})
        bucket["started"] += 1
        if counting.outcome_of(record, keepalives_promised=keepalives_promised) is Outcome.OK:
            bucket["ok"] += 1
    return [buckets[k] for k in sorted(buckets)]


SAMPLES_PER_OUTCOME = 3
SAMPLE_MESSAGES = 40


def samples(records: Sequence[RequestRecord], fault_at: float, *, keepalives_promised: bool) -> dict[str, Any]:
    """A few requests of each outcome but OK, message by message, times relative to the fault (for debugging)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        outcome = counting.outcome_of(record, keepalives_promised=keepalives_promised)
        if outcome is Outcome.OK or len(out.setdefault(outcome.value, [])) >= SAMPLES_PER_OUTCOME:
            continue
        out[outcome.value].append(
            {
                "request_id": record.request_id,
                "streamed": record.streamed,
                "started_s": round(record.started - fault_at, 3),
                "messages": [
                    [round(m.at - fault_at, 3), m.kind.value, m.seq, m.status]
                    for m in record.messages[:SAMPLE_MESSAGES]
                ],
                "more_messages": max(0, len(record.messages) - SAMPLE_MESSAGES),
            }
        )
    return {key: value for key, value in out.items() if value}


def source_facts(source: Path, commit: str | None = None) -> dict[str, Any]:
    """The commit of the services under test, and whether their tree had changes (``None`` outside git).

    ``commit`` names it for a tree that is not a git checkout (a ``git archive`` export).
    """
    facts: dict[str, Any] = {"source": str(source), "commit": commit, "dirty": None}
    if commit is not None or not (source / ".git").exists():
        return facts
    try:
        facts["commit"] = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        facts["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return facts
