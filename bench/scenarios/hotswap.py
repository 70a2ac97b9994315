"""Scenario e: configuration changes under load, as ``scripts/propagation.py`` measures them.

A stack with several routers serves alias ``hot`` (a mock endpoint) while
a closed loop keeps requests in flight against it. The alias is then applied
again and again, alternating between two mock endpoints, one change at a
time. Each change is timed from sending the apply to the config service
until the last router has announced the new revision on
``modelbus.v1.router.revisions`` (routers announce right after swapping
their table). The subscription exists before the first apply, so no
announcement can be missed. Every failed request during the changes is
counted and reported.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench import servers
from bench.contenders import bus_sender, chat_body
from bench.load import closed_loop, distribution, summarize
from bench.settings import Settings
from shared import headers as H
from shared.admin import ApplyRequest, ApplyResult, RouterStatus
from shared.client import ModelbusClient
from shared.subjects import CONFIG_APPLY, ROUTER_REVISIONS

PROPAGATION_TIMEOUT_S = 10.0


class RevisionWatch:
    """Which routers announced which revision, and when the last of them did."""

    def __init__(self, routers: int) -> None:
        self.routers = routers
        self.reached: dict[int, set[str]] = {}
        self.complete_at: dict[int, float] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._decoder = msgspec.json.Decoder(RouterStatus)

    def event(self, revision: int) -> asyncio.Event:
        """Set once every router serves ``revision``."""
        return self._events.setdefault(revision, asyncio.Event())

    async def on_announcement(self, msg: Msg) -> None:
        """Subscription callback for :data:`ROUTER_REVISIONS`."""
        status = self._decoder.decode(msg.data)
        routers = self.reached.setdefault(status.revision, set())
        routers.add(status.router_id)
        if len(routers) >= self.routers and status.revision not in self.complete_at:
            self.complete_at[status.revision] = time.perf_counter()
            self.event(status.revision).set()


def run_hot_swap(lab: servers.Lab, settings: Settings) -> dict[str, Any]:
    """Scenario e."""
    stack = lab.swap_stack()
    try:
        section = uvloop.run(_measure(stack.url, stack.routers, settings))
    finally:
        lab.release(servers.SWAP_STACK)
    return {"modelbus_stack": stack.describe(), **section}


async def _apply(nc: Client, endpoint: str) -> int:
    """Point alias ``hot`` at ``endpoint``; return the new revision."""
    request = ApplyRequest(documents=servers.swap_alias(endpoint), actor="bench")
    reply = await nc.request(CONFIG_APPLY, msgspec.json.encode(request), timeout=PROPAGATION_TIMEOUT_S)
    status = (reply.headers or {}).get(H.STATUS, "200")
    if status != "200":
        raise RuntimeError(f"the config service refused the apply ({status}): {reply.data[:300]!r}")
    result = msgspec.json.decode(reply.data, type=ApplyResult)
    if not result.changes:
        raise RuntimeError(f"applying {endpoint} changed nothing: the alternation is broken")
    return result.revision


async def _measure(url: str, routers: int, settings: Settings) -> dict[str, Any]:
    admin = await nats.connect(url)
    client = await ModelbusClient.connect(url)
    watch = RevisionWatch(routers)
    try:
        await admin.subscribe(ROUTER_REVISIONS, cb=watch.on_announcement)
        await admin.flush()
        # A first change that every router must take before the clock runs: they are all up.
        first = await _apply(admin, servers.SWAP_ENDPOINTS[1])
        await asyncio.wait_for(watch.event(first).wait(), PROPAGATION_TIMEOUT_S)

        stop = asyncio.Event()
        body = chat_body(servers.SWAP_ALIAS)
        traffic = asyncio.create_task(closed_loop(bus_sender(client, body), settings.swap_concurrency, stop=stop))
        samples: list[float] = []
        missed: list[str] = []
        try:
            for change in range(settings.swap_changes):
                started = time.perf_counter()
                revision = await _apply(admin, servers.SWAP_ENDPOINTS[change % 2])
                try:
                    await asyncio.wait_for(watch.event(revision).wait(), PROPAGATION_TIMEOUT_S)
                except TimeoutError:
                    seen = sorted(watch.reached.get(revision, set()))
                    missed.append(
                        f"revision {revision}: only {len(seen)}/{routers} routers after {PROPAGATION_TIMEOUT_S}s"
                    )
                    continue
                samples.append((watch.complete_at[revision] - started) * 1000.0)
        finally:
            stop.set()
            load = await traffic
    finally:
        await client.close()
        await admin.drain()
    return {
        "status": "ok",
        "routers": routers,
        "changes": settings.swap_changes,
        "concurrency": settings.swap_concurrency,
        "propagation_ms": distribution(samples),
        "propagated": len(samples),
        "missed": len(missed),
        "missed_samples": missed[:5],
        "load": summarize(load),
        "requests": len(load.latencies_ms) + load.errors,
        "failed": load.errors,
    }
