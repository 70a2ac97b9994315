"""Scenario f: resident memory of every process of the untraced modelbus stack.

VmRSS of the supervisor, config, secrets, router and provider processes and
of the nats-server, read from ``/proc``: once idle, right after the stack
started and before any load, and then every 100 ms while scenarios b and c
run at their high concurrency levels (or, when neither runs, during a short
load of its own), keeping each process's maximum.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvloop

from bench import procs, servers
from bench.contenders import bus_sender, chat_body
from bench.load import closed_loop
from bench.settings import Settings
from shared.client import ModelbusClient

SAMPLE_INTERVAL_S = 0.1
NOT_MODELBUS = ("nats-server",)


class MemorySampler:
    """RSS of a fixed set of processes: idle once, then the peak under load."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = dict(processes)
        self.idle_mb: dict[str, float | None] = {}
        self.peak_mb: dict[str, float] = {}
        self.load_samples = 0
        self.load_sources: list[str] = []

    def sample_idle(self) -> None:
        """Record every process's RSS now (call before any load)."""
        self.idle_mb = {label: procs.rss_mb(pid) for label, pid in self.processes.items()}

    def sample_load(self) -> None:
        """Record one under-load sample, keeping each process's maximum."""
        self.load_samples += 1
        for label, pid in self.processes.items():
            rss = procs.rss_mb(pid)
            if rss is not None and rss > self.peak_mb.get(label, 0.0):
                self.peak_mb[label] = rss

    @asynccontextmanager
    async def sampling(self, source: str) -> AsyncIterator[None]:
        """Sample every :data:`SAMPLE_INTERVAL_S` while the block runs; ``source`` names the load."""

        async def loop() -> None:
            while True:
                self.sample_load()
                await asyncio.sleep(SAMPLE_INTERVAL_S)

        if source not in self.load_sources:
            self.load_sources.append(source)
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.sample_load()

    def section(self, stack: str) -> dict[str, Any]:
        """Scenario f's JSON section."""
        table = {
            label: {"pid": pid, "idle_mb": self.idle_mb.get(label), "load_mb": self.peak_mb.get(label)}
            for label, pid in self.processes.items()
        }
        modelbus = {label: row for label, row in table.items() if label not in NOT_MODELBUS}
        measured = {label: row["load_mb"] for label, row in modelbus.items() if row["load_mb"] is not None}
        largest = max(measured, key=lambda label: measured[label]) if measured else None
        return {
            "status": "ok" if self.load_samples else "error",
            **({} if self.load_samples else {"error": "no sample was taken under load"}),
            "stack": stack,
            "processes": table,
            "load_samples": self.load_samples,
            "load_sources": list(self.load_sources),
            "largest_modelbus_process": (
                {"process": largest, "load_mb": measured[largest]} if largest is not None else None
            ),
        }


def run_own_load(lab: servers.Lab, settings: Settings, sampler: MemorySampler) -> None:
    """Load the stack while sampling, for when neither b nor c did: mock and llm-katan at once."""
    stack = lab.plain_stack()
    uvloop.run(_own_load(stack.url, settings, sampler))


async def _own_load(url: str, settings: Settings, sampler: MemorySampler) -> None:
    client = await ModelbusClient.connect(url)
    try:
        async with sampler.sampling("f: its own load (mock and llm-katan)"):
            await asyncio.gather(
                closed_loop(bus_sender(client, chat_body("bus")), max(settings.bus_levels), duration_s=3.0),
                closed_loop(bus_sender(client, chat_body("echo")), 32, duration_s=3.0),
            )
    finally:
        await client.close()
