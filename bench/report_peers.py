"""The report's section p: the same-run table of modelbus and the peer gateways."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.report import ms, rate, signed_ms, table


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _added(row: Mapping[str, Any]) -> str:
    if row["added_p50_ms"] is None:
        return f"{ms(row['c1']['p50_ms'])} / {ms(row['c1']['p99_ms'])} (itself)"
    return f"{signed_ms(row['added_p50_ms'])} / {signed_ms(row['added_p99_ms'])}"


def render_peers(p: Mapping[str, Any]) -> list[str]:
    """The table (ordered by added p50), what could not be measured, and the errors."""
    rows = p["contenders"]
    order = sorted(rows, key=lambda name: (rows[name]["added_p50_ms"] is not None, rows[name]["added_p50_ms"] or 0))
    body = []
    for name in order:
        row = rows[name]
        title = f"**{row['title']}**" if row["family"] == "modelbus" else row["title"]
        version = f" {row['version']}" if row.get("version") and row["version"] not in row["title"] else ""
        share = row["c32_percent_of_direct"]
        body.append(
            [
                f"{title}{version}",
                _added(row),
                f"{rate(row['c32_requests_per_s'])} ({share:.0f}%)" if share is not None else "n/a",
                _cpu(row["gateway_cpu_ms_per_request"]),
                _cpu(row["loadgen_cpu_ms_per_request"]),
                str(row["c1"]["errors"] + row["c32_errors"]),
            ]
        )
    lines = table(
        [
            "contender",
            "added p50 / p99 ms (c=1)",
            "req/s at c=32 (% of direct)",
            "gateway CPU ms/req",
            "load generator CPU ms/req",
            "errors",
        ],
        body,
    )
    median = p.get("rust_cpu_median_ms")
    lines += [
        "",
        f"Median CPU per request of the Rust gateways: {_cpu(median)} ms. "
        "Gateway CPU is the utime+stime of the contender's whole process tree (modelbus and modelbus-http, "
        "one stack: nats-server, router, provider worker, HTTP gateway, config, secrets, supervisor) over "
        "every measured request, c=1 and c=32; the load generator's is this process's own, in the same "
        "windows. modelbus is driven by nats-py (its protocol), the rest (modelbus-http: the same stack "
        "through its HTTP gateway) by the same minimal HTTP/1.1 client.",
    ]
    skipped = p.get("not_selected") or []
    if skipped:
        lines += ["", f"Not selected for this run (`--peers`): {', '.join(skipped)}."]
    unavailable = p.get("unavailable") or {}
    if unavailable:
        lines += ["", "Not measured:", "", *[f"- {name}: {why}" for name, why in unavailable.items()]]
    failing = {name: row["error_samples"] for name, row in rows.items() if row["error_samples"]}
    if failing:
        lines += ["", "Errors seen:", ""]
        lines += [f"- {name}: {'; '.join(samples)}" for name, samples in failing.items()]
    return lines
