"""Portkey's gateway as a benchmark peer, installed from npm and run in front of a real llm-katan.

llm-katan checks the API key here, so a 200 also proves that the key in the
peer's request headers reached the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bench.contenders import PROMPT
from bench.peers import Running
from bench.peers.portkey import PINNED, Portkey
from tests.bench.peer_harness import LOOPBACK_HEX, keyed_katan, listening_sockets, post_benchmark_request, started
from tests.conftest import Katan

pytestmark = [pytest.mark.peers, pytest.mark.timeout(1200)]

UPSTREAM_KEY = "sk-katan-portkey-test"


katan = keyed_katan(UPSTREAM_KEY)


@pytest.fixture(scope="module")
def portkey(katan: Katan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Portkey, Running]]:
    with started(Portkey(), katan, UPSTREAM_KEY, tmp_path_factory) as peer_and_running:
        yield peer_and_running


def test_portkey_forwards_the_benchmark_request_and_returns_the_upstream_reply(
    portkey: tuple[Portkey, Running],
) -> None:
    _, running = portkey
    reply = post_benchmark_request(running)
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.content)
    assert answer["model"] == "echo"
    assert PROMPT in answer["choices"][0]["message"]["content"]
    assert answer["choices"][0]["message"]["content"].startswith("[echo]")


def test_portkey_reports_the_pinned_version(portkey: tuple[Portkey, Running]) -> None:
    peer, running = portkey
    assert peer.version() == PINNED
    assert running.version == PINNED


def test_portkey_listens_on_loopback_only(portkey: tuple[Portkey, Running]) -> None:
    _, running = portkey
    # Any address besides loopback's on its port would be another interface.
    assert {address for address, port in listening_sockets(running.pid) if port == running.port} == {LOOPBACK_HEX}
