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

ADDED_P50_MAX_MS = 1.5
ADDED_P99_MAX_MS = 4.0
LITELLM_RATIO_MAX = 0.1
THROUGHPUT_SHARE_MIN = 0.9
THROUGHPUT_LEVEL = "32"
BUS_ONLY_MIN_RPS = 3000.0
SWAP_P99_MAX_MS = 20.0
RSS_MAX_MB = 120.0


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


def _added_p50(s: Mapping[str, Any]) -> tuple[bool, str]:
    a = _section(s, "a")
    added = _number(a["added_ms"][a["headline_series"]]["p50_ms"], "modelbus p50")
    return added <= ADDED_P50_MAX_MS, f"{added:.2f} ms"


def _added_p99(s: Mapping[str, Any]) -> tuple[bool, str]:
    a = _section(s, "a")
    added = _number(a["added_ms"][a["headline_series"]]["p99_ms"], "modelbus p99")
    return added <= ADDED_P99_MAX_MS, f"{added:.2f} ms"


def _versus_litellm(s: Mapping[str, Any]) -> tuple[bool, str]:
    a = _section(s, "a")
    if "litellm" not in a["added_ms"]:
        raise _NotMeasured(f"LiteLLM {a.get('litellm', 'not measured')}")
    ours = a["added_ms"][a["headline_series"]]
    theirs = a["added_ms"]["litellm"]
    ratio = a["ratio_vs_litellm"]["p50_ms"]
    if ratio is None:
        raise _NotMeasured("LiteLLM added no latency at p50, so no ratio")
    p99 = a["ratio_vs_litellm"]["p99_ms"]
    p99_text = f"{p99:.3f}" if p99 is not None else "n/a"
    text = (
        f"p50 {ours['p50_ms']:.2f} / {theirs['p50_ms']:.2f} ms = {ratio:.3f}; "
        f"p99 {ours['p99_ms']:.2f} / {theirs['p99_ms']:.2f} ms = {p99_text}"
    )
    return ratio <= LITELLM_RATIO_MAX, text


def _throughput_share(s: Mapping[str, Any]) -> tuple[bool, str]:
    b = _section(s, "b")
    if THROUGHPUT_LEVEL not in b["levels"]:
        raise _NotMeasured(f"concurrency {THROUGHPUT_LEVEL} not in this run")
    row = b["levels"][THROUGHPUT_LEVEL]
    ours, direct = row["modelbus"]["requests_per_s"], row["direct"]["requests_per_s"]
    if not direct:
        raise _NotMeasured("direct served nothing")
    share = ours / direct
    return share >= THROUGHPUT_SHARE_MIN, f"{ours:,.0f} vs {direct:,.0f} req/s = {share:.0%}"


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
    ("a", f"modelbus added latency p50 ≤ {ADDED_P50_MAX_MS} ms (concurrency 1, tracing on)", _added_p50),
    ("a", f"modelbus added latency p99 ≤ {ADDED_P99_MAX_MS:.0f} ms (concurrency 1, tracing on)", _added_p99),
    ("a", "modelbus added latency ≤ 1/10 of LiteLLM's (at p50; p99 shown)", _versus_litellm),
    ("b", f"modelbus throughput at concurrency {THROUGHPUT_LEVEL} ≥ 90% of direct", _throughput_share),
    ("c", f"bus-only throughput ≥ {BUS_ONLY_MIN_RPS:,.0f} req/s (best level)", _bus_only),
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
