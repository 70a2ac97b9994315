"""ReplyMux and Beats against a real nats-server: many-message replies, silence, signs of life."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import nats
import pytest
from nats.aio.msg import Msg

from shared import headers as H
from shared.mux import Beats, ReplyMux, Signal, Silence
from shared.natsserver import EmbeddedNats
from tests.conftest import private_nats, run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    yield from private_nats(tmp_path_factory, "mux")


def test_a_waiter_gets_its_messages_in_order_and_heartbeats_only_restart_its_clock(server: EmbeddedNats) -> None:
    async def scenario() -> tuple[list[bytes], int]:
        nc = await nats.connect(server.url)
        mux = ReplyMux(nc)
        await mux.start()
        try:
            waiter = mux.open(silence_s=2.0)
            other = mux.open()
            await nc.publish(waiter.subject, b"one")
            await nc.publish(waiter.subject, b"", headers={H.HEARTBEAT: "7"})
            await nc.publish(other.subject, b"not mine")
            await nc.publish(waiter.subject, b"two")
            loop = asyncio.get_running_loop()
            got = [(await waiter.next(loop.time() + 2)).data for _ in range(2)]
            return got, waiter.delivered
        finally:
            await mux.stop()
            await nc.close()

    got, delivered = run(scenario())
    assert got == [b"one", b"two"]
    assert delivered == 7


def test_a_waiter_that_hears_nothing_for_its_silence_is_woken_with_silence_not_at_its_deadline(
    server: EmbeddedNats,
) -> None:
    async def scenario() -> float:
        nc = await nats.connect(server.url)
        mux = ReplyMux(nc)
        await mux.start()
        try:
            waiter = mux.open(silence_s=0.5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Silence):
                await waiter.next(started + 30)
            return loop.time() - started
        finally:
            await mux.stop()
            await nc.close()

    assert run(scenario()) < 5  # half a second of silence plus a tick, nowhere near the 30 s deadline


def test_a_waiter_kept_alive_by_heartbeats_reaches_its_deadline_instead(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await nats.connect(server.url)
        mux = ReplyMux(nc)
        beats = Beats(nc)
        await mux.start()
        try:
            waiter = mux.open(silence_s=0.6)
            loop = asyncio.get_running_loop()
            beats.held.add(Signal(waiter.subject, None, False, loop.time()))
            beats.start()
            with pytest.raises(TimeoutError):
                await waiter.next(loop.time() + 2.0)  # 2 s > 0.6 s of allowed silence
        finally:
            await beats.stop()
            await mux.stop()
            await nc.close()

    run(scenario())


def test_beats_send_keepalives_to_the_client_only_when_it_accepts_them(server: EmbeddedNats) -> None:
    async def scenario() -> tuple[int, int]:
        nc = await nats.connect(server.url)
        counts = {"yes": 0, "no": 0}
        two = asyncio.Event()

        async def on(msg: Msg) -> None:
            if (msg.headers or {}).get(H.KEEPALIVE) == "1":
                counts[msg.subject.rsplit(".", 1)[-1]] += 1
                if counts["yes"] >= 2:
                    two.set()

        await nc.subscribe("client.*", cb=on)
        beats = Beats(nc)
        loop = asyncio.get_running_loop()
        beats.held.add(Signal(None, "client.yes", True, loop.time()))
        beats.held.add(Signal(None, "client.no", False, loop.time()))
        beats.start()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(two.wait(), 5)
        finally:
            await beats.stop()
            await nc.close()
        return counts["yes"], counts["no"]

    yes, no = run(scenario())
    assert yes >= 2 and no == 0
