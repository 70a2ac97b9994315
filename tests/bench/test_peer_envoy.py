"""Envoy as the benchmark's reverse-proxy floor, installed from PyPI and run in front of a real llm-katan.

llm-katan checks the API key here and the client sends none, so a 200 also
proves that Envoy's route put the upstream key on the forwarded request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.peers import Running
from bench.peers.envoy import PINNED, Envoy
from tests.bench.peer_harness import (
    LOOPBACK_HEX,
    assert_echo_answer,
    assert_logs_nothing_for_successful_requests,
    keyed_katan,
    listening_sockets,
    send_benchmark_request,
    started,
)
from tests.conftest import Katan

pytestmark = [pytest.mark.peers, pytest.mark.timeout(1200)]

UPSTREAM_KEY = "sk-katan-envoy-test"


katan = keyed_katan(UPSTREAM_KEY)


@pytest.fixture(scope="module")
def envoy(katan: Katan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Envoy, Running]]:
    with started(Envoy(), katan, UPSTREAM_KEY, tmp_path_factory) as peer_and_running:
        yield peer_and_running


def test_envoy_forwards_the_benchmark_request_with_the_upstream_key_it_holds(envoy: tuple[Envoy, Running]) -> None:
    _, running = envoy
    assert "authorization" not in {name.lower() for name in running.headers}
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        reply = send_benchmark_request(client, running)
    assert_echo_answer(reply)


def test_envoy_logs_nothing_for_successful_requests(envoy: tuple[Envoy, Running]) -> None:
    _, running = envoy
    assert_logs_nothing_for_successful_requests(running)


def test_envoy_listens_on_its_loopback_port_and_nowhere_else(envoy: tuple[Envoy, Running]) -> None:
    # No admin interface: the proxy's own listener is the only socket it listens on.
    _, running = envoy
    assert listening_sockets(running.pid) == {(LOOPBACK_HEX, running.port)}


def test_envoy_runs_one_worker_thread(envoy: tuple[Envoy, Running]) -> None:
    _, running = envoy
    names = [(task / "comm").read_text().strip() for task in Path(f"/proc/{running.pid}/task").iterdir()]
    assert [name for name in names if name.startswith("wrk:")] == ["wrk:worker_0"]


def test_envoy_reports_the_pinned_version(envoy: tuple[Envoy, Running]) -> None:
    peer, running = envoy
    assert peer.version() == PINNED
    assert running.version == PINNED
