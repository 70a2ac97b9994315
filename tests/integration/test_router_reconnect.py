"""A router that loses its own NATS connection while its workers answer: still one answer each.

Only the router is taken off the bus (its connection runs through a
:class:`~tests.integration.tcpcut.CutProxy`), while the provider worker and the
client stay on. The worker delivers its answers straight to the client while
the router is away, so the router never gets the outcomes: they were sent to a
subscription that did not exist for that moment. When it is back, it hears
nothing about those attempts. Taking that silence for a lost worker and trying
again (as it did before it asked the workers) answered each such request twice:
a 200 from the worker, then a second 200 from the retry, or, for a stream, a
``worker_lost`` terminator after the worker's own. In a 3-node cluster this
happened whenever the node a router was on was killed (CI, test_cluster_state).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import headers as H
from shared.natsserver import EmbeddedNats
from tests.conftest import run
from tests.integration.procs import Services
from tests.integration.tcpcut import CutProxy, cut_proxy
from tests.integration.wire import Seen, Wire, duplicates

CONFIG = Path(__file__).with_name("configs") / "reconnect.yaml"
WORDS = " ".join(f"w{i}" for i in range(8))  # ttft 100 ms, then a chunk every 50 ms: ends about 0.55 s in
DEADLINE = {H.TIMEOUT_MS: "15000", H.KEEPALIVE: "1"}


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Services, CutProxy]]:
    s = Services(nats_server.url, tmp_path_factory.mktemp("reconnect"), CONFIG)
    try:
        with cut_proxy(nats_server.port) as proxy:
            s.start("secrets", "secrets")
            s.start("config", "config")
            s.start("router-1", "router", nats_url=proxy.url)
            s.start("providers-1", "providers")
            yield s, proxy
    finally:
        s.stop()


def test_answers_delivered_while_the_router_was_off_the_bus_are_not_answered_again(
    stack: tuple[Services, CutProxy], nats_server: EmbeddedNats
) -> None:
    _, proxy = stack

    async def scenario() -> tuple[list[Seen], float]:
        wire = await Wire.open(nats_server.url)
        try:
            warm_up = await wire.send({"model": "quick", "messages": [{"role": "user", "content": "w"}]})
            await wire.wait_final(warm_up, 10)
            origin = time.monotonic()
            completions = [
                await wire.send({"model": "half-second", "messages": [{"role": "user", "content": "x"}]}, DEADLINE)
                for _ in range(4)
            ]
            streams = [
                await wire.send(
                    {"model": "short-stream", "stream": True, "messages": [{"role": "user", "content": WORDS}]},
                    DEADLINE,
                )
                for _ in range(2)
            ]
            await asyncio.sleep(0.2)  # dispatched, upstream calls under way
            await asyncio.to_thread(proxy.cut)
            await asyncio.sleep(0.8)  # the worker answers at 0.5 s: the router is away
            await asyncio.to_thread(proxy.heal)
            sent = completions + streams
            for seen in sent:
                await wire.wait_final(seen, 10)
            await asyncio.sleep(3.0)  # a retry after 1 s of silence would have answered by now
            return sent, origin
        finally:
            await wire.close()

    sent, origin = run(scenario())
    assert proxy.accepted > 1, "the router never reconnected through the proxy"
    assert not duplicates(sent, origin), duplicates(sent, origin)
    assert [s.status() for s in sent] == ["200"] * len(sent), [s.status() for s in sent]
    whole = [(len(s.chunks()), (s.finals()[0][1].headers or {}).get(H.SEQ)) for s in sent if s.stream]
    assert all(n > 1 and str(n) == end for n, end in whole), whole  # every chunk, then the end at the next seq
