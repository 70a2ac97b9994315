"""The provider HTTP client against llm-katan, a real third-party HTTP server (uvicorn underneath).

The misbehaving upstreams live in tests/unit/services/providers/upstream_fakes.py;
this module checks what only a real server shows: keep-alive across calls,
a bounded pool under concurrency, chunked SSE streams, and the SSRF guard of
an endpoint that does not allow private addresses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from services.providers.base import EndpointConnection
from services.providers.http import UpstreamClient
from services.providers.pool import ConnectionPool
from services.providers.ssrf import PrivateAddressRefused
from shared.routing import Endpoint
from tests.conftest import Katan, start_katan, stop_process

BODY = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hello katan"}]}).encode()
STREAM_BODY = json.dumps(
    {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hello katan"}]}
).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer any"}


@pytest.fixture(scope="module")
def katan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Katan]:
    k = start_katan(Path(tmp_path_factory.mktemp("katan")))
    try:
        yield k
    finally:
        stop_process(k.proc)


def only_pool(client: UpstreamClient) -> ConnectionPool:
    (pool,) = client._pools.values()
    return pool


def test_sequential_calls_reuse_one_kept_alive_connection(katan: Katan) -> None:
    async def scenario() -> None:
        client = UpstreamClient(timeout_s=10)
        url = f"{katan.base_url}/v1/chat/completions"
        for _ in range(20):
            response = await client.post(url, content=BODY, headers=HEADERS)
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"]
        assert only_pool(client).open_connections == 1
        await client.aclose()

    uvloop.run(scenario())


def test_concurrent_calls_all_succeed_within_the_pool_bound(katan: Katan) -> None:
    async def scenario() -> None:
        client = UpstreamClient(timeout_s=10, max_connections=8)
        url = f"{katan.base_url}/v1/chat/completions"
        responses = await asyncio.gather(*(client.post(url, content=BODY, headers=HEADERS) for _ in range(64)))
        assert [r.status_code for r in responses] == [200] * 64
        assert 1 <= only_pool(client).open_connections <= 8
        assert client.in_flight == 0
        await client.aclose()

    uvloop.run(scenario())


def test_a_streamed_completion_arrives_as_sse_lines_and_its_connection_is_kept(katan: Katan) -> None:
    async def scenario() -> list[str]:
        client = UpstreamClient(timeout_s=10)
        url = f"{katan.base_url}/v1/chat/completions"
        data: list[str] = []
        for _ in range(3):
            async with client.stream("POST", url, content=STREAM_BODY, headers=HEADERS) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line)
                    if line == "data: [DONE]":
                        break  # as the OpenAI adapter returns at [DONE], before the chunked terminator is read
            pool = only_pool(client)
            deadline = asyncio.get_running_loop().time() + 5
            while pool.idle_connections != 1:  # the rest of the stream is drained, then pooled
                assert asyncio.get_running_loop().time() < deadline, "the drained connection never came back"
                await asyncio.sleep(0.005)
        assert only_pool(client).open_connections == 1
        await client.aclose()
        return data

    data = uvloop.run(scenario())
    assert data.count("data: [DONE]") == 3
    chunks = [json.loads(line[5:]) for line in data if line != "data: [DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_an_endpoint_that_does_not_allow_private_addresses_never_connects_to_llm_katan(katan: Katan) -> None:
    async def no_key(ref: str, endpoint: str) -> str:
        return ""

    async def scenario() -> None:
        endpoint = Endpoint(name="public-only", provider="openai-compatible", base_url=f"{katan.base_url}/v1")
        connection = EndpointConnection(endpoint, no_key)
        with pytest.raises(PrivateAddressRefused, match="allowPrivate"):
            await connection.http.post(f"{katan.base_url}/v1/chat/completions", content=BODY, headers=HEADERS)
        assert only_pool(connection.http).open_connections == 0
        await connection.aclose()

    uvloop.run(scenario())
