"""The contenders as :data:`bench.load.Send` functions, and stream timing.

Every contender sends the same OpenAI chat completion body (model ``echo``,
one short user message), pre-encoded once:

* **direct** and **litellm**: the minimal keep-alive HTTP/1.1 client of
  :mod:`bench.h1load` POSTing to ``/v1/chat/completions`` (llm-katan itself,
  or the LiteLLM proxy), one connection per request in flight; streams
  (scenario d) use ``httpx``, whose line iteration the SSE timing needs;
* **modelbus**: :class:`shared.client.ModelbusClient` over NATS, where ``echo``
  is an alias of the endpoint pointing at the same llm-katan.

Streams are timed by the arrival of chunks that carry content: time to first
token (TTFT) from sending the request to the first such chunk, inter-token
latency (ITL) as the mean gap between consecutive ones within one stream.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from bench.h1load import H1Clients
from bench.load import RequestFailed, Send
from shared.client import ModelbusClient

PROMPT = "hello from the modelbus benchmark"
REQUEST_TIMEOUT_S = 30.0


def chat_body(model: str, *, stream: bool = False) -> bytes:
    """The request every contender sends, for ``model``."""
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def http_client(max_connections: int) -> httpx.AsyncClient:
    """A pooled keep-alive client that can hold ``max_connections`` requests in flight.

    ``trust_env=False``: a proxy set in the environment must not sit between
    the benchmark and its loopback servers.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S, trust_env=False)


def http_sender(clients: H1Clients, url: str, body: bytes, api_key: str) -> Send:
    """POST ``body`` to ``url`` with the load generator's minimal client; anything but 200 is a failure."""
    return clients.sender(url, body, {"Authorization": f"Bearer {api_key}"})


def bus_sender(client: ModelbusClient, body: bytes) -> Send:
    """Send ``body`` through modelbus; any ``Modelbus-Status`` but 200 is a failure."""

    async def send() -> None:
        reply = await client.request_raw(body, timeout=REQUEST_TIMEOUT_S)
        if reply.status != 200:
            raise RequestFailed(f"modelbus {reply.status}: {reply.body[:200]!r}")

    return send


# ---------------------------------------------------------------- streams


@dataclass(frozen=True)
class StreamTiming:
    """When one stream's content arrived."""

    ttft_ms: float
    """From sending the request to the first chunk with content."""
    itl_ms: float | None
    """Mean gap between consecutive content chunks (``None`` with a single chunk)."""
    content_chunks: int


def stream_timing(started: float, content_times: Sequence[float]) -> StreamTiming:
    """Timing of one stream from its start and the ``perf_counter`` of each content chunk."""
    if not content_times:
        raise RequestFailed("the stream carried no content")
    gaps = [(later - earlier) * 1000.0 for earlier, later in itertools.pairwise(content_times)]
    return StreamTiming(
        ttft_ms=(content_times[0] - started) * 1000.0,
        itl_ms=statistics.fmean(gaps) if gaps else None,
        content_chunks=len(content_times),
    )


def sse_content(line: str) -> str | None:
    """The delta text of one OpenAI SSE line (``data: {...}``), or ``None`` if it carries none.

    Blank keep-alive lines, comments, ``event:`` lines and ``data: [DONE]``
    carry no content.
    """
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    chunk = json.loads(payload)
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            return str(content)
    return None


def http_streamer(client: httpx.AsyncClient, url: str, body: bytes, api_key: str, timings: list[StreamTiming]) -> Send:
    """Stream ``body`` from an OpenAI SSE endpoint and append each stream's timing to ``timings``."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}", "accept": "text/event-stream"}

    async def send() -> None:
        started = time.perf_counter()
        content_times: list[float] = []
        async with client.stream("POST", url, content=body, headers=headers) as reply:
            if reply.status_code != 200:
                await reply.aread()
                raise RequestFailed(f"HTTP {reply.status_code}: {reply.text[:200]}")
            async for line in reply.aiter_lines():
                if sse_content(line):
                    content_times.append(time.perf_counter())
        timings.append(stream_timing(started, content_times))

    return send


def bus_streamer(client: ModelbusClient, body: bytes, timings: list[StreamTiming]) -> Send:
    """Stream ``body`` through modelbus and append each stream's timing to ``timings``."""

    async def send() -> None:
        started = time.perf_counter()
        content_times: list[float] = []
        async for chunk in client.stream(body, timeout=REQUEST_TIMEOUT_S):
            if any(choice.delta.content for choice in chunk.choices):
                content_times.append(time.perf_counter())
        timings.append(stream_timing(started, content_times))

    return send
