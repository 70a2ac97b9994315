"""The governance on/off scenario end to end, in tiny form: both stacks start, both are measured,
the extra documents reach only the "on" stack, the ledger records only there, and the report is
written. Only the shape is checked, never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios.governance import LEDGER_ONLY, METRICS_ONLY, OFF, ON, on_config
from tests.conftest import ROOT

EXTRA = """---
apiVersion: modelbus.dev/v1
kind: ModelPrice
metadata: {name: bench-extra-price}
spec: {model_pattern: "extra-*", input: "2", output: "3"}
"""


def test_the_extra_documents_are_added_to_the_on_configuration_only() -> None:
    text = on_config(EXTRA)
    assert "bench-extra-price" in text and "bench-mock-price" in text
    assert "\n---\n---" not in text  # a leading document marker in the file is not doubled
    assert "bench-extra-price" not in on_config(None)


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_a_tiny_run_measures_both_settings_and_writes_the_report(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    out, raw = tmp_path / "governance.md", tmp_path / "governance.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.scenarios.governance", "--rounds", "2", "--requests", "10"),
            *("--inflight-requests", "40", "--inflight", "8", "--warmup", "5", "--on-extra", str(extra)),
            *("--out", str(out), "--json", str(raw), "--split", "--agent"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(raw.read_text())
    for setting in (OFF, ON, LEDGER_ONLY, METRICS_ONLY):
        assert len(result["rounds"][setting]) == 2
        assert result["summary"][setting]["errors"] == 0
        assert result["summary"][setting]["p50_ms"]["median"] > 0
        assert result["summary"][setting]["requests_per_s"]["median"] > 0
    # the ledger is off in one stack and records in the other
    assert result["ledger_messages"][OFF] in (0, None)
    assert result["ledger_messages"][ON] is None or result["ledger_messages"][ON] > 0
    assert result["ledger_messages"][METRICS_ONLY] in (0, None)
    assert result["metrics_endpoints"][OFF] == result["metrics_endpoints"][LEDGER_ONLY] == 0  # metrics off
    assert set(result["paired_change_pct"]) == set(result["change_pct"]) == {ON, LEDGER_ONLY, METRICS_ONLY}
    report = out.read_text()
    assert "| sequential p50 (ms) |" in report and "throughput at 8 in flight" in report
    assert "bench-extra-price" in report and "as agent `bench-agent`" in report and report in done.stdout
