"""The write-coalescing flush policy on a real nats-server: fewer writes while busy, none delayed alone."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from shared import flush
from shared.natsserver import EmbeddedNats
from tests.conftest import run


class CountedWrites:
    """Wraps the connection's transport to count the socket writes of published messages."""

    def __init__(self, nc: Client) -> None:
        self.calls = 0
        transport: Any = nc._transport
        original = transport.writelines

        def writelines(lines: list[bytes]) -> None:
            self.calls += 1
            original(lines)

        transport.writelines = writelines


async def publish_from_staggered_tasks(nc: Client, subject: str, n: int) -> None:
    """``n`` tasks each publishing one message one loop iteration after the previous one."""

    async def one(i: int) -> None:
        for _ in range(i):
            await asyncio.sleep(0)
        await nc.publish(subject, str(i).encode())

    await asyncio.gather(*(one(i) for i in range(n)))


async def received_and_writes(url: str, *, busy: bool, install: bool = True) -> tuple[list[bytes], int, bool]:
    nc = await nats.connect(url)
    listener = await nats.connect(url)
    got: list[bytes] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        got.append(msg.data)
        if len(got) == 12:
            done.set()

    await listener.subscribe("flush.test", cb=on_msg)
    await listener.flush()
    installed = flush.coalesce_writes(nc, lambda: busy) if install else False
    writes = CountedWrites(nc)
    await publish_from_staggered_tasks(nc, "flush.test", 12)
    await nc.flush()
    await asyncio.wait_for(done.wait(), 5)
    await nc.close()
    await listener.close()
    return got, writes.calls, installed


def test_the_policy_installs_on_this_nats_py(nats_server: EmbeddedNats) -> None:
    async def scenario() -> bool:
        nc = await nats.connect(nats_server.url)
        try:
            return flush.coalesce_writes(nc, lambda: True)
        finally:
            await nc.close()

    assert run(scenario()) is True


def test_while_busy_messages_of_many_requests_share_writes_and_none_is_lost(nats_server: EmbeddedNats) -> None:
    got, coalesced, installed = run(received_and_writes(nats_server.url, busy=True))
    _, plain, _ = run(received_and_writes(nats_server.url, busy=True, install=False))
    assert installed
    assert sorted(got, key=int) == [str(i).encode() for i in range(12)]
    assert coalesced < plain  # nats-py alone writes once per iteration that published


def test_a_lone_request_is_written_at_once(nats_server: EmbeddedNats) -> None:
    async def scenario() -> int:
        nc = await nats.connect(nats_server.url)
        flush.coalesce_writes(nc, lambda: False)
        writes = CountedWrites(nc)
        await nc.publish("flush.alone", b"x")
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the flusher's turn: one iteration, no waiting for others
        calls = writes.calls
        await nc.close()
        return calls

    assert run(scenario()) == 1


def test_request_reply_and_flush_work_through_the_policy(nats_server: EmbeddedNats) -> None:
    async def scenario() -> bytes:
        nc = await nats.connect(nats_server.url)
        flush.coalesce_writes(nc, lambda: True)

        async def echo(msg: Any) -> None:
            await nc.publish(msg.reply, msg.data.upper())

        await nc.subscribe("flush.echo", cb=echo)
        await nc.flush()
        reply = await nc.request("flush.echo", b"ping", timeout=2)
        await nc.close()
        return bytes(reply.data)

    assert run(scenario()) == b"PING"


def test_the_environment_can_turn_the_policy_off(nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(flush.ENV, "off")

    async def scenario() -> bool:
        nc = await nats.connect(nats_server.url)
        try:
            return flush.coalesce_writes(nc, lambda: True)
        finally:
            await nc.close()

    assert run(scenario()) is False
