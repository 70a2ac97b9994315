"""The HTTP/1.1 connection under the provider client, against loopback upstreams that misbehave.

Every failure must reach the adapter as an httpx error that
:func:`~services.providers.http.transport_error` maps to a typed, retryable
error, and must leave the client usable for the next call.
"""

from __future__ import annotations

import asyncio
import gzip

import httpx
import pytest

from services.providers.http import UpstreamClient, transport_error
from services.providers.transport_errors import BadRequestHeader, UpstreamProtocolError
from shared.errors import UpstreamTimeout, UpstreamUnavailable
from tests.unit.services.providers.upstream_fakes import (
    OK_BODY,
    ON_BOTH_LOOPS,
    Run,
    Upstream,
    answer,
    chunk,
    eventually,
    keep_alive,
    once,
    read_request,
    serving,
)


def typed(exc: httpx.HTTPError) -> UpstreamTimeout | UpstreamUnavailable:
    err = transport_error(exc, endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamTimeout | UpstreamUnavailable)
    return err


async def post(client: UpstreamClient, upstream: Upstream, **kw: object) -> httpx.Response:
    return await client.post(f"{upstream.url}/v1/chat", content=b'{"q":1}', **kw)  # type: ignore[arg-type, return-value]


def test_the_request_carries_its_own_host_and_length_and_the_adapters_headers_and_gzip_is_decoded() -> None:
    body = gzip.compress(OK_BODY)

    async def scenario() -> None:
        async with serving(keep_alive(answer(body, headers="Content-Encoding: gzip"))) as upstream:
            client = UpstreamClient(timeout_s=5)
            headers = {"Content-Type": "application/json", "Host": "evil.example", "Content-Length": "999"}
            response = await client.post(f"{upstream.url}/v1/chat?x=1", content=b'{"q":1}', headers=headers)
            assert response.status_code == 200
            assert response.json() == {"ok": True}
            assert client.in_flight == 0
            request = upstream.requests[0]
            assert request.line == b"POST /v1/chat?x=1 HTTP/1.1"
            assert request.header("host") == f"127.0.0.1:{upstream.port}"
            assert request.header("content-length") == "7" and request.body == b'{"q":1}'
            assert request.head.lower().count(b"\r\nhost:") == request.head.lower().count(b"\r\ncontent-length:") == 1
            assert request.header("content-type") == "application/json"
            assert request.header("user-agent") == "modelbus"
            assert request.header("accept-encoding") == "gzip, deflate"
            await client.aclose()

    asyncio.run(scenario())


def test_a_redirect_is_returned_to_the_adapter_never_followed() -> None:
    moved = answer(b"", status="302 Found", headers="Location: http://169.254.169.254/latest/meta-data")

    async def scenario() -> None:
        async with serving(keep_alive(moved)) as upstream:
            client = UpstreamClient(timeout_s=5)
            response = await post(client, upstream)
            assert response.status_code == 302
            assert response.headers["location"].startswith("http://169.254.169.254")
            assert len(upstream.requests) == 1
            await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_LOOPS
def test_a_chunked_stream_arrives_line_by_line_before_the_upstream_has_finished(run: Run) -> None:
    second_may_go = asyncio.Event()

    async def handle(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(upstream, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunk(b"data: one\n\n"))
        await writer.drain()
        await second_may_go.wait()  # only once the client has seen the first event
        writer.write(chunk(b"data: two\r\n\r\n") + chunk(b""))
        await writer.drain()

    async def scenario() -> list[str]:
        lines: list[str] = []
        async with serving(handle) as upstream:
            client = UpstreamClient(timeout_s=5)
            async with client.stream("POST", f"{upstream.url}/v1/s", content=b"{}") as response:
                async for line in response.aiter_lines():
                    lines.append(line)
                    if line == "data: one":
                        second_may_go.set()
            await client.aclose()
        return lines

    assert run(scenario()) == ["data: one", "", "data: two", ""]


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\ndata: {}\n\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: {}\n\n"),
    ],
    ids=["content-length", "chunked"],
)
@ON_BOTH_LOOPS
def test_an_upstream_that_closes_mid_body_is_a_retryable_error_and_the_client_carries_on(cut: bytes, run: Run) -> None:
    async def scenario() -> tuple[list[str], Exception]:
        async with serving(once(cut)) as upstream:
            client = UpstreamClient(timeout_s=5)
            lines: list[str] = []
            with pytest.raises(httpx.HTTPError) as caught:
                async with client.stream("POST", f"{upstream.url}/v1/s", content=b"{}") as response:
                    async for line in response.aiter_lines():
                        lines.append(line)
            with pytest.raises(httpx.RemoteProtocolError):  # and on a whole read alike
                await post(client, upstream)
            assert client.in_flight == 0
            await client.aclose()
        return lines, caught.value

    lines, exc = run(scenario())
    assert lines[:1] == ["data: {}"]
    err = typed(exc)
    assert isinstance(err, UpstreamUnavailable) and err.retryable
    assert "in the middle of its answer" in err.message


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "head larger than"),
        (b"SMTP ready\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "malformed"),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "malformed"),
        (answer(b"x" * 5000), "body larger than 4096"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "switched"),
    ],
    ids=["huge-head", "not-http", "two-lengths", "bad-header", "huge-body", "upgrade"],
)
def test_a_malformed_or_oversized_answer_is_a_typed_error_and_the_next_call_works(reply: bytes, reason: str) -> None:
    served = [reply]

    async def handle(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(upstream, reader) is not None:
            writer.write(served.pop(0) if served else answer())
            await writer.drain()

    async def scenario() -> UpstreamProtocolError:
        async with serving(handle) as upstream:
            client = UpstreamClient(timeout_s=5, max_body_bytes=4096)
            with pytest.raises(UpstreamProtocolError) as caught:
                await post(client, upstream)
            assert (await post(client, upstream)).status_code == 200
            assert client.in_flight == 0
            await client.aclose()
        return caught.value

    exc = asyncio.run(scenario())
    assert reason in str(exc)
    err = typed(exc)
    assert isinstance(err, UpstreamUnavailable) and reason in err.message


def test_interim_answers_are_skipped_and_the_final_one_is_returned() -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + answer()

    async def scenario() -> None:
        async with serving(keep_alive(reply)) as upstream:
            client = UpstreamClient(timeout_s=5)
            response = await post(client, upstream)
            assert (response.status_code, response.content) == (200, OK_BODY)
            assert "link" not in response.headers
            await client.aclose()

    asyncio.run(scenario())


def test_a_body_delimited_by_the_close_of_the_connection_is_read_whole_and_not_reused() -> None:
    async def scenario() -> None:
        async with serving(once(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")) as upstream:
            client = UpstreamClient(timeout_s=5)
            assert (await post(client, upstream)).content == b"until the end"
            assert (await post(client, upstream)).content == b"until the end"
            assert upstream.connections == 2
            await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_LOOPS
def test_an_upstream_that_never_answers_is_a_read_timeout_mapped_to_upstream_timeout(run: Run) -> None:
    async def silent(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(upstream, reader)
        await reader.read()  # until the client gives up and closes

    async def scenario() -> httpx.ReadTimeout:
        async with serving(silent) as upstream:
            client = UpstreamClient(timeout_s=5)
            with pytest.raises(httpx.ReadTimeout) as caught:
                await post(client, upstream, timeout=0.2)
            assert client.in_flight == 0
            await eventually(upstream.closed.is_set, "the abandoned connection to close")
            await client.aclose()
        return caught.value

    err = typed(run(scenario()))
    assert isinstance(err, UpstreamTimeout) and err.retryable
    assert "no answer from the upstream within 0.2s" in err.message


def test_a_slow_stream_consumer_pauses_reading_instead_of_buffering_the_whole_answer() -> None:
    from services.providers.h1 import STREAM_HIGH_WATER

    piece = b"data: " + b"x" * 65_530 + b"\n\n"
    pieces = 128  # 8 MiB

    async def flood(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(upstream, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(pieces):
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(chunk(b""))
        await writer.drain()

    async def scenario() -> int:
        async with serving(flood) as upstream:
            client = UpstreamClient(timeout_s=5)
            received = 0
            async with client.stream("POST", f"{upstream.url}/v1/s", content=b"{}") as response:
                stream = aiter(response.aiter_bytes())
                received += len(await anext(stream))
                connection = response._source._conn  # type: ignore[union-attr]
                await eventually(lambda: connection._read_paused, "reading to pause while nobody consumes")
                assert connection._buffered <= STREAM_HIGH_WATER + 256 * 1024  # at most one read past the mark
                async for part in stream:
                    received += len(part)
            await client.aclose()
        return received

    assert asyncio.run(scenario()) == len(piece) * pieces


def test_an_upstream_that_takes_none_of_a_large_request_is_a_write_timeout() -> None:
    import socket

    async def scenario() -> httpx.HTTPError:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted sockets inherit it
        listener.bind(("127.0.0.1", 0))
        accepted = asyncio.Event()

        async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await asyncio.Event().wait()  # until the test ends; cancelled with the loop

        server = await asyncio.start_server(never_reads, sock=listener)
        client = UpstreamClient(timeout_s=5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        with pytest.raises(httpx.WriteTimeout) as caught:  # more than the kernel buffers on either side
            await client.post(url, content=b"x" * (16 * 1024 * 1024), timeout=0.3)
        assert accepted.is_set() and client.in_flight == 0
        await client.aclose()
        server.close()
        return caught.value

    err = typed(asyncio.run(scenario()))
    assert isinstance(err, UpstreamTimeout) and "took none of the request within 0.3s" in err.message


@ON_BOTH_LOOPS
def test_a_stream_left_normally_before_its_end_is_drained_and_its_connection_reused(run: Run) -> None:
    rest_may_go = asyncio.Event()

    async def handle(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(upstream, reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: [DONE]\n\n"))
            await writer.drain()
            await rest_may_go.wait()
            writer.write(chunk(b""))
            await writer.drain()

    async def scenario() -> None:
        async with serving(handle) as upstream:
            client = UpstreamClient(timeout_s=5)
            pool_url = f"{upstream.url}/v1/s"
            async with client.stream("POST", pool_url, content=b"{}") as response:
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        break  # as the OpenAI adapter returns at [DONE]
            rest_may_go.set()
            pool = next(iter(client._pools.values()))
            await eventually(lambda: pool.idle_connections == 1, "the drained connection back in the pool")
            assert (await client.post(pool_url, content=b"{}")).status_code == 200
            assert upstream.connections == 1
            await client.aclose()

    run(scenario())


def test_a_stream_the_caller_gives_up_on_closes_its_connection_at_once() -> None:
    async def handle(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(upstream, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()  # the client's close ends this

    async def scenario() -> None:
        async with serving(handle) as upstream:
            client = UpstreamClient(timeout_s=5)
            with pytest.raises(LookupError):
                async with client.stream("POST", f"{upstream.url}/v1/s", content=b"{}") as response:
                    async for _ in response.aiter_lines():
                        raise LookupError("the adapter failed mapping the event")
            await eventually(upstream.closed.is_set, "the upstream to see the connection closed")
            assert client.in_flight == 0
            await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_LOOPS
def test_a_call_cancelled_while_waiting_closes_its_connection_and_the_next_call_works(
    run: Run,
) -> None:
    async def handle(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await read_request(upstream, reader) is not None and len(upstream.requests) == 1:
            await reader.read()  # never answers the first call
            return
        writer.write(answer())
        await writer.drain()

    async def scenario() -> None:
        async with serving(handle) as upstream:
            client = UpstreamClient(timeout_s=5)
            call = asyncio.create_task(post(client, upstream))
            await eventually(lambda: len(upstream.requests) == 1, "the first request to arrive")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await eventually(upstream.closed.is_set, "the cancelled call's connection to close")
            assert (await post(client, upstream)).status_code == 200
            assert client.in_flight == 0
            await client.aclose()

    run(scenario())


def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def scenario() -> None:
        async with serving(keep_alive()) as upstream:
            client = UpstreamClient(timeout_s=5)
            with pytest.raises(BadRequestHeader) as caught:
                await post(client, upstream, headers={"authorization": "Bearer sk-secret\r\nX-Injected: 1"})
            assert "sk-secret" not in str(caught.value)
            assert "authorization" in str(caught.value)
            assert upstream.connections == 0
            await client.aclose()

    asyncio.run(scenario())
