"""The issue's targets, evaluated against a run's results: pass, fail, or not measured.

Nothing here asserts: the report shows every target with what was measured,
and a target whose scenario did not run, failed, or lacks its comparison
(LiteLLM skipped) is "not measured", never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

PASS = "pass"
FAIL = "fail"
NOT_MEASURED = "not measured"

P99_OVER_DIRECT_MAX_MS = 2.0
THROUGHPUT_SHARE_MIN = 75.0
CPU_VS_RUST_MAX = 2.0
BUS_ONLY_MIN_RPS = 8000.0
SWAP_P99_MAX_MS = 20.0
RSS_MAX_MB = 120.0
HTTP_OVER_BUS_MAX_MS = 1.0
"""Issue 15: the HTTP gateway may add at most this much to modelbus's NATS path at p50."""
HTTP_STREAM_TTFT_OVER_BUS_MAX_MS = 2.0
"""Issue 15: streaming through the gateway may add at most this much to the NATS stream's TTFT."""


@dataclass(frozen=True)
class Target:
    """One row of the targets table."""

    scenario: str
    target: str
    measured: str
    status: str


class _NotMeasured(Exception):
    """The numbers a target needs are missing; the message says why."""


def _section(scenarios: Mapping[str, Any], letter: str) -> Mapping[str, Any]:
    section = scenarios.get(letter)
    if not section or section.get("status") != "ok":
        state = (section or {}).get("status", "not run")
        raise _NotMeasured(f"scenario {letter} {state}")
    return section  # type: ignore[no-any-return]


def _number(value: Any, what: str) -> float:
    if value is None:
        raise _NotMeasured(f"no {what}")
    return float(value)


def _modelbus(s: Mapping[str, Any]) -> Mapping[str, Any]:
    rows = _section(s, "p")["contenders"]
    if "modelbus" not in rows:
        raise _NotMeasured("modelbus not in the run")
    return rows["modelbus"]  # type: ignore[no-any-return]


def _contender(s: Mapping[str, Any], name: str, title: str) -> Mapping[str, Any]:
    """Scenario p's row of ``name``; not measured (with the reason the run gave) when it is absent."""
    p = _section(s, "p")
    row = p["contenders"].get(name)
    if row is None:
        why = (p.get("unavailable") or {}).get(name, "not selected")
        raise _NotMeasured(f"{title} not measured ({why})")
    return row  # type: ignore[no-any-return]


def _versus_tensorzero(s: Mapping[str, Any]) -> tuple[bool, str]:
    ours = _number(_modelbus(s)["added_p50_ms"], "modelbus added p50")
    theirs = _number(_contender(s, "tensorzero", "TensorZero")["added_p50_ms"], "TensorZero added p50")
    return ours <= theirs, f"{ours:+.2f} vs {theirs:+.2f} ms"


def _http_versus_bus(s: Mapping[str, Any]) -> tuple[bool, str]:
    http = _number(_contender(s, "modelbus-http", "modelbus-http")["added_p50_ms"], "modelbus-http added p50")
    bus = _number(_modelbus(s)["added_p50_ms"], "modelbus added p50")
    over = http - bus
    return over <= HTTP_OVER_BUS_MAX_MS, f"{http:+.2f} vs {bus:+.2f} ms = {over:+.2f} ms over NATS"


def _http_versus(peer: str, title: str) -> Callable[[Mapping[str, Any]], tuple[bool, str]]:
    def check(s: Mapping[str, Any]) -> tuple[bool, str]:
        http = _number(_contender(s, "modelbus-http", "modelbus-http")["added_p50_ms"], "modelbus-http added p50")
        theirs = _number(_contender(s, peer, title)["added_p50_ms"], f"{title} added p50")
        return http < theirs, f"{http:+.2f} vs {theirs:+.2f} ms"

    return check


def _http_stream_ttft(s: Mapping[str, Any]) -> tuple[bool, str]:
    over = (_section(s, "d").get("http_over_bus_ms") or {}).get("ttft_p50_ms")
    added = _number(over, "modelbus-http TTFT over modelbus's")
    return added <= HTTP_STREAM_TTFT_OVER_BUS_MAX_MS, f"{added:+.2f} ms at p50"


def _p99_over_direct(s: Mapping[str, Any]) -> tuple[bool, str]:
    added = _number(_modelbus(s)["added_p99_ms"], "modelbus added p99")
    return added <= P99_OVER_DIRECT_MAX_MS, f"{added:+.2f} ms"


def _throughput_share(s: Mapping[str, Any]) -> tuple[bool, str]:
    row = _modelbus(s)
    share = _number(row["c32_percent_of_direct"], "share of direct")
    return share >= THROUGHPUT_SHARE_MIN, f"{row['c32_requests_per_s']:,.0f} req/s = {share:.0f}% of direct"


def _cpu_versus_rust(s: Mapping[str, Any]) -> tuple[bool, str]:
    ours = _number(_modelbus(s)["gateway_cpu_ms_per_request"], "modelbus CPU per request")
    median = _section(s, "p")["rust_cpu_median_ms"]
    if median is None:
        raise _NotMeasured("no Rust gateway measured")
    ratio = ours / median if median else float("inf")
    return ratio <= CPU_VS_RUST_MAX, f"{ours:.2f} vs median {median:.2f} ms = {ratio:.1f}x"


def _bus_only(s: Mapping[str, Any]) -> tuple[bool, str]:
    best = _section(s, "c")["best"]
    rps = _number(best["requests_per_s"], "req/s")
    return rps >= BUS_ONLY_MIN_RPS, f"{rps:,.0f} req/s at concurrency {best['concurrency']}"


def _hot_swap(s: Mapping[str, Any]) -> tuple[bool, str]:
    e = _section(s, "e")
    p99 = _number(e["propagation_ms"]["p99_ms"], "propagation p99")
    ok = p99 <= SWAP_P99_MAX_MS and e["failed"] == 0 and e["missed"] == 0
    missed = f", {e['missed']} changes not propagated" if e["missed"] else ""
    return ok, f"p99 {p99:.2f} ms, {e['failed']} failed of {e['requests']:,} requests{missed}"


def _rss(s: Mapping[str, Any]) -> tuple[bool, str]:
    largest = _section(s, "f")["largest_modelbus_process"]
    if largest is None:
        raise _NotMeasured("no modelbus process sampled")
    mb = _number(largest["load_mb"], "RSS")
    return mb <= RSS_MAX_MB, f"largest {mb:.1f} MB ({largest['process']})"


CHECKS: tuple[tuple[str, str, Callable[[Mapping[str, Any]], tuple[bool, str]]], ...] = (
    ("p", "modelbus added p50 (concurrency 1) ≤ TensorZero's", _versus_tensorzero),
    ("p", f"modelbus added p99 (concurrency 1) ≤ direct's p99 + {P99_OVER_DIRECT_MAX_MS:.0f} ms", _p99_over_direct),
    ("p", f"throughput at concurrency 32 ≥ {THROUGHPUT_SHARE_MIN:.0f}% of direct", _throughput_share),
    ("p", f"CPU per request, all modelbus processes ≤ {CPU_VS_RUST_MAX:.0f}x the Rust median", _cpu_versus_rust),
    (
        "p",
        f"modelbus-http added p50 (concurrency 1) ≤ modelbus (NATS) added p50 + {HTTP_OVER_BUS_MAX_MS:.0f} ms",
        _http_versus_bus,
    ),
    ("p", "modelbus-http added p50 (concurrency 1) < TensorZero's", _http_versus("tensorzero", "TensorZero")),
    ("p", "modelbus-http added p50 (concurrency 1) < Portkey's", _http_versus("portkey", "Portkey")),
    ("c", f"bus-only throughput ≥ {BUS_ONLY_MIN_RPS:,.0f} req/s (best level)", _bus_only),
    (
        "d",
        f"modelbus-http stream TTFT p50 ≤ modelbus (NATS) stream TTFT p50 + {HTTP_STREAM_TTFT_OVER_BUS_MAX_MS:.0f} ms",
        _http_stream_ttft,
    ),
    ("e", f"hot swap p99 ≤ {SWAP_P99_MAX_MS:.0f} ms with 0 failed requests", _hot_swap),
    ("f", f"RSS ≤ {RSS_MAX_MB:.0f} MB per modelbus process under load", _rss),
)


def evaluate(scenarios: Mapping[str, Any]) -> list[Target]:
    """Every target against the scenario sections of one run."""
    rows = []
    for letter, name, check in CHECKS:
        try:
            ok, measured = check(scenarios)
        except _NotMeasured as why:
            rows.append(Target(letter, name, str(why), NOT_MEASURED))
        else:
            rows.append(Target(letter, name, measured, PASS if ok else FAIL))
    return rows


def as_json(rows: list[Target]) -> list[dict[str, str]]:
    """The rows for results.json."""
    return [asdict(row) for row in rows]
