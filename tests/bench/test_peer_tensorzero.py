"""The TensorZero peer, installed from PyPI and started in front of a real llm-katan.

llm-katan checks the key's value (``--validate-keys``), so a 200 also proves
the gateway forwarded the key from its environment to the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.contenders import PROMPT
from bench.peers import Running, Upstream
from bench.peers.tensorzero import TensorZero
from tests.bench.peer_harness import keyed_katan, post_benchmark_request
from tests.conftest import Katan

pytestmark = [pytest.mark.peers, pytest.mark.timeout(900)]

UPSTREAM_KEY = "sk-bench-tensorzero"


katan = keyed_katan(UPSTREAM_KEY)


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> TensorZero:
    tensorzero = TensorZero()
    tensorzero.install(tmp_path_factory.mktemp("install") / "pip.log")
    return tensorzero


@pytest.fixture()
def running(peer: TensorZero, katan: Katan, tmp_path: Path) -> Iterator[Running]:
    gateway = peer.start(Upstream("127.0.0.1", katan.port, UPSTREAM_KEY), tmp_path, tmp_path / "tensorzero.log")
    yield gateway
    peer.stop(gateway)


def test_the_benchmark_request_comes_back_with_the_upstream_echo(running: Running) -> None:
    reply = post_benchmark_request(running)

    assert reply.status_code == 200, reply.text
    content = reply.json()["choices"][0]["message"]["content"]
    assert content.startswith("[echo] model=echo")
    assert f"User: {PROMPT}" in content


def test_the_peer_reports_its_pinned_version_and_its_model_name(running: Running) -> None:
    assert running.version == "2026.6.0"
    assert running.model == "tensorzero::model_name::echo"
    assert running.path == "/openai/v1/chat/completions"


def test_requests_leave_no_access_log_lines(running: Running) -> None:
    for _ in range(20):
        assert post_benchmark_request(running).status_code == 200
    assert running.log_path is not None
    assert running.log_path.read_text().strip() == ""


def test_stopping_the_peer_ends_its_process(peer: TensorZero, running: Running) -> None:
    peer.stop(running)

    assert running.process.poll() is not None
