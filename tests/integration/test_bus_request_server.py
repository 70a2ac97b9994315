"""shared.bus.RequestServer on a real nats-server: its handler limit holds, and nothing is dropped.

The limit is what keeps a flood of requests from spawning unbounded tasks in a
router or a worker; beyond it messages wait in the client, and each is served
once a handler finishes.
"""

from __future__ import annotations

import asyncio

import nats
from nats.aio.msg import Msg

from shared.bus import RequestServer
from shared.natsserver import EmbeddedNats
from tests.conftest import run

SUBJECT = "test.request-server"


def test_no_more_than_max_inflight_handlers_run_at_once_and_every_message_is_served_after(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> tuple[int, list[int], int]:
        nc = await nats.connect(nats_server.url)
        gate = asyncio.Event()
        running = 0
        peak = 0
        served: list[int] = []

        async def handler(msg: Msg) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            served.append(int(msg.data))
            running -= 1

        server = RequestServer(nc, SUBJECT, handler, max_inflight=3)
        await server.start()
        try:
            for i in range(10):
                await nc.publish(SUBJECT, str(i).encode())
            await nc.flush()
            for _ in range(100):  # until the three slots are taken
                if running == 3:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # time enough for a fourth handler to start, were the limit broken
            held = server.in_flight
            gate.set()
            for _ in range(200):
                if len(served) == 10:
                    break
                await asyncio.sleep(0.01)
            return peak, sorted(served), held
        finally:
            await server.stop()
            await nc.close()

    peak, served, held = run(scenario())
    assert peak == 3
    assert held == 3
    assert served == list(range(10))


def test_a_handler_that_raises_frees_its_slot_for_the_next_message(nats_server: EmbeddedNats) -> None:
    async def scenario() -> list[int]:
        nc = await nats.connect(nats_server.url)
        served: list[int] = []

        async def handler(msg: Msg) -> None:
            served.append(int(msg.data))
            raise RuntimeError("bad input")

        server = RequestServer(nc, SUBJECT, handler, max_inflight=1)
        await server.start()
        try:
            for i in range(5):
                await nc.publish(SUBJECT, str(i).encode())
            await nc.flush()
            for _ in range(200):
                if len(served) == 5:
                    break
                await asyncio.sleep(0.01)
            return served
        finally:
            await server.stop()
            await nc.close()

    assert run(scenario()) == [0, 1, 2, 3, 4]
