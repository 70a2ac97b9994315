"""Scenarios b and c: requests per second at rising concurrency.

b: direct, litellm and modelbus (tracing off) through the same llm-katan;
c: modelbus alone with the mock provider, no upstream at all (the bus's own
ceiling). At every level each contender first gets an unmeasured warm-up at
that concurrency (it fills the connection pools), then a fixed time of
closed-loop load split into rounds with the order rotating. req/s counts
successful requests only; failures are reported beside them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import uvloop

from bench import progress, servers
from bench.contenders import bus_sender, chat_body, http_sender
from bench.h1load import H1Clients
from bench.litellm_proxy import LiteLLMProxy
from bench.load import LoadResult, Send, closed_loop, interleaved, summarize, warm_up
from bench.scenarios.memory import MemorySampler
from bench.settings import Settings
from shared.client import ModelbusClient

DIRECT = "direct"
LITELLM = "litellm"
MODELBUS = "modelbus"
BUS_ONLY = "modelbus (mock)"


def run_throughput(
    lab: servers.Lab,
    settings: Settings,
    litellm: LiteLLMProxy | None,
    litellm_note: str,
    memory: MemorySampler | None,
) -> dict[str, Any]:
    """Scenario b."""
    katan = lab.katan()
    stack = lab.plain_stack()
    levels = uvloop.run(_measure_b(settings, f"{katan.base_url}/v1/chat/completions", stack.url, litellm, memory))
    ratios = {
        level: _ratio(rows[MODELBUS]["requests_per_s"], rows[DIRECT]["requests_per_s"])
        for level, rows in levels.items()
    }
    return {
        "status": "ok",
        "levels": levels,
        "contenders": list(next(iter(levels.values()))) if levels else [],
        "seconds_per_level": settings.level_seconds,
        "rounds": settings.rounds,
        "litellm": litellm_note,
        "modelbus_stack": stack.describe(),
        "modelbus_vs_direct": ratios,
    }


def run_bus_only(lab: servers.Lab, settings: Settings, memory: MemorySampler | None) -> dict[str, Any]:
    """Scenario c."""
    stack = lab.plain_stack()
    levels = uvloop.run(_measure_c(settings, stack.url, memory))
    best = max(levels, key=lambda level: levels[level][BUS_ONLY]["requests_per_s"])
    return {
        "status": "ok",
        "levels": levels,
        "contenders": [BUS_ONLY],
        "seconds_per_level": settings.level_seconds,
        "rounds": settings.rounds,
        "modelbus_stack": stack.describe(),
        "best": {"concurrency": int(best), "requests_per_s": levels[best][BUS_ONLY]["requests_per_s"]},
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


async def _measure_b(
    settings: Settings, katan_url: str, bus_url: str, litellm: LiteLLMProxy | None, memory: MemorySampler | None
) -> dict[str, dict[str, Any]]:
    body = chat_body("echo")
    client = await ModelbusClient.connect(bus_url)
    try:
        async with H1Clients() as http:
            contenders: dict[str, Send] = {DIRECT: http_sender(http, katan_url, body, servers.BENCH_KEY)}
            if litellm is not None:
                contenders[LITELLM] = http_sender(http, litellm.chat_url, body, litellm.master_key)
            contenders[MODELBUS] = bus_sender(client, body)
            return await _levels("b", contenders, settings.throughput_levels, settings, memory)
    finally:
        await client.close()


async def _measure_c(settings: Settings, bus_url: str, memory: MemorySampler | None) -> dict[str, dict[str, Any]]:
    client = await ModelbusClient.connect(bus_url)
    try:
        return await _levels(
            "c", {BUS_ONLY: bus_sender(client, chat_body("bus"))}, settings.bus_levels, settings, memory
        )
    finally:
        await client.close()


async def _levels(
    scenario: str,
    contenders: dict[str, Send],
    levels: Sequence[int],
    settings: Settings,
    memory: MemorySampler | None,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    seconds = settings.level_seconds / settings.rounds
    for level in levels:
        warmup_errors = {name: await warm_up(send, level, max(2 * level, 20)) for name, send in contenders.items()}
        sampling: AbstractAsyncContextManager[None] = nullcontext()
        if memory is not None and level >= settings.memory_threshold_level:
            sampling = memory.sampling(f"{scenario}: concurrency {settings.memory_threshold_level} and up")

        def one_round(send: Send, _round: int, level: int = level) -> Awaitable[LoadResult]:
            return closed_loop(send, level, duration_s=seconds)

        async with sampling:
            totals = await interleaved(contenders, settings.rounds, one_round)
        out[str(level)] = {name: summarize(totals[name], warmup_errors=warmup_errors[name]) for name in contenders}
        rates = ", ".join(f"{name} {out[str(level)][name]['requests_per_s']:,.0f}" for name in contenders)
        progress(f"{scenario}: concurrency {level}: {rates} req/s")
    return out
