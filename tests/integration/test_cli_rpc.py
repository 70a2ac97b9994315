"""services.cli.rpc against a real nats-server: a request nobody received is sent again, for a while."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from services.cli import rpc
from shared import headers as H
from shared.errors import DeadlineExceeded, ModelbusError
from shared.natsserver import EmbeddedNats
from tests.conftest import run


async def _answer_after(url: str, subject: str, delay_s: float, ready: asyncio.Event) -> None:
    await asyncio.sleep(delay_s)
    nc = await nats.connect(url)

    async def handler(msg: Msg) -> None:
        await nc.publish(msg.reply, msgspec.json.encode({"ok": True}), headers={H.STATUS: "200"})

    await nc.subscribe(subject, cb=handler)
    await nc.flush()
    ready.set()
    await asyncio.sleep(3)
    await nc.close()


def test_an_admin_request_sent_while_the_service_reconnects_is_answered_once_it_is_back(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> tuple[dict[str, bool], float]:
        nc = await nats.connect(nats_server.url)
        ready = asyncio.Event()
        late = asyncio.create_task(_answer_after(nats_server.url, "test.rpc.late", 1.0, ready))
        started = time.monotonic()
        try:
            reply = await rpc.call(nc, "test.rpc.late", None, dict, timeout=10)
            return reply, time.monotonic() - started
        finally:
            late.cancel()
            await nc.close()

    reply, took = run(scenario())
    assert reply == {"ok": True}
    assert 0.9 < took < 3.0


def test_an_admin_request_nobody_ever_listens_to_fails_with_a_clear_error_after_a_few_seconds(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> float:
        nc = await nats.connect(nats_server.url)
        started = time.monotonic()
        try:
            with pytest.raises(ModelbusError, match=r"no service answers on test\.rpc\.nobody"):
                await rpc.call(nc, "test.rpc.nobody", None, dict, timeout=30)
            return time.monotonic() - started
        finally:
            await nc.close()

    took = run(scenario())
    assert rpc.NO_RESPONDERS_FOR_S - 1 < took < rpc.NO_RESPONDERS_FOR_S + 2


def test_an_admin_request_whose_service_never_answers_is_not_sent_twice(nats_server: EmbeddedNats) -> None:
    async def scenario() -> int:
        nc = await nats.connect(nats_server.url)
        seen = 0

        async def silent(msg: Msg) -> None:
            nonlocal seen
            seen += 1

        await nc.subscribe("test.rpc.silent", cb=silent)
        try:
            with pytest.raises(DeadlineExceeded):
                await rpc.call(nc, "test.rpc.silent", None, dict, timeout=0.5)
            return seen
        finally:
            await nc.close()

    assert run(scenario()) == 1  # the service may have acted on it: no second try
