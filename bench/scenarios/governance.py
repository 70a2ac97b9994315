"""Governance on versus off: the mock path's latency and throughput with the usage ledger,
metrics and governance resources on, and with all of them off, in one run.

Two ``modelbus up`` stacks (each on its own nats-server, one router, one provider worker,
the mock provider, tracing off) run side by side for the whole measurement:

* **off**: ``MODELBUS_USAGE_LEDGER=off``, ``MODELBUS_METRICS=off``, and a configuration of
  one mock endpoint, its alias and an agent routed to it: no price, no budget, no rate limit;
* **on**: the ledger and metrics on, and the same configuration plus a ModelPrice for the
  mock model and whatever ``--on-extra FILE`` adds (YAML documents: budgets, rate limits, ...).

Each round measures both settings, the order rotating every round, so a slow drift of the
machine falls on both alike: ``--requests`` sequential requests (p50, p99), then
``--inflight-requests`` requests with ``--inflight`` in flight (requests per second). The
report gives the median over rounds of each figure, the range of the rounds, on minus off,
and the CPU time of the load generator (this process) and of each stack per request.

``--agent`` sends every request as agent ``bench-agent`` (for agent-scoped Budgets and RateLimits
in ``--on-extra``); ``--split`` adds a "ledger only" and a "metrics only" stack.

``python -m bench.scenarios.governance --rounds 3 --requests 500`` (``make bench-governance``)
writes ``docs/perf/runs/<date>-governance.md`` (or ``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench import procs, progress
from bench.contenders import REQUEST_TIMEOUT_S, chat_body
from bench.load import RequestFailed, Send, closed_loop, percentile, rotated, warm_up
from bench.servers import SUPERVISOR, stack_directory, stack_processes
from scripts.stack import running_stack
from shared import headers as H
from shared.client import ModelbusClient
from shared.subjects import USAGE_STREAM

ROOT = Path(__file__).resolve().parents[2]
OFF, ON = "off", "on"
LEDGER_ONLY, METRICS_ONLY = "ledger only", "metrics only"
MODEL = "bus"
AGENT = "bench-agent"
"""With ``--agent``, every request is sent as this agent (for agent-scoped budgets and rate limits)."""
ENDPOINT, UPSTREAM_MODEL = "mock", "mock-1"
OFF_ENV = {"MODELBUS_USAGE_LEDGER": "off", "MODELBUS_METRICS": "off"}
ON_ENV = {"MODELBUS_USAGE_LEDGER": "on", "MODELBUS_METRICS": "on"}
COMMON_ENV = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none"}
LIMIT_PCT = 10.0
"""The issue's bound: on within 10% of off."""


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def off_config(record_text: bool = False) -> str:
    """One mock endpoint, its alias and an agent routed to it (``record_text``: which stores its
    requests' text); nothing else."""
    agent = {"model_ref": MODEL, "record_text": True} if record_text else {"model_ref": MODEL}
    return "\n---\n".join(
        [
            _doc("ModelEndpoint", ENDPOINT, {"provider": "mock", "default_model": UPSTREAM_MODEL}),
            _doc("ModelAlias", MODEL, {"targets": [{"endpoint": ENDPOINT}]}),
            _doc("Agent", AGENT, agent),
        ]
    )


def on_config(extra: str | None, record_text: bool = False) -> str:
    """The off configuration, a ModelPrice for the mock model, and ``extra`` (YAML documents)."""
    price = _doc(
        "ModelPrice",
        "bench-mock-price",
        {"endpoint": ENDPOINT, "model": UPSTREAM_MODEL, "input": "1.25", "output": "10", "cache_read": "0.125"},
    )
    parts = [off_config(record_text), price]
    if extra and extra.strip():
        parts.append(extra.strip().removeprefix("---").strip())
    return "\n---\n".join(parts) + "\n"


@dataclass(frozen=True)
class Settings:
    """How big the run is."""

    rounds: int = 3
    requests: int = 500
    """Sequential requests per setting per round."""
    inflight_requests: int = 2000
    """Requests per setting per round at ``inflight`` in flight."""
    inflight: int = 64
    warmup: int = 200
    on_extra: Path | None = None
    out: Path | None = None
    json_out: Path | None = None
    split: bool = False
    """Also measure the ledger alone and metrics alone, to tell their costs apart."""
    agent: bool = False
    """Send every request as :data:`AGENT` (``Modelbus-Agent``), in every setting."""
    record_text: bool = False
    """The on stack's agent has ``record_text`` (its prompts and completions stored; implies ``agent``)."""


@dataclass
class Stack:
    """One running stack and the processes whose CPU time counts as its own."""

    name: str
    url: str
    pids: list[int] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)
    """Prometheus endpoints ``up`` reported (``run.json``): none when metrics are off."""

    def cpu_s(self) -> float:
        """CPU seconds so far of ``modelbus up`` and every service under it, and its nats-server."""
        supervisor, *others = self.pids
        return procs.tree_cpu_seconds(supervisor) + sum(procs.cpu_seconds(pid) for pid in others)


@contextmanager
def running(name: str, config: str, env: dict[str, str], work: Path) -> Iterator[Stack]:
    """``modelbus up`` with ``config`` and ``env`` on its own nats-server; removed afterwards."""
    path = work / f"{name}.yaml"
    path.write_text(config)
    leftovers: list[Path] = []
    try:
        with running_stack(
            "--config", str(path), "--routers", "1", env={**COMMON_ENV, **env}, prefix=f"modelbus-gov-{name}-"
        ) as url:
            found = stack_processes(url)
            leftovers.append(stack_directory(found[SUPERVISOR]))
            pids = [found[SUPERVISOR]] + ([found["nats-server"]] if "nats-server" in found else [])
            yield Stack(name, url, pids, _metrics_urls(found[SUPERVISOR]))
    finally:
        for p in leftovers:
            shutil.rmtree(p, ignore_errors=True)


def _metrics_urls(supervisor: int) -> list[str]:
    argv = procs.command_line(supervisor)
    try:
        run_json = json.loads((Path(argv[argv.index("--data-dir") + 1]) / "run.json").read_text())
    except (OSError, ValueError, IndexError):
        return []
    urls = run_json.get("metrics_urls") or ""  # comma-separated (shared.identities)
    return [u for u in urls.split(",") if u] if isinstance(urls, str) else [str(u) for u in urls]


@dataclass
class Round:
    """One setting's figures in one round."""

    p50_ms: float
    p99_ms: float
    requests_per_s: float
    errors: int
    generator_cpu_ms_per_request: float
    stack_cpu_ms_per_request: float


async def _round(send: Send, stack: Stack, settings: Settings) -> Round:
    gen0, stack0 = time.process_time(), stack.cpu_s()
    sequential = await closed_loop(send, 1, requests=settings.requests)
    loaded = await closed_loop(send, settings.inflight, requests=settings.inflight_requests)
    gen1, stack1 = time.process_time(), stack.cpu_s()
    total = max(settings.requests + settings.inflight_requests, 1)
    lat = sequential.latencies_ms or [float("nan")]
    return Round(
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        requests_per_s=loaded.requests_per_s,
        errors=sequential.errors + loaded.errors,
        generator_cpu_ms_per_request=(gen1 - gen0) * 1000 / total,
        stack_cpu_ms_per_request=(stack1 - stack0) * 1000 / total,
    )


def _sender(client: ModelbusClient, body: bytes, headers: dict[str, str] | None) -> Send:
    """One request through modelbus (with ``headers``); any status but 200 is a failure."""

    async def send() -> None:
        reply = await client.request_raw(body, headers=headers, timeout=REQUEST_TIMEOUT_S)
        if reply.status != 200:
            raise RequestFailed(f"modelbus {reply.status}: {reply.body[:200]!r}")

    return send


async def measure(stacks: dict[str, Stack], settings: Settings) -> dict[str, list[Round]]:
    """Every round of every setting, the order rotating each round."""
    clients = {name: await ModelbusClient.connect(s.url) for name, s in stacks.items()}
    try:
        body = chat_body(MODEL)
        headers = {H.AGENT: AGENT} if settings.agent else None
        sends = {name: _sender(client, body, headers) for name, client in clients.items()}
        for name, send in sends.items():
            failed = await warm_up(send, settings.inflight, settings.warmup)
            if failed:
                raise RuntimeError(f"{name}: {failed} of {settings.warmup} warm-up requests failed")
        rounds: dict[str, list[Round]] = {name: [] for name in stacks}
        for i in range(settings.rounds):
            for name in rotated(list(stacks), i):
                r = await _round(sends[name], stacks[name], settings)
                rounds[name].append(r)
                progress(
                    f"governance round {i + 1}/{settings.rounds} {name}: p50 {r.p50_ms:.3f} ms, "
                    f"p99 {r.p99_ms:.3f} ms, {r.requests_per_s:,.0f} req/s at {settings.inflight}"
                )
        return rounds
    finally:
        for client in clients.values():
            await client.close()


async def _stored_records(url: str) -> int | None:
    """Messages in the usage ledger's stream (``None`` when this identity may not look)."""
    client = await ModelbusClient.connect(url)
    try:
        info = await client.nc.jetstream().stream_info(USAGE_STREAM)
        return int(info.state.messages)
    except Exception:
        return None
    finally:
        await client.close()


FIGURES = ("p50_ms", "p99_ms", "requests_per_s", "generator_cpu_ms_per_request", "stack_cpu_ms_per_request")


def summarize(rounds: dict[str, list[Round]]) -> dict[str, dict[str, Any]]:
    """Per setting and figure: the median of the rounds and their range; errors summed."""
    out: dict[str, dict[str, Any]] = {}
    for name, rs in rounds.items():
        figures: dict[str, Any] = {"errors": sum(r.errors for r in rs), "rounds": len(rs)}
        for f in FIGURES:
            values = [getattr(r, f) for r in rs]
            figures[f] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        out[name] = figures
    return out


def change_pct(summary: dict[str, dict[str, Any]], name: str, figure: str) -> float | None:
    """Setting ``name`` relative to off, in percent (positive: higher), from the medians of the rounds."""
    off, other = summary[OFF][figure]["median"], summary[name][figure]["median"]
    return (other - off) / off * 100 if off else None


def paired_change_pct(rounds: dict[str, list[Round]], name: str, figure: str) -> float | None:
    """The median over rounds of ``name`` relative to off within the same round, in percent: the
    two ran in the same round, so drift of the machine between rounds cancels out."""
    pairs = [(getattr(a, figure), getattr(b, figure)) for a, b in zip(rounds[OFF], rounds[name], strict=True)]
    changes = [(other - off) / off * 100 for off, other in pairs if off]
    return statistics.median(changes) if changes else None


def stack_settings(extra: str | None, split: bool, record_text: bool = False) -> dict[str, tuple[str, dict[str, str]]]:
    """Setting name -> (configuration, environment); with ``split`` also each feature alone."""
    settings = {OFF: (off_config(), OFF_ENV), ON: (on_config(extra, record_text), ON_ENV)}
    if split:
        settings[LEDGER_ONLY] = (on_config(None), {**OFF_ENV, "MODELBUS_USAGE_LEDGER": "on"})
        settings[METRICS_ONLY] = (off_config(), {**OFF_ENV, "MODELBUS_METRICS": "on"})
    return settings


def run(settings: Settings) -> dict[str, Any]:
    """Start the stacks, measure them interleaved, stop them; the result as a dict."""
    extra = settings.on_extra.read_text() if settings.on_extra else None
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()[0]
    with ExitStack() as exits:
        work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="modelbus-gov-")))
        stacks = {
            name: exits.enter_context(running(name, config, env, work))
            for name, (config, env) in stack_settings(extra, settings.split, settings.record_text).items()
        }
        rounds = uvloop.run(measure(stacks, settings))
        stored = {name: uvloop.run(_stored_records(s.url)) for name, s in stacks.items()}
        load_after = os.getloadavg()[0]
    summary = summarize(rounds)
    others = [name for name in stacks if name != OFF]
    return {
        "started": started.isoformat(timespec="seconds"),
        "settings": {
            "rounds": settings.rounds,
            "requests": settings.requests,
            "inflight_requests": settings.inflight_requests,
            "inflight": settings.inflight,
            "warmup": settings.warmup,
            "on_extra": str(settings.on_extra) if settings.on_extra else None,
            "split": settings.split,
            "agent": AGENT if settings.agent else None,
            "record_text": settings.record_text,
        },
        "on_extra_text": extra,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        },
        "summary": summary,
        "rounds": {name: [r.__dict__ for r in rs] for name, rs in rounds.items()},
        "change_pct": {n: {f: change_pct(summary, n, f) for f in FIGURES} for n in others},
        "paired_change_pct": {n: {f: paired_change_pct(rounds, n, f) for f in FIGURES} for n in others},
        "ledger_messages": stored,
        "metrics_endpoints": {name: len(s.metrics_urls) for name, s in stacks.items()},
    }


def _fig(v: dict[str, float], places: int) -> str:
    return f"{v['median']:,.{places}f} ({v['min']:,.{places}f}-{v['max']:,.{places}f})"


def _pct(value: float | None) -> str:
    return f"{value:+.1f}%" if value is not None else "-"


def render(result: dict[str, Any]) -> str:
    """The result as the markdown of ``docs/perf/runs/<date>-governance.md``."""
    s, summary, change = result["settings"], result["summary"], result["change_pct"]
    paired = result["paired_change_pct"]
    names = list(summary)
    others = [n for n in names if n != OFF]
    rows = [
        ("sequential p50 (ms)", "p50_ms", 3, False),
        ("sequential p99 (ms)", "p99_ms", 3, False),
        (f"throughput at {s['inflight']} in flight (req/s)", "requests_per_s", 0, True),
        ("load generator CPU per request (ms)", "generator_cpu_ms_per_request", 3, False),
        ("stack CPU per request (ms)", "stack_cpu_ms_per_request", 3, False),
    ]
    split = (
        f" With `--split`, also **{LEDGER_ONLY}** (the ledger and the price, metrics off) and "
        f"**{METRICS_ONLY}** (metrics on, ledger off, no price)."
        if s.get("split")
        else ""
    )
    header = ["", *names, "on vs off (medians)", *(f"{n} vs off (paired rounds)" for n in others)]
    lines = [
        f"# Governance on versus off, {result['started']}",
        "",
        "Mock path, `python -m bench.scenarios.governance` (bench/scenarios/governance.py): stacks side by "
        "side, each one router, one provider worker (mock), secrets, config and its own nats-server, tracing off; "
        "rounds interleaved with the order rotating. **off**: `MODELBUS_USAGE_LEDGER=off MODELBUS_METRICS=off`, "
        "no price, budget or rate limit. **on**: ledger and metrics on, a ModelPrice for the mock model"
        + (f" and `{s['on_extra']}`" if s["on_extra"] else " (no `--on-extra`)")
        + "."
        + split,
        "",
        f"{s['rounds']} rounds; per setting per round {s['requests']} sequential requests, then "
        f"{s['inflight_requests']} with {s['inflight']} in flight; {s['warmup']} warm-up requests each"
        + (f"; every request as agent `{s['agent']}`" if s.get("agent") else "")
        + ". "
        f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, "
        f"{result['machine']['platform']}; 1-minute load average {result['machine']['load_average_1m'][0]} "
        f"before, {result['machine']['load_average_1m'][1]} after (other work on the machine moves the "
        "figures by more than a few percent). Figures: median of the rounds (range of the rounds); paired: the "
        "median over rounds of the change within each round.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for label, key, places, higher_better in rows:
        pct = change[ON][key]
        mark = ""
        if pct is not None and key in ("p50_ms", "p99_ms", "requests_per_s"):
            worse = -pct if higher_better else pct
            mark = " ok" if worse <= LIMIT_PCT else " **over 10%**"
        cells = [label, *(_fig(summary[n][key], places) for n in names), _pct(pct) + mark]
        cells += [_pct(paired[n][key]) for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "| " + " | ".join(["errors", *(str(summary[n]["errors"]) for n in names)] + [""] * len(others)) + " | |"
    )
    stored = ", ".join(f"{n} {result['ledger_messages'][n]}" for n in names)
    endpoints = ", ".join(f"{n} {result['metrics_endpoints'][n]}" for n in names)
    lines += [
        "",
        f"Ledger messages stored after the run: {stored} (`None`: the stream was not readable by the load "
        f"generator; records go several to a message). Metrics endpoints reported by `modelbus up`: {endpoints}.",
    ]
    if result.get("on_extra_text"):
        lines += ["", "The `--on-extra` documents:", "", "```yaml", result["on_extra_text"].strip(), "```"]
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> Settings:
    """The run's settings from the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.governance", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500, help="sequential requests per setting per round")
    parser.add_argument("--inflight-requests", type=int, default=2000, help="requests per setting per round")
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--on-extra", type=Path, help="YAML documents the 'on' stack's configuration adds")
    parser.add_argument("--out", type=Path, help="markdown file (default docs/perf/runs/<date>-governance.md)")
    parser.add_argument("--json", type=Path, help="also write the whole result as JSON here")
    parser.add_argument("--split", action="store_true", help="also measure the ledger alone and metrics alone")
    parser.add_argument("--agent", action="store_true", help=f"send every request as agent {AGENT!r}")
    parser.add_argument(
        "--record-text",
        action="store_true",
        help="the on stack's agent stores prompt and completion text (implies --agent)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 1 or args.inflight_requests < 1 or args.inflight < 1:
        parser.error("--rounds, --requests, --inflight-requests and --inflight must be at least 1")
    if args.on_extra is not None and not args.on_extra.is_file():
        parser.error(f"--on-extra {args.on_extra}: no such file")
    settings = Settings(
        rounds=args.rounds,
        requests=args.requests,
        inflight_requests=args.inflight_requests,
        inflight=args.inflight,
        warmup=args.warmup,
        on_extra=args.on_extra,
        out=args.out,
        json_out=args.json,
        split=args.split,
        agent=args.agent or args.record_text,
        record_text=args.record_text,
    )
    return settings


def main(argv: list[str] | None = None) -> int:
    """Run, write the markdown (and JSON), print it; 1 if any request failed."""
    settings = parse(sys.argv[1:] if argv is None else argv)
    result = run(settings)
    text = render(result)
    out = settings.out or ROOT / "docs" / "perf" / "runs" / f"{dt.date.today().isoformat()}-governance.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if settings.json_out is not None:
        settings.json_out.write_text(json.dumps(result, indent=2))
    print(text)
    errors = sum(figures["errors"] for figures in result["summary"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
