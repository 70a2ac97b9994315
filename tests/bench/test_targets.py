"""Target evaluation: pass, fail, or not measured, never a guess."""

from __future__ import annotations

import copy
from typing import Any

from bench.targets import FAIL, NOT_MEASURED, PASS, evaluate


def _passing() -> dict[str, Any]:
    return {
        "a": {
            "status": "ok",
            "headline_series": "modelbus+tracing",
            "litellm": "measured",
            "added_ms": {
                "modelbus+tracing": {"p50_ms": 1.0, "p99_ms": 3.0},
                "litellm": {"p50_ms": 12.0, "p99_ms": 40.0},
            },
            "ratio_vs_litellm": {"p50_ms": 1.0 / 12.0, "p99_ms": 3.0 / 40.0},
        },
        "b": {
            "status": "ok",
            "levels": {"32": {"direct": {"requests_per_s": 1000.0}, "modelbus": {"requests_per_s": 950.0}}},
        },
        "c": {"status": "ok", "best": {"concurrency": 64, "requests_per_s": 5000.0}},
        "e": {"status": "ok", "propagation_ms": {"p99_ms": 12.0}, "failed": 0, "missed": 0, "requests": 9000},
        "f": {"status": "ok", "largest_modelbus_process": {"process": "services.providers", "load_mb": 80.0}},
    }


def _statuses(scenarios: dict[str, Any]) -> list[str]:
    return [row.status for row in evaluate(scenarios)]


def test_numbers_within_every_target_pass() -> None:
    assert _statuses(_passing()) == [PASS] * 7


def test_numbers_beyond_a_target_fail_it_and_only_it() -> None:
    scenarios = _passing()
    scenarios["a"]["added_ms"]["modelbus+tracing"]["p50_ms"] = 2.0
    scenarios["c"]["best"]["requests_per_s"] = 2999.0
    assert _statuses(scenarios) == [FAIL, PASS, PASS, PASS, FAIL, PASS, PASS]


def test_a_failed_request_during_the_hot_swap_fails_it_even_when_fast() -> None:
    scenarios = _passing()
    scenarios["e"]["failed"] = 1
    row = evaluate(scenarios)[5]
    assert row.status == FAIL
    assert "1 failed" in row.measured


def test_skipped_litellm_leaves_only_its_comparison_unmeasured() -> None:
    scenarios = _passing()
    del scenarios["a"]["added_ms"]["litellm"]
    scenarios["a"]["litellm"] = "skipped (--skip-litellm)"
    scenarios["a"]["ratio_vs_litellm"] = {"p50_ms": None, "p99_ms": None}
    rows = evaluate(scenarios)
    assert [row.status for row in rows] == [PASS, PASS, NOT_MEASURED, PASS, PASS, PASS, PASS]
    assert "skipped" in rows[2].measured


def test_a_scenario_that_errored_or_did_not_run_is_not_measured() -> None:
    scenarios = copy.deepcopy(_passing())
    scenarios["b"] = {"status": "error", "error": "boom"}
    del scenarios["f"]
    rows = evaluate(scenarios)
    assert rows[3].status == NOT_MEASURED and "error" in rows[3].measured
    assert rows[6].status == NOT_MEASURED and "not run" in rows[6].measured
