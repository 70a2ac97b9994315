"""The chaos table (Markdown, one row per fault) and ``chaos.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.report import table

CHAOS_JSON = "chaos.json"
CHAOS_MD = "chaos.md"
HEADER = (
    "scenario",
    "sent",
    "OK",
    "clear error",
    "lost (silence)",
    "never answered",
    "duplicated",
    "bad stream",
    "recovery s",
    "p99 ms, started ≤2 s after",
    "in flight at fault: OK / n, p99 s to OK",
    "of those, not yet streaming: OK / n, p99 s to OK",
)


def _seconds(value: float | None, recovered: bool = True) -> str:
    if not recovered:
        return "not recovered"
    return "n/a" if value is None else f"{value:.2f}"


def _p99(value: float | None, unanswered: bool) -> str:
    if unanswered:
        return "∞ (>1 % unanswered)"
    return "n/a" if value is None else f"{value:,.0f}"


def one_line(error: str, limit: int = 160) -> str:
    """A multi-line error (a message, then a log tail) as one table cell: its first and last lines."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if not lines:
        return "?"
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def row(section: Mapping[str, Any]) -> list[str]:
    """One table row for a scenario section of ``chaos.json``."""
    name = str(section["name"])
    if section.get("status") != "ok":
        return [name, "error: " + one_line(str(section.get("error", "?"))), *([""] * (len(HEADER) - 2))]
    f = section["figures"]
    in_flight_p99 = "∞" if f["in_flight_p99_unanswered"] else _seconds(f["in_flight_p99_s"])
    retryable_p99 = "∞" if f.get("retryable_p99_unanswered") else _seconds(f.get("retryable_p99_s"))
    return [
        name,
        str(f["sent"]),
        str(f["ok"]),
        str(f["error"]) + (f" ({f['no_responders']} no responders)" if f["no_responders"] else ""),
        str(f["lost_silence"]),
        str(f["never"]),
        str(f["duplicated"]),
        str(f["bad_stream"]),
        _seconds(f["recovery_s"], f["recovered"]),
        _p99(f["after_fault_p99_ms"], f["after_fault_p99_unanswered"]),
        f"{f['in_flight_ok']} / {f['in_flight_at_fault']}, {in_flight_p99}",
        f"{f.get('retryable_ok', 0)} / {f.get('retryable_at_fault', 0)}, {retryable_p99}",
    ]


def render_markdown(results: Mapping[str, Any]) -> str:
    """The table, what was run, and the notes a reader needs to trust it."""
    sections: Sequence[Mapping[str, Any]] = results["scenarios"]
    source = results["source"]
    commit = f"commit `{source['commit']}`" if source.get("commit") else "an unknown commit (not a git checkout)"
    dirty = " with uncommitted changes" if source.get("dirty") else ""
    lines = [
        f"# Chaos run{' (short)' if results['short'] else ''}",
        "",
        f"Services under test: `{source['source']}` at {commit}{dirty}."
        + (f" {results['note']}" if results.get("note") else ""),
        f"Started {results['started_at']}, {results['duration_s']:.0f} s; "
        f"machine: {results['machine']['cores']} cores, {results['machine']['cpu']}.",
        "",
        *table(HEADER, (row(s) for s in sections)),
        "",
        "Faults:",
        *(f"- `{s['name']}`: {s['fault']}" + _detail(s) for s in sections),
        "",
        "Targets:",
        *(f"- {verdict}" for verdict in targets(sections)),
        "",
        f"Keepalives promised by the stack (probe): {_promised(sections)}. Definitions: docs/reliability.md.",
    ]
    return "\n".join(lines) + "\n"


TARGET_S = 2.0
"""Both timing targets of issue 12: retryable requests on a killed worker answered, and requests
succeeding again after a lost cluster node, within this long of the fault."""
WORKER_FAULTS = ("router", "provider", "provider-mid-stream", "router-mid-stream")


def targets(sections: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per target of docs/reliability.md, met or missed, over the scenarios that ran."""
    ran = [s for s in sections if s.get("status") == "ok"]
    out = []
    broken = [s["name"] for s in ran if s["figures"]["never"] or s["figures"]["duplicated"]]
    out.append(
        ("missed" if broken else "met")
        + ": 0 never answered and 0 answered twice in every scenario"
        + (f" (not in {', '.join(broken)})" if broken else "")
    )
    workers = [s for s in ran if s["name"] in WORKER_FAULTS and s["figures"].get("retryable_at_fault")]
    if workers:
        slow = [
            s["name"]
            for s in workers
            if s["figures"]["retryable_p99_unanswered"] or (s["figures"]["retryable_p99_s"] or 0.0) > TARGET_S
        ]
        unanswered = any(s["figures"]["retryable_p99_unanswered"] for s in workers)
        worst = "∞" if unanswered else f"{max(s['figures']['retryable_p99_s'] or 0.0 for s in workers):.2f} s"
        out.append(
            ("missed" if slow else "met") + f": worker killed, requests not yet streaming answered within "
            f"{TARGET_S:g} s (p99; worst {worst})" + (f" (not in {', '.join(slow)})" if slow else "")
        )
    nodes = [s for s in ran if s["name"].startswith("cluster-")]
    if nodes:
        late = [s["name"] for s in nodes if not s["figures"]["recovered"] or s["figures"]["recovery_s"] > TARGET_S]
        slowest = max((s["figures"]["recovery_s"] or 0.0) for s in nodes)
        out.append(
            ("missed" if late else "met") + f": cluster node killed, requests succeed again within {TARGET_S:g} s "
            f"(worst recovery {slowest:.2f} s)" + (f" (not in {', '.join(late)})" if late else "")
        )
    return out


def _detail(section: Mapping[str, Any]) -> str:
    if section.get("status") != "ok":
        return ""
    load = section["load"]
    f = section["figures"]
    parts = [
        f"killed {section['killed']}, back {section['back_after_restart_s']:.2f} s after its restart",
        f"load {load['requests_per_s']:.0f} req/s at concurrency {load['concurrency']}, "
        f"load thread CPU {load['load_thread_cpu_percent']:.0f} % of a core",
    ]
    if section.get("service_connections_per_node"):
        parts.append(f"service connections per node {section['service_connections_per_node']}")
    extras = {
        "strays": "messages after a final answer",
        "leaked_heartbeats": "heartbeats on a client inbox",
        "misrouted": "messages naming another request",
        "silence_breaches": "answers after ≥5 s of silence",
    }
    parts += [f"{f[key]} {text}" for key, text in extras.items() if f.get(key)]
    return "; " + "; ".join(parts)


def _promised(sections: Sequence[Mapping[str, Any]]) -> str:
    seen = {s.get("keepalives_promised") for s in sections if s.get("status") == "ok"}
    if seen == {True}:
        return "yes"
    if seen == {False}:
        return "no (a request without a final answer counts as never answered, not as lost)"
    return "mixed" if seen else "unknown"


def write(results: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``chaos.json`` and ``chaos.md`` to ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / CHAOS_JSON, out_dir / CHAOS_MD
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(render_markdown(results))
    return json_path, md_path
