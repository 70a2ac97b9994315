"""results.json, raw_latencies.json and results.md from one run's results.

The Markdown is what a reviewer reads: machine and versions, the exact
command, the targets table, then one section per scenario with its tables.
A scenario that failed shows its error; one that did not run says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.settings import SCENARIOS, TITLES

RESULTS_JSON = "results.json"
RAW_JSON = "raw_latencies.json"
RESULTS_MD = "results.md"
QUICK_NOTE = " (quick smoke run: the numbers mean little)"


def write_json(results: Mapping[str, Any], raw: Mapping[str, Any], out_dir: Path) -> None:
    """The summaries (results.json) and every measured latency (raw_latencies.json, for redrawing plots)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / RAW_JSON).write_text(json.dumps(raw) + "\n")


# ---------------------------------------------------------------- formatting


def ms(value: float | None) -> str:
    """A latency in ms, or n/a when not measured."""
    return "n/a" if value is None else f"{value:.2f}"


def signed_ms(value: float | None) -> str:
    """A latency difference in ms with its sign."""
    return "n/a" if value is None else f"{value:+.2f}"


def rate(value: float | None) -> str:
    """Requests per second."""
    return "n/a" if value is None else f"{value:,.0f}"


def megabytes(value: float | None) -> str:
    """A size in MB."""
    return "n/a" if value is None else f"{value:.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _errors(summary: Mapping[str, Any]) -> str:
    text = str(summary.get("errors", 0))
    if summary.get("warmup_errors"):
        text += f" (+{summary['warmup_errors']} in warm-up)"
    return text


def _error_notes(named: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = []
    for name, summary in named.items():
        for sample in summary.get("error_samples") or ():
            lines.append(f"- {name}: `{sample}`")
    return ["", "Failures seen:", *lines] if lines else []


# ---------------------------------------------------------------- scenarios


def _latency(a: Mapping[str, Any]) -> list[str]:
    lines = [
        f"{a['requests_per_contender']:,} requests per contender at concurrency 1, in {a['rounds']} rounds "
        f"with the order rotating; {a['warmup_requests']} warm-up requests each. LiteLLM: {a['litellm']}. "
        f"Headline: `{a['headline_series']}` ({a['modelbus_stack']}).",
        "",
    ]
    lines += table(
        ["contender", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "mean ms"],
        (
            [
                name,
                f"{s['requests']:,}",
                _errors(s),
                ms(s["p50_ms"]),
                ms(s["p90_ms"]),
                ms(s["p99_ms"]),
                ms(s["mean_ms"]),
            ]
            for name, s in a["series"].items()
        ),
    )
    lines += ["", "Added over direct (difference of percentiles):", ""]
    lines += table(
        ["contender", "added p50 ms", "added p99 ms"],
        ([name, signed_ms(d["p50_ms"]), signed_ms(d["p99_ms"])] for name, d in a["added_ms"].items()),
    )
    ratio = a["ratio_vs_litellm"]
    if "litellm" in a["added_ms"]:
        p50 = "n/a" if ratio["p50_ms"] is None else f"{ratio['p50_ms']:.3f}"
        p99 = "n/a" if ratio["p99_ms"] is None else f"{ratio['p99_ms']:.3f}"
        lines += ["", f"modelbus added / LiteLLM added: p50 {p50}, p99 {p99}."]
    else:
        lines += ["", f"modelbus added / LiteLLM added: not measured (LiteLLM {a['litellm']})."]
    return lines + _error_notes(a["series"])


def _levels(section: Mapping[str, Any]) -> list[str]:
    rows = []
    for level, by_name in section["levels"].items():
        for name, s in by_name.items():
            rows.append(
                [level, name, rate(s["requests_per_s"]), ms(s["p50_ms"]), ms(s["p90_ms"]), ms(s["p99_ms"]), _errors(s)]
            )
    lines = table(["concurrency", "contender", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"], rows)
    named = {f"{name} @{level}": s for level, by_name in section["levels"].items() for name, s in by_name.items()}
    return lines + _error_notes(named)


def _throughput(b: Mapping[str, Any]) -> list[str]:
    lines = [
        f"{b['seconds_per_level']:g} s of closed-loop load per contender per level in {b['rounds']} rounds, "
        f"after a warm-up at that level. modelbus: {b['modelbus_stack']}. LiteLLM: {b['litellm']}.",
        "",
        *_levels(b),
        "",
    ]
    shares = ", ".join(
        f"{level}: {ratio:.0%}" if ratio is not None else f"{level}: n/a"
        for level, ratio in b["modelbus_vs_direct"].items()
    )
    return [*lines, f"modelbus req/s as a share of direct, per concurrency: {shares}."]


def _bus_only(c: Mapping[str, Any]) -> list[str]:
    best = c["best"]
    return [
        f"Mock provider, no upstream; {c['modelbus_stack']}; {c['seconds_per_level']:g} s per level.",
        "",
        *_levels(c),
        "",
        f"Best: {rate(best['requests_per_s'])} req/s at concurrency {best['concurrency']}.",
    ]


def _streaming(d: Mapping[str, Any]) -> list[str]:
    up = d["upstream"]
    lines = [
        f"{d['streams_per_contender']} streams per contender at concurrency 1 in {d['rounds']} rounds; llm-katan "
        f"streams with a {up['ttft_ms']} ms time to first token and {up['itl_ms']} ms between chunks. "
        f"ITL is the mean gap between content chunks of one stream; percentiles are over streams. "
        "(llm-katan 0.22 waits the TTFT twice, in its echo backend and again before the first chunk, then one "
        "ITL before the first content chunk: its own time to first content is about 2 TTFT + 1 ITL.)",
        "",
    ]
    rows = []
    for name, s in d["series"].items():
        ttft, itl = s["ttft"], s["itl"]
        chunks = "n/a" if s["content_chunks_mean"] is None else f"{s['content_chunks_mean']:.1f}"
        rows.append(
            [
                name,
                str(s["streams"]),
                str(s["errors"]),
                chunks,
                ms(ttft["p50_ms"]),
                ms(ttft["p90_ms"]),
                ms(ttft["p99_ms"]),
                ms(itl["p50_ms"]),
                ms(itl["p90_ms"]),
                ms(itl["p99_ms"]),
            ]
        )
    header = ["contender", "streams", "errors", "chunks", "TTFT p50", "TTFT p90", "TTFT p99", "ITL p50", "ITL p90"]
    lines += table([*header, "ITL p99"], rows)
    lines.append("")
    for what, key in (
        ("modelbus added", "added_ms"),
        ("modelbus-http added", "http_added_ms"),
        ("modelbus-http over modelbus (NATS)", "http_over_bus_ms"),
    ):
        added = d.get(key)
        if added is None:  # a results.json from before modelbus-http was measured
            continue
        lines.append(
            f"- {what}: TTFT p50 {signed_ms(added['ttft_p50_ms'])} ms, p99 {signed_ms(added['ttft_p99_ms'])} ms; "
            f"ITL p50 {signed_ms(added['itl_p50_ms'])} ms, p99 {signed_ms(added['itl_p99_ms'])} ms."
        )
    return lines + _error_notes(d["series"])


def _hot_swap(e: Mapping[str, Any]) -> list[str]:
    p = e["propagation_ms"]
    lines = [
        f"{e['changes']} changes applied one after another on {e['modelbus_stack']}, alias `hot` alternating "
        f"between two mock endpoints, while {e['concurrency']} requests stayed in flight against it. "
        "Time from sending the apply to the last router announcing the revision.",
        "",
    ]
    lines += table(
        ["changes propagated", "p50 ms", "p90 ms", "p99 ms", "max ms", "requests meanwhile", "failed"],
        [
            [
                f"{e['propagated']} of {e['changes']}",
                ms(p["p50_ms"]),
                ms(p["p90_ms"]),
                ms(p["p99_ms"]),
                ms(p["max_ms"]),
                f"{e['requests']:,}",
                str(e["failed"]),
            ]
        ],
    )
    lines += [f"- {m}" for m in e["missed_samples"]]
    return lines + _error_notes({"requests during the changes": e["load"]})


def _memory(f: Mapping[str, Any]) -> list[str]:
    lines = [
        f"VmRSS of every process of the stack ({f['stack']}): idle right after start, and the maximum of "
        f"{f['load_samples']} samples under load ({'; '.join(f['load_sources']) or 'none'}).",
        "",
    ]
    lines += table(
        ["process", "pid", "idle MB", "under load MB (max)"],
        (
            [label, str(row["pid"]), megabytes(row["idle_mb"]), megabytes(row["load_mb"])]
            for label, row in f["processes"].items()
        ),
    )
    return lines


def _tracing(g: Mapping[str, Any]) -> list[str]:
    off, on, cost, spans = g["tracing_off"], g["tracing_on"], g["cost_ms"], g["spans"]
    lines = ["Measured together with a (same rounds); two otherwise identical stacks.", ""]
    lines += table(
        ["modelbus", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "mean ms"],
        [
            [
                label,
                f"{s['requests']:,}",
                _errors(s),
                ms(s["p50_ms"]),
                ms(s["p90_ms"]),
                ms(s["p99_ms"]),
                ms(s["mean_ms"]),
            ]
            for label, s in (("tracing off", off), ("tracing on", on))
        ],
    )
    per_request = "n/a" if g["spans_per_request"] is None else f"{g['spans_per_request']:.1f}"
    by_service = ", ".join(f"{name} {count:,}" for name, count in spans["spans_by_service"].items()) or "none"
    lines += [
        "",
        f"Tracing costs p50 {signed_ms(cost['p50_ms'])} ms, p90 {signed_ms(cost['p90_ms'])} ms, "
        f"p99 {signed_ms(cost['p99_ms'])} ms, mean {signed_ms(cost['mean_ms'])} ms.",
        f"The OTLP sink received {spans['spans']:,} spans in {spans['export_requests']:,} export requests "
        f"({per_request} per traced request; {g['traced_requests']:,} requests incl. warm-up): {by_service}."
        + (f" Undecodable exports: {spans['undecodable_requests']}." if spans["undecodable_requests"] else ""),
    ]
    return lines


def _peers(p: Mapping[str, Any]) -> list[str]:
    from bench.report_peers import render_peers  # it imports this module's formatters

    return render_peers(p)


RENDERERS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "p": _peers,
    "a": _latency,
    "b": _throughput,
    "c": _bus_only,
    "d": _streaming,
    "e": _hot_swap,
    "f": _memory,
    "g": _tracing,
}


# ---------------------------------------------------------------- document


def render_markdown(results: Mapping[str, Any]) -> str:
    """The whole report."""
    machine, versions = results["machine"], results["versions"]
    version_text = ", ".join(f"{name} {version or 'n/a'}" for name, version in versions.items())
    lines = [
        f"# modelbus benchmark, {results['started_at']}",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['platform']}, Python {machine['python']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}.",
        f"Versions: {version_text}.",
        f"Command: `{results['command']}`",
        f"Duration: {results['duration_s']:.0f} s{QUICK_NOTE if results['settings']['quick'] else ''}.",
        "",
        "## Method",
        "",
        *_method(results),
        "",
        "## Targets",
        "",
    ]
    lines += table(
        ["scenario", "target", "measured", "result"],
        ([t["scenario"], t["target"], t["measured"], _status(t["status"])] for t in results["targets"]),
    )
    for letter in SCENARIOS:
        section = results["scenarios"].get(letter, {"status": "not run"})
        lines += ["", f"## {letter}. {TITLES[letter]}", ""]
        if section["status"] == "ok":
            lines += RENDERERS[letter](section)
        elif section["status"] == "error":
            lines += [f"**Error**: `{section['error']}` (traceback on stderr of the run)."]
        else:
            lines += [f"Not run ({section['status']})."]
    notes = list(results.get("notes") or ())
    if results.get("survivors"):
        notes.append("Child processes still alive at the end (killed): " + "; ".join(results["survivors"]))
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _method(results: Mapping[str, Any]) -> list[str]:
    cores = results["machine"]["cores"]
    return [
        "- Every server runs on this machine on loopback: the load generator, llm-katan (echo backend), the "
        f"modelbus stacks, the LiteLLM proxy and nats-server all share the same {cores} cores, so the req/s are "
        "this machine's ceilings for the whole chain, not modelbus's alone.",
        "- One closed-loop load generator on uvloop drives every contender: K workers, each sending its next "
        "request as soon as the last one finished; latency per request with `perf_counter`; a failure (non-200 "
        "or exception) is counted, never fatal. Each contender is warmed up first, and measurements are split "
        "into rounds whose contender order rotates, so drift of the machine hits all of them alike.",
        "- The same body for everyone: model `echo`, one short user message, to the same llm-katan. Every HTTP "
        "contender (direct, the peer gateways of p, LiteLLM in a and b, modelbus-http: modelbus's own HTTP "
        "gateway in p and d) is driven by one minimal keep-alive HTTP/1.1 client (`bench/h1load.py`: the "
        "request encoded once, one write, answers parsed by httptools; streams in d too, each piece's arrival "
        "noted as it comes); modelbus by `ModelbusClient` (nats-py), its protocol. The load generator's own CPU "
        "per request is "
        "reported beside each contender's in p. Until issue 13 direct and LiteLLM went through httpx, which "
        "costs the load generator about 2 ms of CPU per request here: that slowed direct, which shares the "
        "cores, and so flattered every other contender (the old README's +0.74 ms and 90% of direct).",
        "- p: each contender's CPU per request is the utime+stime of its whole process tree from /proc over its "
        "measured runs, divided by its successful requests.",
        "- Added latency is a difference of percentiles (contender p50 minus direct p50), not a percentile of "
        "per-request differences.",
        "- c (bus only) runs on the same 1-router stack as a, b, d and f, tracing off; e has its own stack with "
        "several routers. Percentiles interpolate between ranks.",
    ]


def _status(status: str) -> str:
    return {"pass": "✅ pass", "fail": "❌ fail"}.get(status, status)
