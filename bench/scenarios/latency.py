"""Scenarios a and g: what modelbus adds to one request, and what tracing adds to modelbus.

One measurement at concurrency 1 gives both, so all series share the same
minutes of machine time: **direct** (llm-katan itself), **litellm** (its
proxy in front of the same llm-katan), **modelbus** (tracing off) and
**modelbus+tracing** (a second stack exporting every span to the OTLP sink).
The requests are split into rounds whose contender order rotates.

"Added" latency is the difference of percentiles (p50 of modelbus minus p50
of direct), not a percentile of per-request differences, which a closed
loop cannot pair up. The headline uses the traced stack, as the targets do.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import uvloop

from bench import servers
from bench.contenders import bus_sender, chat_body, http_sender
from bench.h1load import H1Clients
from bench.litellm_proxy import LiteLLMProxy
from bench.load import LoadResult, Send, closed_loop, difference, interleaved, split, summarize, warm_up
from bench.settings import Settings
from shared.client import ModelbusClient

DIRECT = "direct"
LITELLM = "litellm"
MODELBUS = "modelbus"
TRACED = "modelbus+tracing"
HEADLINE = TRACED


def run_latency(
    lab: servers.Lab, settings: Settings, litellm: LiteLLMProxy | None, litellm_note: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[float]]]:
    """Measure the four series; return sections a and g and the raw latencies per series."""
    katan = lab.katan()
    plain = lab.plain_stack()
    traced = lab.traced_stack()
    sink = lab.otlp_sink()
    totals, warmup_errors = uvloop.run(
        _measure(settings, f"{katan.base_url}/v1/chat/completions", plain.url, traced.url, litellm)
    )
    # The exporters flush what they still hold when their services stop.
    lab.release(servers.TRACED_STACK)
    spans = sink.stats()
    lab.release(servers.OTLP_SINK)

    series = {name: summarize(result, warmup_errors=warmup_errors[name]) for name, result in totals.items()}
    added = {
        name: {
            "p50_ms": difference(series[name]["p50_ms"], series[DIRECT]["p50_ms"]),
            "p99_ms": difference(series[name]["p99_ms"], series[DIRECT]["p99_ms"]),
        }
        for name in series
        if name != DIRECT
    }
    section_a = {
        "status": "ok",
        "concurrency": 1,
        "requests_per_contender": settings.latency_requests,
        "rounds": settings.rounds,
        "warmup_requests": settings.warmup_requests,
        "contenders": list(series),
        "litellm": litellm_note,
        "modelbus_stack": traced.describe(),
        "headline_series": HEADLINE,
        "series": series,
        "added_ms": added,
        "ratio_vs_litellm": {
            q: _ratio(added[HEADLINE][q], added[LITELLM][q]) if LITELLM in added else None for q in ("p50_ms", "p99_ms")
        },
    }
    traced_requests = settings.warmup_requests + series[TRACED]["requests"] + series[TRACED]["errors"]
    section_g = {
        "status": "ok",
        "concurrency": 1,
        "tracing_off": series[MODELBUS],
        "tracing_on": series[TRACED],
        "cost_ms": {
            q: difference(series[TRACED][q], series[MODELBUS][q]) for q in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")
        },
        "traced_requests": traced_requests,
        "spans": spans,
        "spans_per_request": spans["spans"] / traced_requests if traced_requests else None,
    }
    return section_a, section_g, {name: result.latencies_ms for name, result in totals.items()}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """modelbus's added latency over LiteLLM's (undefined when LiteLLM adds nothing)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


async def _measure(
    settings: Settings, katan_url: str, plain_url: str, traced_url: str, litellm: LiteLLMProxy | None
) -> tuple[dict[str, LoadResult], dict[str, int]]:
    body = chat_body("echo")
    plain = await ModelbusClient.connect(plain_url)
    traced = await ModelbusClient.connect(traced_url)
    try:
        async with H1Clients() as http:
            contenders: dict[str, Send] = {DIRECT: http_sender(http, katan_url, body, servers.BENCH_KEY)}
            if litellm is not None:
                contenders[LITELLM] = http_sender(http, litellm.chat_url, body, litellm.master_key)
            contenders[MODELBUS] = bus_sender(plain, body)
            contenders[TRACED] = bus_sender(traced, body)
            warmup_errors = {
                name: await warm_up(send, 1, settings.warmup_requests) for name, send in contenders.items()
            }
            shares = split(settings.latency_requests, settings.rounds)

            def one_round(send: Send, round_index: int) -> Awaitable[LoadResult]:
                return closed_loop(send, 1, requests=shares[round_index])

            totals = await interleaved(contenders, settings.rounds, one_round)
    finally:
        await plain.close()
        await traced.close()
    return totals, warmup_errors
