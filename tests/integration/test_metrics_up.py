"""``modelbus up`` (secure, the default) names every service's metrics endpoint in its ready line and
in ``client.json`` and ``run.json``; each endpoint says which service it belongs to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shared.natsserver import die_with_parent
from tests.conftest import ROOT, stop_process, wait_for_line
from tests.integration.test_metrics import SERVICES, Scraped

pytestmark = pytest.mark.timeout(120)


def test_a_secure_up_names_every_metrics_endpoint_in_its_ready_line_client_json_and_run_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MODELBUS_HOME")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "--data-dir", str(home), "up", "--nats-port", "0", "--http-port", "0"],
        cwd=ROOT,
        env=env | {"PYTHONUNBUFFERED": "1", "MODELBUS_LOG_LEVEL": "WARNING"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        output: list[str] = []
        ready = wait_for_line(proc, lambda line: line.startswith("ready "), 90, output)
        urls = ready.split(" metrics=", 1)[1].split()[0].split(",")
        assert len(urls) == SERVICES, ready
        assert json.loads((home / "client.json").read_text())["metrics_urls"].split(",") == urls
        assert json.loads((home / "run.json").read_text())["metrics_urls"] == urls
        named = set()
        for url in urls:
            scraped = Scraped(httpx.get(url, timeout=5).text)
            named |= {dict(ls)["service"] for (n, ls) in scraped.samples if n == "modelbus_service_info"}
        assert named == {"secrets", "config", "router", "providers", "gateway"}
    finally:
        stop_process(proc)
