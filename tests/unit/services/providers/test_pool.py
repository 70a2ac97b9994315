"""The keep-alive pool under the provider client: reuse, bounds, and connections the server closed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.providers.http import UpstreamClient, transport_error
from shared.errors import UpstreamTimeout, UpstreamUnavailable
from tests.unit.services.providers.upstream_fakes import (
    ON_BOTH_LOOPS,
    Run,
    Upstream,
    answer,
    eventually,
    keep_alive,
    read_request,
    serving,
)


async def post(client: UpstreamClient, upstream: Upstream, **kw: object) -> int:
    response = await client.post(f"{upstream.url}/v1/chat", content=b"{}", **kw)  # type: ignore[arg-type]
    return response.status_code


def test_sequential_calls_reuse_one_kept_alive_connection() -> None:
    async def scenario() -> None:
        async with serving(keep_alive()) as upstream:
            client = UpstreamClient(timeout_s=5)
            assert [await post(client, upstream) for _ in range(5)] == [200] * 5
            assert upstream.connections == 1
            await client.aclose()

    asyncio.run(scenario())


def test_an_answer_that_says_connection_close_is_not_reused() -> None:
    async def scenario() -> None:
        async with serving(keep_alive(answer(headers="Connection: close"))) as upstream:
            client = UpstreamClient(timeout_s=5)
            assert [await post(client, upstream) for _ in range(3)] == [200] * 3
            assert upstream.connections == 3
            await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_LOOPS
def test_a_kept_alive_connection_the_server_closed_while_idle_is_replaced_without_an_error(
    run: Run,
) -> None:
    async def answer_then_close(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(upstream, reader)
        writer.write(answer())  # keep-alive promised, then the server's idle timeout closes it
        await writer.drain()

    async def scenario() -> None:
        async with serving(answer_then_close) as upstream:
            client = UpstreamClient(timeout_s=5)
            assert await post(client, upstream) == 200
            await eventually(upstream.closed.is_set, "the server to close the idle connection")
            assert await post(client, upstream) == 200
            assert upstream.connections == 2
            assert len(upstream.requests) == 2  # each request sent once
            await client.aclose()

    run(scenario())


@ON_BOTH_LOOPS
def test_a_request_the_server_read_and_then_dropped_is_never_sent_again(run: Run) -> None:
    async def read_then_drop(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(upstream, reader) is not None:
            if len(upstream.requests) == 2:
                return  # the second request is read, then the connection closed unanswered
            writer.write(answer())
            await writer.drain()

    async def scenario() -> httpx.HTTPError:
        async with serving(read_then_drop) as upstream:
            client = UpstreamClient(timeout_s=5)
            assert await post(client, upstream) == 200
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await post(client, upstream)
            assert len(upstream.requests) == 2  # a POST may have been acted on: not resent
            assert upstream.connections == 1
            await client.aclose()
        return caught.value

    err = transport_error(run(scenario()), endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamUnavailable) and err.retryable
    assert "closed the connection without answering" in err.message


def test_a_kept_alive_connection_found_closed_when_reused_is_replaced_before_sending() -> None:
    async def scenario() -> None:
        async with serving(keep_alive()) as upstream:
            client = UpstreamClient(timeout_s=5)
            assert await post(client, upstream) == 200
            pool = next(iter(client._pools.values()))
            idle = pool._idle[0]
            idle.transport.close()  # closed on our side, connection_lost not yet delivered
            assert await post(client, upstream) == 200
            assert upstream.connections == 2
            assert len(upstream.requests) == 2
            await client.aclose()

    asyncio.run(scenario())


@ON_BOTH_LOOPS
def test_concurrent_calls_open_at_most_max_connections_and_all_complete(run: Run) -> None:
    async def scenario() -> None:
        async with serving(keep_alive()) as upstream:
            client = UpstreamClient(timeout_s=5, max_connections=4)
            statuses = await asyncio.gather(*(post(client, upstream) for _ in range(32)))
            assert statuses == [200] * 32
            assert upstream.connections <= 4
            pool = next(iter(client._pools.values()))
            assert pool.open_connections == pool.idle_connections <= 4
            assert client.in_flight == 0
            await client.aclose()

    run(scenario())


def test_a_call_that_finds_every_connection_busy_for_the_whole_timeout_is_a_pool_timeout() -> None:
    release = asyncio.Event()

    async def slow_first(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(upstream, reader) is not None:
            if len(upstream.requests) == 1:
                await release.wait()
            writer.write(answer())
            await writer.drain()

    async def scenario() -> httpx.HTTPError:
        async with serving(slow_first) as upstream:
            client = UpstreamClient(timeout_s=5, max_connections=1)
            first = asyncio.create_task(post(client, upstream))
            await eventually(lambda: len(upstream.requests) == 1, "the first request to hold the connection")
            with pytest.raises(httpx.PoolTimeout) as caught:
                await post(client, upstream, timeout=0.2)
            release.set()
            assert await first == 200
            assert await post(client, upstream) == 200  # the pool recovered its only connection
            assert upstream.connections == 1
            await client.aclose()
        return caught.value

    err = transport_error(asyncio.run(scenario()), endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamTimeout) and "all 1 connections stayed busy" in err.message


def test_a_refused_connection_is_a_connect_error_naming_the_port_and_leaves_nothing_in_flight() -> None:
    async def scenario() -> httpx.HTTPError:
        client = UpstreamClient(timeout_s=5)
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post("http://127.0.0.1:9/v1", content=b"{}")  # the discard port: refused
        assert client.in_flight == 0
        assert next(iter(client._pools.values())).open_connections == 0
        await client.aclose()
        return caught.value

    err = transport_error(asyncio.run(scenario()), endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamUnavailable) and err.retryable
    assert "cannot connect to 127.0.0.1 port 9" in err.message
