"""One chaos scenario end to end against real processes: a router is killed under load.

A real nats-server, the six services started as ``modelbus up`` starts them,
raw NATS load with every reply message counted per request id. Short phases
keep it near 15 s; ``make chaos`` runs the full set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.runner import run_scenario
from bench.chaos.scenarios import BY_NAME, Timing
from tests.conftest import ROOT

QUICK = Timing(pre_s=1.0, post_s=2.0, timeout_ms=3000, concurrency=12)


@pytest.mark.timeout(90)
@pytest.mark.slow
def test_killing_a_router_under_load_leaves_no_request_unanswered_or_answered_twice(tmp_path: Path) -> None:
    section = run_scenario(BY_NAME["router"], QUICK, ROOT, tmp_path / "logs")
    assert section["status"] == "ok", section.get("error")
    figures = section["figures"]
    outcomes = ("ok", "error", "lost_silence", "never", "duplicated", "bad_stream")
    assert sum(figures[name] for name in outcomes) == figures["sent"] > 0
    assert figures["in_flight_at_fault"] > 0, "the fault hit no request in flight: the scenario proved nothing"
    assert figures["ok"] > 0
    assert (figures["never"], figures["duplicated"], figures["bad_stream"]) == (0, 0, 0), figures
    assert section["back_after_restart_s"] > 0
    assert (tmp_path / "logs" / "router" / "router-1.log").read_text().count("---- start") == 2
