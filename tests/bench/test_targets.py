"""Target evaluation: pass, fail, or not measured, never a guess."""

from __future__ import annotations

import copy
from typing import Any

from bench.targets import FAIL, NOT_MEASURED, PASS, evaluate


def _row(
    added_p50: float | None, added_p99: float | None, share: float, cpu: float | None, family: str
) -> dict[str, Any]:
    return {
        "family": family,
        "added_p50_ms": added_p50,
        "added_p99_ms": added_p99,
        "c32_requests_per_s": share * 20,
        "c32_percent_of_direct": share,
        "gateway_cpu_ms_per_request": cpu,
    }


def _passing() -> dict[str, Any]:
    return {
        "p": {
            "status": "ok",
            "contenders": {
                "direct": _row(None, None, 100.0, None, "upstream"),
                "modelbus": _row(0.4, 1.5, 80.0, 0.5, "modelbus"),
                "tensorzero": _row(0.45, 0.9, 76.0, 0.47, "rust"),
                "vllm-router": _row(0.38, -0.7, 85.0, 0.28, "rust"),
            },
            "rust_cpu_median_ms": 0.375,
            "unavailable": {},
        },
        "c": {"status": "ok", "best": {"concurrency": 64, "requests_per_s": 8500.0}},
        "e": {"status": "ok", "propagation_ms": {"p99_ms": 12.0}, "failed": 0, "missed": 0, "requests": 9000},
        "f": {"status": "ok", "largest_modelbus_process": {"process": "services.providers", "load_mb": 80.0}},
    }


def _statuses(scenarios: dict[str, Any]) -> list[str]:
    return [row.status for row in evaluate(scenarios)]


def test_numbers_within_every_target_pass() -> None:
    assert _statuses(_passing()) == [PASS] * 7


def test_numbers_beyond_a_target_fail_it_and_only_it() -> None:
    scenarios = _passing()
    scenarios["p"]["contenders"]["modelbus"]["added_p50_ms"] = 0.46  # above TensorZero's 0.45
    scenarios["p"]["contenders"]["modelbus"]["gateway_cpu_ms_per_request"] = 0.76  # over 2 x 0.375
    scenarios["c"]["best"]["requests_per_s"] = 7999.0
    assert _statuses(scenarios) == [FAIL, PASS, PASS, FAIL, FAIL, PASS, PASS]


def test_a_failed_request_during_the_hot_swap_fails_it_even_when_fast() -> None:
    scenarios = _passing()
    scenarios["e"]["failed"] = 1
    row = evaluate(scenarios)[5]
    assert row.status == FAIL
    assert "1 failed" in row.measured


def test_an_unavailable_tensorzero_leaves_only_its_comparison_unmeasured_and_says_why() -> None:
    scenarios = _passing()
    del scenarios["p"]["contenders"]["tensorzero"]
    scenarios["p"]["unavailable"] = {"tensorzero": "TensorZero: exited with status 1"}
    rows = evaluate(scenarios)
    assert [row.status for row in rows] == [NOT_MEASURED, PASS, PASS, PASS, PASS, PASS, PASS]
    assert "exited with status 1" in rows[0].measured


def test_no_rust_gateway_measured_leaves_the_cpu_comparison_unmeasured() -> None:
    scenarios = _passing()
    scenarios["p"]["rust_cpu_median_ms"] = None
    assert _statuses(scenarios)[3] == NOT_MEASURED


def test_a_scenario_that_errored_or_did_not_run_is_not_measured() -> None:
    scenarios = copy.deepcopy(_passing())
    scenarios["p"] = {"status": "error", "error": "boom"}
    del scenarios["f"]
    rows = evaluate(scenarios)
    assert all(row.status == NOT_MEASURED and "error" in row.measured for row in rows[:4])
    assert rows[6].status == NOT_MEASURED and "not run" in rows[6].measured
