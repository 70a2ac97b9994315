"""The modelbus-http contender: the benchmark's own modelbus stack reached through its HTTP gateway.

Nothing to install (``modelbus up`` starts the gateway beside the routers), so
unlike the peers' tests this runs with the rest of the suite. It drives the
contender exactly as scenarios p and d do (the load generator's minimal
HTTP/1.1 client, the stack's default key, the same body, the same llm-katan)
and checks answers, never timings.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import servers
from bench.contenders import PROMPT, StreamTiming, chat_body, h1_streamer
from bench.h1load import h1_sender, request_bytes
from bench.load import closed_loop
from bench.peers import CHAT_PATH
from bench.scenarios.peers import gateway_auth, gateway_client, tree

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def stack() -> Iterator[servers.ModelbusStack]:
    """The bench's plain stack (1 router, 1 provider worker, the gateway) on its llm-katans."""
    work = Path(tempfile.mkdtemp(prefix="modelbus-bench-http-test-"))
    lab = servers.Lab(work, work / "logs", swap_routers=1)
    try:
        yield lab.plain_stack()
    finally:
        survivors = lab.close()
        shutil.rmtree(work, ignore_errors=True)
        assert survivors == []


def test_the_stack_names_its_gateway_and_the_gateway_is_in_the_measured_process_tree(
    stack: servers.ModelbusStack,
) -> None:
    assert stack.http_url is not None and stack.http_url.startswith("http://127.0.0.1:")
    assert stack.api_key
    gateway_pid = stack.processes[servers.GATEWAY]
    assert gateway_pid in tree(stack.processes[servers.SUPERVISOR])
    # The key is held for the load generator, never shown with the stack.
    assert stack.api_key not in repr(stack)
    assert stack.api_key not in stack.describe()


def test_the_contender_answers_with_llm_katans_echo_through_gateway_nats_router_and_worker(
    stack: servers.ModelbusStack,
) -> None:
    async def exchange() -> tuple[int, bytes]:
        client = gateway_client(stack)
        try:
            headers = {"Content-Type": "application/json", **gateway_auth(stack)}
            return await client.exchange(request_bytes(client.host, client.port, CHAT_PATH, chat_body("echo"), headers))
        finally:
            await client.aclose()

    status, body = asyncio.run(exchange())
    assert status == 200, body[:300]
    answer = json.loads(body)
    content = answer["choices"][0]["message"]["content"]
    assert content.startswith("[echo]") and PROMPT in content


def test_the_load_generator_counts_every_request_of_the_contender_and_a_refused_key_as_failures(
    stack: servers.ModelbusStack,
) -> None:
    async def load() -> tuple[int, int, int, list[str]]:
        client = gateway_client(stack)
        try:
            send = h1_sender(client, CHAT_PATH, chat_body("echo"), gateway_auth(stack))
            good = await closed_loop(send, 4, requests=20)
            wrong = {"Authorization": "Bearer mb-not-the-key"}
            bad = await closed_loop(h1_sender(client, CHAT_PATH, chat_body("echo"), wrong), 1, requests=3)
        finally:
            await client.aclose()
        return len(good.latencies_ms), good.errors, bad.errors, bad.error_samples

    ok, good_errors, refused, samples = asyncio.run(load())
    assert (ok, good_errors) == (20, 0)
    assert refused == 3
    assert any("HTTP 401" in sample for sample in samples)
    assert not any(stack.api_key in sample for sample in samples if stack.api_key)


def test_the_contender_streams_content_chunks_through_the_gateway(stack: servers.ModelbusStack) -> None:
    timings: list[StreamTiming] = []

    async def stream() -> int:
        client = gateway_client(stack)
        try:
            send = h1_streamer(client, CHAT_PATH, chat_body("echo-stream", stream=True), gateway_auth(stack), timings)
            result = await closed_loop(send, 1, requests=2)
        finally:
            await client.aclose()
        return result.errors

    assert asyncio.run(stream()) == 0
    assert len(timings) == 2
    assert all(t.content_chunks > 1 and t.itl_ms is not None for t in timings)
