"""The chaos table and its command line: one row per fault, errors shown, bad options refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos import report
from bench.chaos.__main__ import parse_args
from bench.chaos.counting import RequestRecord, classify_message, figures
from bench.chaos.runner import timeline
from bench.chaos.scenarios import FULL_RUN, SHORT_RUN


def _section(name: str, **overrides: Any) -> dict[str, Any]:
    records = [
        RequestRecord("a", False, 9.0, 8.0, [classify_message({"Modelbus-Status": "200"}, 5, streamed=False, at=9.3)]),
        RequestRecord("b", False, 9.8, 8.0, []),
        RequestRecord(
            "c", False, 10.2, 8.0, [classify_message({"Modelbus-Status": "200"}, 5, streamed=False, at=10.5)]
        ),
    ]
    section: dict[str, Any] = {
        "name": name,
        "fault": "kill -9 something",
        "status": "ok",
        "killed": "router-1",
        "back_after_restart_s": 0.4,
        "keepalives_promised": False,
        "service_connections_per_node": None,
        "figures": figures(records, 10.0, keepalives_promised=False).as_json(),
        "load": {"requests_per_s": 40.0, "concurrency": 24, "load_thread_cpu_percent": 5.0},
        "timeline": timeline(records, 10.0, keepalives_promised=False),
    }
    section.update(overrides)
    return section


def _results(*sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "short": False,
        "note": "before the fix",
        "source": {"source": "/src", "commit": "abc123", "dirty": False},
        "started_at": "now",
        "duration_s": 12.0,
        "machine": {"cores": 2, "cpu": "test CPU"},
        "scenarios": list(sections),
    }


def test_the_table_has_one_row_per_fault_with_the_wire_counts() -> None:
    markdown = report.render_markdown(_results(_section("router")))
    rows = [line for line in markdown.splitlines() if line.startswith("| router")]
    assert rows == ["| router | 3 | 2 | 0 | 0 | 1 | 0 | 0 | 0.00 | 300 | 0 / 1, ∞ | 0 / 1, ∞ |"]
    assert "abc123" in markdown and "before the fix" in markdown


def test_the_targets_say_met_or_missed_and_name_the_scenarios_that_missed() -> None:
    lines = report.targets([_section("router"), _section("cluster-node-1")])
    assert lines[0] == "missed: 0 never answered and 0 answered twice in every scenario (not in router, cluster-node-1)"
    assert lines[1].startswith("missed: worker killed") and "worst ∞" in lines[1] and "(not in router)" in lines[1]
    assert lines[2] == ("met: cluster node killed, requests succeed again within 2 s (worst recovery 0.00 s)")
    figures = {**_section("provider")["figures"], "never": 0, "retryable_p99_s": 0.9, "retryable_p99_unanswered": False}
    assert report.targets([_section("provider", figures=figures)]) == [
        "met: 0 never answered and 0 answered twice in every scenario",
        "met: worker killed, requests not yet streaming answered within 2 s (p99; worst 0.90 s)",
    ]


def test_a_scenario_that_could_not_run_shows_its_error_in_its_row() -> None:
    failed = {"name": "cluster-node-1", "fault": "kill a node", "status": "error", "error": "RuntimeError: boom"}
    markdown = report.render_markdown(_results(_section("router"), failed))
    assert "| cluster-node-1 | error: RuntimeError: boom |" in markdown


def test_the_timeline_buckets_requests_by_start_relative_to_the_fault() -> None:
    buckets = _section("router")["timeline"]
    assert buckets == [
        {"t": -1.0, "started": 1, "ok": 1},
        {"t": -0.5, "started": 1, "ok": 0},
        {"t": 0.0, "started": 1, "ok": 1},
    ]


def test_report_files_are_written_next_to_each_other(tmp_path: Path) -> None:
    json_path, md_path = report.write(_results(_section("router")), tmp_path)
    assert json_path.name == "chaos.json" and md_path.read_text().startswith("# Chaos run")


def test_the_short_run_is_a_subset_that_kills_a_router_a_worker_nats_and_a_cluster_node() -> None:
    assert set(SHORT_RUN) == {"router", "provider", "nats-restart", "cluster-busiest-node"}
    assert set(SHORT_RUN) - {"cluster-busiest-node"} <= set(FULL_RUN)
    assert parse_args(["--short"]).names == list(SHORT_RUN)
    assert parse_args(["--scenario", "router,config", "--scenario", "secrets"]).names == ["router", "config", "secrets"]


def test_an_unknown_scenario_is_refused_with_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--scenario", "kill-everything"])
    assert "nats-restart" in capsys.readouterr().err
