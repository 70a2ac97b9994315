"""Exactly one final answer per request id while nats-server is killed and restarted under load.

Counted at the wire (tests/integration/wire.py): every message that comes back
for a request id, for a while after its final answer too. Before the reply
protocol of shared/replies.py, each such run had 7-12 request ids answered
twice: a 200 from the provider worker, then about 1 s later a 408 from the
router, which had lost the worker's notice in the restart.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import headers as H
from shared.natsserver import EmbeddedNats
from tests.conftest import private_nats, run
from tests.integration.procs import Services, services
from tests.integration.wire import Seen, Wire, verdict

CONFIG = Path(__file__).with_name("configs") / "exactly_once.yaml"
CONCURRENCY = 16
LOAD_S = 7.0
FAULT_AT_S = 2.0
DEADLINE_MS = 8000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    yield from private_nats(tmp_path_factory, "once")


@pytest.fixture(scope="module")
def stack(server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with services(server.url, tmp_path_factory.mktemp("once"), CONFIG, routers=2, providers=2) as s:
        yield s


def body(rng: random.Random) -> dict[str, object]:
    if rng.random() < 0.3:
        words = " ".join(f"w{i}" for i in range(8))
        return {"model": "stream", "stream": True, "messages": [{"role": "user", "content": words}]}
    return {"model": "steady", "messages": [{"role": "user", "content": "hello"}]}


async def load(url: str, fault: object) -> tuple[list[Seen], float]:
    """Bounded load for LOAD_S seconds; ``fault()`` runs (in a thread) FAULT_AT_S seconds in."""
    wire = await Wire.open(url)
    rng = random.Random(12)
    slots = asyncio.Semaphore(CONCURRENCY)
    sent: list[Seen] = []
    started = time.monotonic()

    async def one() -> None:
        try:
            seen = await wire.send(body(rng), {H.TIMEOUT_MS: str(DEADLINE_MS), H.KEEPALIVE: "1"})
            sent.append(seen)
            await wire.wait_final(seen, DEADLINE_MS / 1000 + 3)
        finally:
            slots.release()

    async def inject() -> float:
        await asyncio.sleep(FAULT_AT_S)
        at = time.monotonic()
        await asyncio.to_thread(fault)  # type: ignore[arg-type]
        return at

    fault_task = asyncio.create_task(inject())
    tasks = []
    while time.monotonic() - started < LOAD_S:
        await slots.acquire()
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    fault_at = await fault_task
    await asyncio.sleep(1.5)  # a late second answer would arrive now
    await wire.close()
    return sent, fault_at


@pytest.mark.slow
def test_a_nats_server_killed_and_restarted_under_load_answers_no_request_twice_and_leaves_none_unanswered(
    server: EmbeddedNats, stack: Services
) -> None:
    def fault() -> None:
        server.kill()
        server.restart()

    sent, _ = run(load(server.url, fault))
    counts = verdict(sent, DEADLINE_MS / 1000)
    errors = Counter(f"{s.status()} {s.error_code()}" for s in sent if s.status() not in (None, "200"))
    assert counts["sent"] > 50, counts
    assert counts["duplicated"] == 0, counts
    assert counts["never"] == 0, counts
    assert counts["ok"] >= counts["sent"] * 0.8, (counts, errors)  # the restart costs a few, not the run
    # the services survived it without a restart of their own
    assert all(p.poll() is None for p in stack.procs.values()), {n: p.poll() for n, p in stack.procs.items()}
