"""The worker's memory of its calls, asked over a real nats-server the way a router asks."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

import services.providers.outcomes as outcomes_module
from services.providers.delivery import Delivery
from services.providers.outcomes import Outcomes
from shared import headers as H
from shared.bus import ReplyGuard
from shared.errors import WorkerLost
from shared.natsserver import EmbeddedNats
from shared.replies import ASK_S
from shared.subjects import provider_outcome_subject
from tests.conftest import run

SUBJECT = provider_outcome_subject("mock")


def delivery(nc: Client, reply: str) -> Delivery:
    return Delivery.open(nc, reply, "_INBOX.client.1", {}, {}, keepalive=False)


async def ask(nc: Client, reply: str) -> Msg | None:
    try:
        return await nc.request(SUBJECT, reply.encode(), timeout=ASK_S)
    except nats.errors.TimeoutError:
        return None


async def worker(url: str) -> tuple[Client, Outcomes]:
    nc = await nats.connect(url)
    kept = Outcomes(nc, ["mock"], ReplyGuard("providers", ("_INBOX_router",), secure=False))
    await kept.start()
    return nc, kept


def test_a_call_in_flight_is_answered_with_a_heartbeat_carrying_what_was_delivered_and_committed(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> dict[str, str]:
        nc, kept = await worker(nats_server.url)
        d = delivery(nc, "_INBOX.router.a1")
        kept.begin(d)
        d.signal.delivered = 3
        await d.to_router(b"", {H.COMMITTED: "3"})
        answer = await ask(nc, "_INBOX.router.a1")
        await nc.close()
        assert answer is not None
        return dict(answer.headers or {})

    assert run(scenario()) == {H.HEARTBEAT: "3", H.COMMITTED: "3"}


def test_an_ended_call_is_answered_with_the_very_outcome_the_router_was_sent(nats_server: EmbeddedNats) -> None:
    async def scenario() -> tuple[bytes, dict[str, str]]:
        nc, kept = await worker(nats_server.url)
        d = delivery(nc, "_INBOX.router.b1")
        kept.begin(d)
        await d.to_router(b'{"id":"x"}', {H.STATUS: "200", H.DELIVERED: "1", H.USAGE: "3 4"})
        kept.end(d)
        answer = await ask(nc, "_INBOX.router.b1")
        await nc.close()
        assert answer is not None
        return answer.data, dict(answer.headers or {})

    data, headers = run(scenario())
    assert data == b'{"id":"x"}'
    assert headers == {H.STATUS: "200", H.DELIVERED: "1", H.USAGE: "3 4"}


def test_a_call_this_worker_never_had_gets_no_answer_so_the_worker_that_has_it_can(
    nats_server: EmbeddedNats,
) -> None:
    async def scenario() -> tuple[object, int]:
        nc, kept = await worker(nats_server.url)
        answer = await ask(nc, "_INBOX.router.unknown")
        await nc.close()
        return answer, kept.answered

    assert run(scenario()) == (None, 0)


def test_a_question_whose_reply_subject_is_no_router_inbox_is_not_answered(nats_server: EmbeddedNats) -> None:
    async def scenario() -> list[bytes]:
        nc, kept = await worker(nats_server.url)
        d = delivery(nc, "_INBOX.router.c1")
        kept.begin(d)
        await d.failed(WorkerLost("gone"))
        kept.end(d)
        spy = await nats.connect(nats_server.url)
        got: list[bytes] = []

        async def seen(msg: Msg) -> None:
            got.append(msg.data)

        await spy.subscribe("$JS.API.STREAM.DELETE.CONFIG", cb=seen)
        await spy.flush()
        await nc.publish(SUBJECT, b"_INBOX.router.c1", reply="$JS.API.STREAM.DELETE.CONFIG")
        await asyncio.sleep(0.3)
        await spy.close()
        await nc.close()
        return got

    assert run(scenario()) == []


def test_ended_calls_are_forgotten_after_two_keep_windows_and_never_while_in_flight(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outcomes_module, "KEEP_S", 0.1)

    async def ended(nc: Client, kept: Outcomes, reply: str) -> Delivery:
        d = delivery(nc, reply)
        kept.begin(d)
        await d.to_router(b"", {H.STATUS: "200", H.DELIVERED: "1"})
        kept.end(d)
        return d

    async def scenario() -> tuple[bool, bool, bool]:
        nc, kept = await worker(nats_server.url)
        long_call = delivery(nc, "_INBOX.router.long")
        kept.begin(long_call)
        await ended(nc, kept, "_INBOX.router.ended")
        kept_at_first = kept.find("_INBOX.router.ended") is not None
        for i in range(3):  # three rotations
            await asyncio.sleep(0.12)
            await ended(nc, kept, f"_INBOX.router.other{i}")
        result = (kept_at_first, kept.find("_INBOX.router.ended") is None, kept.find("_INBOX.router.long") is long_call)
        await nc.close()
        return result

    kept_at_first, forgotten, still_in_flight = run(scenario())
    assert kept_at_first
    assert forgotten
    assert still_in_flight


def test_a_worker_holds_at_most_two_generations_of_outcomes_however_fast_calls_end(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outcomes_module, "MAX_KEPT", 10)

    async def scenario() -> tuple[int, bool, bool]:
        nc, kept = await worker(nats_server.url)
        for i in range(1000):
            d = delivery(nc, f"_INBOX.router.burst{i}")
            kept.begin(d)
            await d.to_router(b"", {H.STATUS: "200", H.DELIVERED: "1"})
            kept.end(d)
        result = (kept.kept, kept.find("_INBOX.router.burst999") is not None, kept.find("_INBOX.router.burst0") is None)
        await nc.close()
        return result

    held, newest_kept, oldest_gone = run(scenario())
    assert held <= 20
    assert newest_kept and oldest_gone
