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
                "modelbus-http": _row(0.42, 1.1, 82.0, 0.55, "modelbus"),
                "tensorzero": _row(0.45, 0.9, 76.0, 0.47, "rust"),
                "portkey": _row(1.6, 7.7, 26.0, 1.4, "node"),
                "vllm-router": _row(0.38, -0.7, 85.0, 0.28, "rust"),
            },
            "rust_cpu_median_ms": 0.375,
            "unavailable": {},
        },
        "c": {"status": "ok", "best": {"concurrency": 64, "requests_per_s": 8500.0}},
        "d": {"status": "ok", "http_over_bus_ms": {"ttft_p50_ms": 0.8, "ttft_p99_ms": 3.0}},
        "e": {"status": "ok", "propagation_ms": {"p99_ms": 12.0}, "failed": 0, "missed": 0, "requests": 9000},
        "f": {"status": "ok", "largest_modelbus_process": {"process": "services.providers", "load_mb": 80.0}},
    }


def _statuses(scenarios: dict[str, Any]) -> list[str]:
    return [row.status for row in evaluate(scenarios)]


# Row order of evaluate(): p (TensorZero, p99, share, CPU, HTTP vs NATS, HTTP vs TensorZero,
# HTTP vs Portkey), c, d (HTTP stream TTFT), e, f.
HTTP_VS_BUS, HTTP_VS_TZ, HTTP_VS_PORTKEY, BUS_ONLY, HTTP_TTFT, HOT_SWAP, RSS = 4, 5, 6, 7, 8, 9, 10


def test_numbers_within_every_target_pass() -> None:
    assert _statuses(_passing()) == [PASS] * 11


def test_numbers_beyond_a_target_fail_it_and_only_it() -> None:
    scenarios = _passing()
    scenarios["p"]["contenders"]["modelbus"]["added_p50_ms"] = 0.46  # above TensorZero's 0.45
    scenarios["p"]["contenders"]["modelbus"]["gateway_cpu_ms_per_request"] = 0.76  # over 2 x 0.375
    scenarios["c"]["best"]["requests_per_s"] = 7999.0
    expected = [PASS] * 11
    expected[0] = expected[3] = expected[BUS_ONLY] = FAIL
    assert _statuses(scenarios) == expected


def test_the_http_path_more_than_a_millisecond_over_the_nats_path_fails_only_that_target() -> None:
    scenarios = _passing()
    scenarios["p"]["contenders"]["modelbus-http"]["added_p50_ms"] = 1.41  # NATS path 0.4 + 1.01
    rows = evaluate(scenarios)
    assert rows[HTTP_VS_BUS].status == FAIL
    assert "+1.01 ms over NATS" in rows[HTTP_VS_BUS].measured
    # 1.41 is also over TensorZero's 0.45, and still under Portkey's 1.6.
    assert [row.status for row in rows[HTTP_VS_TZ : HTTP_VS_PORTKEY + 1]] == [FAIL, PASS]


def test_the_http_path_must_beat_a_peer_strictly_not_tie_it() -> None:
    scenarios = _passing()
    scenarios["p"]["contenders"]["modelbus-http"]["added_p50_ms"] = 0.45  # TensorZero's exactly
    assert _statuses(scenarios)[HTTP_VS_TZ] == FAIL


def test_a_gateway_stream_over_two_milliseconds_slower_to_first_token_fails_its_target() -> None:
    scenarios = _passing()
    scenarios["d"]["http_over_bus_ms"]["ttft_p50_ms"] = 2.01
    row = evaluate(scenarios)[HTTP_TTFT]
    assert row.status == FAIL
    assert "+2.01 ms" in row.measured


def test_a_run_without_the_http_contender_leaves_its_targets_unmeasured_and_the_rest_alone() -> None:
    scenarios = _passing()
    del scenarios["p"]["contenders"]["modelbus-http"]
    del scenarios["d"]["http_over_bus_ms"]
    statuses = _statuses(scenarios)
    http_rows = {HTTP_VS_BUS, HTTP_VS_TZ, HTTP_VS_PORTKEY, HTTP_TTFT}
    assert [statuses[i] for i in sorted(http_rows)] == [NOT_MEASURED] * 4
    assert all(status == PASS for i, status in enumerate(statuses) if i not in http_rows)


def test_a_failed_request_during_the_hot_swap_fails_it_even_when_fast() -> None:
    scenarios = _passing()
    scenarios["e"]["failed"] = 1
    row = evaluate(scenarios)[HOT_SWAP]
    assert row.status == FAIL
    assert "1 failed" in row.measured


def test_an_unavailable_tensorzero_leaves_only_its_comparisons_unmeasured_and_says_why() -> None:
    scenarios = _passing()
    del scenarios["p"]["contenders"]["tensorzero"]
    scenarios["p"]["unavailable"] = {"tensorzero": "TensorZero: exited with status 1"}
    rows = evaluate(scenarios)
    expected = [PASS] * 11
    expected[0] = expected[HTTP_VS_TZ] = NOT_MEASURED
    assert [row.status for row in rows] == expected
    assert "exited with status 1" in rows[0].measured
    assert "exited with status 1" in rows[HTTP_VS_TZ].measured


def test_a_portkey_not_selected_leaves_only_the_http_comparison_with_it_unmeasured() -> None:
    scenarios = _passing()
    del scenarios["p"]["contenders"]["portkey"]
    rows = evaluate(scenarios)
    assert rows[HTTP_VS_PORTKEY].status == NOT_MEASURED
    assert "Portkey not measured (not selected)" in rows[HTTP_VS_PORTKEY].measured
    assert [row.status for i, row in enumerate(rows) if i != HTTP_VS_PORTKEY] == [PASS] * 10


def test_no_rust_gateway_measured_leaves_the_cpu_comparison_unmeasured() -> None:
    scenarios = _passing()
    scenarios["p"]["rust_cpu_median_ms"] = None
    assert _statuses(scenarios)[3] == NOT_MEASURED


def test_a_scenario_that_errored_or_did_not_run_is_not_measured() -> None:
    scenarios = copy.deepcopy(_passing())
    scenarios["p"] = {"status": "error", "error": "boom"}
    del scenarios["f"]
    del scenarios["d"]
    rows = evaluate(scenarios)
    assert all(row.status == NOT_MEASURED and "error" in row.measured for row in rows[: HTTP_VS_PORTKEY + 1])
    assert rows[HTTP_TTFT].status == NOT_MEASURED and "not run" in rows[HTTP_TTFT].measured
    assert rows[RSS].status == NOT_MEASURED and "not run" in rows[RSS].measured
