"""vllm-router and sglang-router as benchmark peers, installed from PyPI and run in front of a real llm-katan.

llm-katan checks the API key here, so a 200 also proves that the key in the
peer's request headers reached the upstream through the router.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.peers import Peer, Running, sglang_router, vllm_router
from bench.peers.sglang_router import SglangRouter
from bench.peers.vllm_router import VllmRouter
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

UPSTREAM_KEY = "sk-katan-rust-router-test"

katan = keyed_katan(UPSTREAM_KEY)


@pytest.fixture(scope="module", params=[VllmRouter, SglangRouter], ids=["vllm-router", "sglang-router"])
def router(
    request: pytest.FixtureRequest, katan: Katan, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Peer, Running]]:
    peer: Peer = request.param()
    with started(peer, katan, UPSTREAM_KEY, tmp_path_factory) as peer_and_running:
        yield peer_and_running


def test_router_forwards_the_benchmark_request_and_returns_the_upstream_reply(
    router: tuple[Peer, Running],
) -> None:
    _, running = router
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        reply = send_benchmark_request(client, running)
    assert_echo_answer(reply)


def test_router_without_the_client_key_is_refused_by_the_upstream(router: tuple[Peer, Running]) -> None:
    # The routers hold no upstream key: the one in Running.headers is what llm-katan sees.
    _, running = router
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        reply = send_benchmark_request(client, running, headers={})
    assert reply.status_code == 401, reply.text


def test_router_logs_nothing_for_successful_requests(router: tuple[Peer, Running]) -> None:
    _, running = router
    assert_logs_nothing_for_successful_requests(running)


def test_router_listens_on_loopback_only(router: tuple[Peer, Running]) -> None:
    _, running = router
    sockets = listening_sockets(running.pid)
    assert (LOOPBACK_HEX, running.port) in sockets
    # The other one is its Prometheus exporter, which cannot be switched off.
    assert {address for address, _ in sockets} == {LOOPBACK_HEX}


def test_router_reports_the_pinned_version(router: tuple[Peer, Running]) -> None:
    peer, running = router
    pinned = {"vllm-router": vllm_router.PINNED, "sglang-router": sglang_router.PINNED}[peer.name]
    assert peer.version() == pinned
    assert running.version == pinned
