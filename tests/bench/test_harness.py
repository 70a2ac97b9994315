"""The benchmark harness end to end: a quick run without LiteLLM writes every artefact.

The peer comparison (scenario p) runs with the two peers that install in
seconds (TensorZero, Portkey); the others take a minute or more each to
install, so this smoke run leaves them out and its report says so
(``make bench-peers-test``, run by CI on its own, installs and checks them all).

Only the shape of the output is checked, never a timing: the numbers of a
smoke run on a shared CI machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMOKE_PEERS = "tensorzero,portkey"
SCENARIO_KEYS = {
    "p": {"contenders", "unavailable", "not_selected", "rust_cpu_median_ms"},
    "a": {"series", "added_ms", "ratio_vs_litellm", "litellm", "headline_series"},
    "b": {"levels", "modelbus_vs_direct", "contenders"},
    "c": {"levels", "best"},
    "d": {"series", "added_ms", "http_added_ms", "http_over_bus_ms", "upstream"},
    "e": {"propagation_ms", "requests", "failed", "missed", "routers"},
    "f": {"processes", "largest_modelbus_process", "load_samples"},
    "g": {"tracing_on", "tracing_off", "cost_ms", "spans"},
}


pytestmark = pytest.mark.slow  # one quick benchmark run (~35 s) shared by the module's tests


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``python -m bench --quick --skip-litellm`` run, shared by the tests below."""
    out = tmp_path_factory.mktemp("bench-out")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--skip-litellm", "--peers", SMOKE_PEERS, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, out


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.timeout(360)
def test_a_quick_run_exits_cleanly_and_prints_the_report(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, _ = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    assert "## Targets" in done.stdout


@pytest.mark.timeout(360)
def test_a_quick_run_writes_the_json_markdown_and_plots(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = quick_run
    results = _results(out)
    assert set(results["scenarios"]) == set(SCENARIO_KEYS)
    for letter, keys in SCENARIO_KEYS.items():
        section = results["scenarios"][letter]
        assert section["status"] == "ok", (letter, section)
        assert keys <= set(section), (letter, keys - set(section))
    for key in ("machine", "versions", "settings", "command", "targets", "duration_s"):
        assert key in results
    assert results["machine"]["cores"] >= 1
    raw = json.loads((out / "raw_latencies.json").read_text())
    assert set(raw["a"]) == {"direct", "modelbus", "modelbus+tracing"}
    # modelbus's HTTP gateway is a contender beside the peers and in the streams.
    http = results["scenarios"]["p"]["contenders"]["modelbus-http"]
    assert http["family"] == "modelbus" and http["c1"]["requests"] > 0 and http["c1"]["errors"] == 0
    assert set(results["scenarios"]["d"]["series"]) == {"direct", "modelbus", "modelbus-http"}
    assert any("modelbus-http" in target["target"] for target in results["targets"])
    markdown = (out / "results.md").read_text()
    for heading in ("## Targets", "## a. ", "## b. ", "## c. ", "## d. ", "## e. ", "## f. ", "## g. "):
        assert heading in markdown
    assert "| contender | requests | errors | p50 ms | p90 ms | p99 ms | mean ms |" in markdown
    assert "| concurrency | contender | req/s | p50 ms | p90 ms | p99 ms | errors |" in markdown
    for name in ("latency_cdf.png", "throughput.png", "streaming.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name


@pytest.mark.timeout(360)
def test_a_run_without_litellm_says_so_and_measures_it_nowhere(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = quick_run
    results = _results(out)
    assert "litellm" not in results["scenarios"]["a"]["series"]
    assert "litellm" not in results["scenarios"]["p"]["contenders"]
    assert "litellm" in results["scenarios"]["p"]["not_selected"]
    markdown = (out / "results.md").read_text()
    assert "LiteLLM was skipped" in markdown
    assert "Not selected for this run (`--peers`): vllm-router, sglang-router, envoy, litellm." in markdown


@pytest.mark.timeout(360)
def test_the_traced_stack_exported_spans_and_no_process_outlived_the_run(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = quick_run
    results = _results(out)
    spans = results["scenarios"]["g"]["spans"]
    assert spans["spans"] > 0
    assert {"modelbus-router", "modelbus-providers"} <= set(spans["spans_by_service"])
    labels = set(results["scenarios"]["f"]["processes"])
    assert {"services.router", "services.providers", "services.config", "services.secrets", "nats-server"} <= labels
    assert results["survivors"] == []
