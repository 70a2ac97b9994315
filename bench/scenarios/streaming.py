"""Scenario d: what modelbus adds to a stream's first token and to the gaps between tokens.

A second llm-katan waits 50 ms before its first chunk and 10 ms between
chunks. **direct** streams from it with httpx (OpenAI SSE), **modelbus**
streams the alias ``echo-stream`` (an endpoint on that llm-katan) with
``ModelbusClient.stream``; one stream at a time, in rounds with the order
rotating. Per stream: TTFT, and ITL as the mean gap between content chunks;
the percentiles are taken over streams.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import uvloop

from bench import servers
from bench.contenders import StreamTiming, bus_streamer, chat_body, http_client, http_streamer
from bench.load import LoadResult, Send, closed_loop, difference, distribution, interleaved, split, warm_up
from bench.settings import Settings
from shared.client import ModelbusClient

DIRECT = "direct"
MODELBUS = "modelbus"
WARMUP_STREAMS = 3


def run_streaming(lab: servers.Lab, settings: Settings) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Scenario d's section and the raw TTFT and ITL per contender."""
    katan = lab.streaming_katan()
    stack = lab.plain_stack()
    timings, results = uvloop.run(_measure(settings, f"{katan.base_url}/v1/chat/completions", stack.url))
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
    added = {
        f"{metric}_{q}": difference(series[MODELBUS][metric][q], series[DIRECT][metric][q])
        for metric in ("ttft", "itl")
        for q in ("p50_ms", "p99_ms")
    }
    section = {
        "status": "ok",
        "concurrency": 1,
        "upstream": {"ttft_ms": servers.STREAM_TTFT_MS, "itl_ms": servers.STREAM_ITL_MS},
        "streams_per_contender": settings.streams,
        "rounds": settings.rounds,
        "modelbus_stack": stack.describe(),
        "series": series,
        "added_ms": added,
    }
    return section, raw


async def _measure(
    settings: Settings, katan_url: str, bus_url: str
) -> tuple[dict[str, list[StreamTiming]], dict[str, LoadResult]]:
    direct_body = chat_body("echo", stream=True)
    bus_body = chat_body("echo-stream", stream=True)
    client = await ModelbusClient.connect(bus_url)
    timings: dict[str, list[StreamTiming]] = {DIRECT: [], MODELBUS: []}
    try:
        async with http_client(max_connections=2) as http:
            discarded: list[StreamTiming] = []
            await warm_up(http_streamer(http, katan_url, direct_body, servers.BENCH_KEY, discarded), 1, WARMUP_STREAMS)
            await warm_up(bus_streamer(client, bus_body, discarded), 1, WARMUP_STREAMS)
            contenders: dict[str, Send] = {
                DIRECT: http_streamer(http, katan_url, direct_body, servers.BENCH_KEY, timings[DIRECT]),
                MODELBUS: bus_streamer(client, bus_body, timings[MODELBUS]),
            }
            shares = split(settings.streams, settings.rounds)

            def one_round(send: Send, round_index: int) -> Awaitable[LoadResult]:
                return closed_loop(send, 1, requests=shares[round_index])

            results = await interleaved(contenders, settings.rounds, one_round)
    finally:
        await client.close()
    return timings, results
