"""The reply protocol over real processes: kill -9 of workers and routers with requests in flight,
keepalives, and the errors of requests refused before they start.

What the reply protocol promises (shared/replies.py, docs/architecture.md):
a lost worker is noticed in about a second and the request goes on elsewhere;
a stream whose worker dies ends with a ``worker_lost`` terminator; a router
that dies after dispatching loses nothing, because the worker answers the
client directly; and every request id gets exactly one final answer.
Before this protocol a killed worker's requests waited for their deadline and
a killed router's streams never ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import headers as H
from shared.client import ModelbusClient
from shared.errors import InvalidRequest, RequestLost
from shared.natsserver import EmbeddedNats
from tests.conftest import run
from tests.integration.procs import Services, services
from tests.integration.wire import Seen, Wire

CONFIG = Path(__file__).with_name("configs") / "faults.yaml"
WORDS = " ".join(f"word{i}" for i in range(30))  # 30 chunks at 150 ms: a 4.5 s stream
SLOW = {"model": "slow", "messages": [{"role": "user", "content": "hello"}]}
LONG_STREAM = {"model": "long-stream", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
DEADLINE = {H.TIMEOUT_MS: "20000", H.KEEPALIVE: "1"}


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with services(nats_server.url, tmp_path_factory.mktemp("faults"), CONFIG, routers=2, providers=2) as s:
        yield s


def restart(stack: Services, *names: str) -> None:
    for name in names:
        if stack.procs[name].poll() is not None:
            stack.start(name, name.split("-")[0])


def exactly_one_final(seen: list[Seen]) -> None:
    counts = {s.request_id: len(s.finals()) for s in seen}
    assert all(n == 1 for n in counts.values()), counts


def test_requests_on_a_killed_provider_worker_go_to_the_other_worker_within_seconds_not_at_the_deadline(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> tuple[list[Seen], float]:
        wire = await Wire.open(nats_server.url)
        try:
            sent = [await wire.send(SLOW, DEADLINE) for _ in range(8)]
            await asyncio.sleep(0.5)  # dispatched; each worker holds some (checked below by the attempt count)
            stack.kill("providers-1")
            killed_at = time.monotonic()
            for seen in sent:
                await wire.wait_final(seen, 15)
            await asyncio.sleep(0.5)  # a second answer would come now
            return sent, killed_at
        finally:
            await wire.close()

    try:
        sent, killed_at = run(scenario())
    finally:
        restart(stack, "providers-1")
    exactly_one_final(sent)
    assert all(s.status() == "200" for s in sent), [(s.status(), s.error_code()) for s in sent]
    retried = [s for s in sent if (s.finals()[0][1].headers or {}).get(H.ATTEMPTS) == "2"]
    assert retried, "no request was on the killed worker: the fault did not hit anything"
    # lost after ~1 s of silence, then a fresh 2 s call: far from the 20 s deadline
    assert max(s.finals()[0][0] for s in retried) - killed_at < 5.0


def test_a_stream_whose_provider_worker_dies_after_content_ends_with_a_worker_lost_terminator(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> tuple[list[Seen], float]:
        wire = await Wire.open(nats_server.url)
        try:
            sent = [await wire.send(LONG_STREAM, {H.TIMEOUT_MS: "30000"}) for _ in range(4)]
            for seen in sent:
                await wire.wait_chunks(seen, 3, 10)
            stack.kill("providers-1")
            stack.kill("providers-2")
            killed_at = time.monotonic()
            for seen in sent:
                await wire.wait_final(seen, 10)
            await asyncio.sleep(0.5)
            return sent, killed_at
        finally:
            await wire.close()

    try:
        sent, killed_at = run(scenario())
    finally:
        restart(stack, "providers-1", "providers-2")
    exactly_one_final(sent)
    assert [(s.status(), s.error_code()) for s in sent] == [("502", "worker_lost")] * 4
    assert all(len(s.chunks()) >= 3 for s in sent)
    assert max(s.finals()[0][0] for s in sent) - killed_at < 3.0


def test_streams_whose_routers_die_midway_still_finish_cleanly_from_the_provider_worker(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> list[Seen]:
        wire = await Wire.open(nats_server.url)
        try:
            sent = [await wire.send(LONG_STREAM, {H.TIMEOUT_MS: "30000"}) for _ in range(4)]
            for seen in sent:
                await wire.wait_chunks(seen, 3, 10)
            stack.kill("router-1")
            stack.kill("router-2")
            for seen in sent:
                await wire.wait_final(seen, 15)
            return sent
        finally:
            await wire.close()

    try:
        sent = run(scenario())
    finally:
        restart(stack, "router-1", "router-2")
    exactly_one_final(sent)
    assert [s.status() for s in sent] == ["200"] * 4
    for s in sent:
        seqs = [int((m.headers or {})[H.SEQ]) for _, m in s.messages if H.SEQ in (m.headers or {})]
        assert seqs == list(range(len(seqs))), seqs  # every chunk, in order, then the terminator


def test_completions_whose_routers_die_after_dispatch_are_still_answered_by_the_worker(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> list[Seen]:
        wire = await Wire.open(nats_server.url)
        try:
            sent = [await wire.send(SLOW, DEADLINE) for _ in range(6)]
            await asyncio.sleep(0.5)  # dispatched: the 2 s upstream call is under way
            stack.kill("router-1")
            stack.kill("router-2")
            for seen in sent:
                await wire.wait_final(seen, 10)
            await asyncio.sleep(0.3)
            return sent
        finally:
            await wire.close()

    try:
        sent = run(scenario())
    finally:
        restart(stack, "router-1", "router-2")
    exactly_one_final(sent)
    assert [s.status() for s in sent] == ["200"] * 6


def test_requests_while_no_worker_is_subscribed_get_no_provider_worker_and_never_open_the_breaker(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    """As while the workers reconnect after a NATS restart: no responders say nothing about the endpoint."""
    quick = {"model": "default", "messages": [{"role": "user", "content": "hello"}]}

    async def scenario() -> tuple[list[Seen], Seen]:
        wire = await Wire.open(nats_server.url)
        try:
            refused = []
            for _ in range(8):  # 8 requests of 3 attempts each: far past the breaker's 5 failures
                seen = await wire.send(quick, DEADLINE)
                await wire.wait_final(seen, 10)
                refused.append(seen)
            restart(stack, "providers-1")
            after = await wire.send(quick, DEADLINE)
            await wire.wait_final(after, 10)
            return refused, after
        finally:
            await wire.close()

    stack.kill("providers-1")
    stack.kill("providers-2")
    try:
        refused, after = run(scenario())
    finally:
        restart(stack, "providers-1", "providers-2")
    assert [(s.status(), s.error_code()) for s in refused] == [("503", "no_provider_worker")] * 8
    assert after.status() == "200", (after.status(), after.error_code())  # no cooldown to sit out


def test_the_bundled_client_raises_request_lost_when_everything_holding_its_request_dies(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> tuple[BaseException | None, float]:
        client = await ModelbusClient.connect(nats_server.url)
        try:
            task = asyncio.create_task(client.request_raw(SLOW, timeout=60))
            await asyncio.sleep(0.5)
            for name in ("router-1", "router-2", "providers-1", "providers-2"):
                stack.kill(name)
            killed_at = time.monotonic()
            try:
                await task
            except Exception as exc:
                return exc, time.monotonic() - killed_at
            return None, time.monotonic() - killed_at
        finally:
            await client.close()

    try:
        error, after = run(scenario())
    finally:
        restart(stack, "router-1", "router-2", "providers-1", "providers-2")
    assert isinstance(error, RequestLost), error
    assert error.retryable
    assert after < 8.0  # the contract's 5 s of silence, not the 60 s deadline


def test_keepalives_come_while_a_request_waits_and_only_to_clients_that_asked(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> tuple[Seen, Seen, Seen]:
        wire = await Wire.open(nats_server.url)
        try:
            asked = await wire.send(SLOW, {H.KEEPALIVE: "1"})
            plain = await wire.send(SLOW)
            late = {"model": "late-first-token", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            stream = await wire.send(late)
            for seen in (asked, plain, stream):
                await wire.wait_final(seen, 10)
            return asked, plain, stream
        finally:
            await wire.close()

    asked, plain, stream = run(scenario())
    assert asked.status() == plain.status() == stream.status() == "200"
    assert asked.keepalives() >= 1  # 2 s upstream call, a keepalive every second of silence
    assert plain.keepalives() == 0 and len(plain.messages) == 1  # plain request/reply clients see one message
    assert stream.keepalives() >= 1  # streams always get them: 2.5 s before the first token
    for _, msg in stream.messages:
        if (msg.headers or {}).get(H.KEEPALIVE) == "1":
            assert not msg.data and H.SEQ not in (msg.headers or {}) and H.STATUS not in (msg.headers or {})


@pytest.mark.parametrize(
    "body",
    [
        b'{"stream": true, "messages": "not a list"}',
        b'{"stream": true, "messages": [',
        b'{"stream": true, "model": "default", "messages": [{"role": "user", "content": "hi"}], "bogus_field": 1}',
    ],
    ids=["wrong-type", "malformed-json", "unknown-field"],
)
def test_a_streamed_request_that_fails_validation_gets_one_error_terminator(
    stack: Services, nats_server: EmbeddedNats, body: bytes
) -> None:
    async def scenario() -> Seen:
        wire = await Wire.open(nats_server.url)
        try:
            seen = await wire.send(body)
            seen.stream = True
            await wire.wait_final(seen, 10)
            await asyncio.sleep(0.3)
            return seen
        finally:
            await wire.close()

    seen = run(scenario())
    assert len(seen.messages) == 1
    hdrs = seen.messages[0][1].headers or {}
    assert hdrs.get(H.STATUS) == "400"
    assert hdrs.get(H.STREAM) == H.STREAM_END and hdrs.get(H.SEQ) == "0"


def test_the_bundled_client_reports_a_refused_stream_as_the_typed_400_not_as_out_of_order(
    stack: Services, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> BaseException | None:
        client = await ModelbusClient.connect(nats_server.url)
        try:
            async for _ in client.stream({"stream": True, "messages": "not a list"}, timeout=10):
                pass
        except Exception as exc:
            return exc
        finally:
            await client.close()
        return None

    error = run(scenario())
    assert isinstance(error, InvalidRequest), error


# " 100" is not here: NATS headers follow HTTP's rule that whitespace around a value is not part of it,
# so nats-py hands the router "100" (the parser itself refuses " 100", tests/unit/shared/test_replies.py).
@pytest.mark.parametrize("value", ["1_000", "\u0661\u0660\u0660", "9" * 40, "0", "-1", "+5"], ids=repr)
def test_a_malformed_timeout_header_is_a_400_that_names_it(
    stack: Services, nats_server: EmbeddedNats, value: str
) -> None:
    async def scenario() -> Seen:
        wire = await Wire.open(nats_server.url)
        try:
            seen = await wire.send({"messages": [{"role": "user", "content": "hi"}]}, {H.TIMEOUT_MS: value})
            await wire.wait_final(seen, 10)
            return seen
        finally:
            await wire.close()

    seen = run(scenario())
    assert seen.status() == "400"
    assert H.TIMEOUT_MS in seen.finals()[0][1].data.decode()
