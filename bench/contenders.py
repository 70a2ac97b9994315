"""The contenders as :data:`bench.load.Send` functions, and stream timing.

Every contender sends the same OpenAI chat completion body (model ``echo``,
one short user message), pre-encoded once:

* **direct**, **litellm** and **modelbus-http**: the minimal keep-alive
  HTTP/1.1 client of :mod:`bench.h1load` POSTing to ``/v1/chat/completions``
  (llm-katan itself, the LiteLLM proxy, or modelbus's HTTP gateway with its
  key as ``Authorization: Bearer``), one connection per request in flight;
  streams (scenario d) go through the same client, which notes when each piece
  of the SSE body arrived (:func:`h1_streamer`);
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.h1load import H1Client, H1Clients, request_bytes
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


def sse_content_times(pieces: Sequence[tuple[float, bytes]]) -> list[float]:
    """The arrival time of each SSE line with content, from a body's ``(time, piece)`` pairs.

    A line counts as arrived with the piece that completes it (a line split
    over two pieces arrived with the second)."""
    times: list[float] = []
    pending = b""
    for arrived, piece in pieces:
        *lines, pending = (pending + piece).split(b"\n")
        for line in lines:
            if sse_content(line.decode().rstrip("\r")):
                times.append(arrived)
    if pending and sse_content(pending.decode().rstrip("\r")):
        times.append(pieces[-1][0])
    return times


def h1_streamer(
    client: H1Client, path: str, body: bytes, headers: Mapping[str, str], timings: list[StreamTiming]
) -> Send:
    """Stream ``body`` from an OpenAI SSE endpoint with the load generator's minimal client, and append
    each stream's timing to ``timings``; anything but a 200 is a failure."""
    request = request_bytes(
        client.host,
        client.port,
        path,
        body,
        {"Content-Type": "application/json", "Accept": "text/event-stream", **headers},
    )

    async def send() -> None:
        started = time.perf_counter()
        status, pieces = await client.exchange_timed(request)
        if status != 200:
            raise RequestFailed(f"HTTP {status}: {b''.join(piece for _, piece in pieces)[:200]!r}")
        timings.append(stream_timing(started, sse_content_times(pieces)))

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
