"""Scenario d: what modelbus adds to a stream's first token and to the gaps between tokens.

A second llm-katan waits 50 ms before its first chunk and 10 ms between
chunks. **direct** streams from it (OpenAI SSE), **modelbus** streams the
alias ``echo-stream`` (an endpoint on that llm-katan) with
``ModelbusClient.stream``, and **modelbus-http** streams the same alias
through the stack's HTTP gateway (``POST /v1/chat/completions`` with
``stream: true`` and the gateway's key); one stream at a time, in rounds with
the order rotating. direct and modelbus-http are read by the load
generator's minimal HTTP/1.1 client (:func:`bench.contenders.h1_streamer`),
the one scenario p uses, so the HTTP client's own cost is the same small
amount for both. Per stream: TTFT, and ITL as the mean gap between content
chunks; the percentiles are taken over streams.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import uvloop

from bench import servers
from bench.contenders import StreamTiming, bus_streamer, chat_body, h1_streamer
from bench.h1load import H1Client
from bench.load import LoadResult, Send, closed_loop, difference, distribution, interleaved, split, warm_up
from bench.peers import CHAT_PATH
from bench.scenarios.peers import gateway_auth, gateway_client
from bench.settings import Settings
from shared.client import ModelbusClient
from tests.conftest import Katan

DIRECT = "direct"
MODELBUS = "modelbus"
MODELBUS_HTTP = "modelbus-http"
WARMUP_STREAMS = 3


def _added(series: dict[str, dict[str, Any]], ours: str, base: str) -> dict[str, float | None]:
    """``ours`` minus ``base``, TTFT and ITL, at p50 and p99 (difference of percentiles)."""
    return {
        f"{metric}_{q}": difference(series[ours][metric][q], series[base][metric][q])
        for metric in ("ttft", "itl")
        for q in ("p50_ms", "p99_ms")
    }


def run_streaming(lab: servers.Lab, settings: Settings) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Scenario d's section and the raw TTFT and ITL per contender."""
    katan = lab.streaming_katan()
    stack = lab.plain_stack()
    timings, results = uvloop.run(_measure(settings, katan, stack))
    series: dict[str, dict[str, Any]] = {}
    raw: dict[str, dict[str, list[float]]] = {"ttft_ms": {}, "itl_ms": {}}
    for name, streams in timings.items():
        ttft = [t.ttft_ms for t in streams]
        itl = [t.itl_ms for t in streams if t.itl_ms is not None]
        raw["ttft_ms"][name], raw["itl_ms"][name] = ttft, itl
        series[name] = {
            "streams": len(streams),
            "errors": results[name].errors,
            "error_samples": results[name].error_samples,
            "content_chunks_mean": sum(t.content_chunks for t in streams) / len(streams) if streams else None,
            "ttft": distribution(ttft),
            "itl": distribution(itl),
            "duration": distribution(results[name].latencies_ms),
        }
    section = {
        "status": "ok",
        "concurrency": 1,
        "upstream": {"ttft_ms": servers.STREAM_TTFT_MS, "itl_ms": servers.STREAM_ITL_MS},
        "streams_per_contender": settings.streams,
        "rounds": settings.rounds,
        "modelbus_stack": stack.describe(),
        "series": series,
        "added_ms": _added(series, MODELBUS, DIRECT),
        "http_added_ms": _added(series, MODELBUS_HTTP, DIRECT),
        "http_over_bus_ms": _added(series, MODELBUS_HTTP, MODELBUS),
    }
    return section, raw


async def _measure(
    settings: Settings, katan: Katan, stack: servers.ModelbusStack
) -> tuple[dict[str, list[StreamTiming]], dict[str, LoadResult]]:
    direct_body = chat_body("echo", stream=True)
    bus_body = chat_body("echo-stream", stream=True)
    direct = H1Client("127.0.0.1", katan.port)
    direct_auth = {"Authorization": f"Bearer {servers.BENCH_KEY}"}
    gateway = gateway_client(stack)
    gateway_auth_header = gateway_auth(stack)
    client = await ModelbusClient.connect(stack.url)
    timings: dict[str, list[StreamTiming]] = {DIRECT: [], MODELBUS: [], MODELBUS_HTTP: []}
    try:
        discarded: list[StreamTiming] = []
        await warm_up(h1_streamer(direct, CHAT_PATH, direct_body, direct_auth, discarded), 1, WARMUP_STREAMS)
        await warm_up(bus_streamer(client, bus_body, discarded), 1, WARMUP_STREAMS)
        await warm_up(h1_streamer(gateway, CHAT_PATH, bus_body, gateway_auth_header, discarded), 1, WARMUP_STREAMS)
        contenders: dict[str, Send] = {
            DIRECT: h1_streamer(direct, CHAT_PATH, direct_body, direct_auth, timings[DIRECT]),
            MODELBUS: bus_streamer(client, bus_body, timings[MODELBUS]),
            MODELBUS_HTTP: h1_streamer(gateway, CHAT_PATH, bus_body, gateway_auth_header, timings[MODELBUS_HTTP]),
        }
        shares = split(settings.streams, settings.rounds)

        def one_round(send: Send, round_index: int) -> Awaitable[LoadResult]:
            return closed_loop(send, 1, requests=shares[round_index])

        results = await interleaved(contenders, settings.rounds, one_round)
    finally:
        await client.close()
        await direct.aclose()
        await gateway.aclose()
    return timings, results
