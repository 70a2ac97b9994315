"""The load generator's HTTP client: minimal keep-alive HTTP/1.1, the same for every HTTP contender.

A fair comparison needs a client whose cost per request is small and equal for
all: on this 2-core machine the client shares the cores with the contender and
the upstream, so a heavy client (httpx costs about 2 ms of CPU per request
here) slows the fast contenders most and flatters the slow ones. This client
does as little as a client can: the whole request (head and body) is encoded
once per contender and written in one ``transport.write``; the answer is parsed
by ``httptools`` (llhttp, in C) through callbacks on an asyncio ``Protocol``;
one waiter is woken once per answer. Each connection carries one request at a
time and is kept alive; a free list hands connections to the closed loop's
workers, so at concurrency K there are K connections.

Only what the benchmark needs: POST of a fixed body, the status, the body
read to its end (``Content-Length`` or chunked), and a new connection when
the server closes one. For streams (scenario d) the same exchange also notes
the ``perf_counter`` at which each piece of the body arrived
(:meth:`H1Client.exchange_timed`); the SSE lines are read only after the
answer is complete, so reading them costs the timed stream nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from bench.load import RequestFailed, Send

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0


def request_bytes(host: str, port: int, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """One POST, head and body, ready to write as it is."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`exchange` writes a request and waits for its whole answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._times: list[float] | None = None
        """When timed: the arrival time of each piece of :attr:`_body`."""
        self._done: asyncio.Future[int] | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RequestFailed(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RequestFailed(f"connection closed by the server{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        if self._times is not None:
            self._times.append(time.perf_counter())

    def on_message_complete(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(self._parser.get_status_code())
        if not self._parser.should_keep_alive() and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_exception(exc)

    async def exchange(self, request: bytes, *, timed: bool = False) -> tuple[int, list[bytes], list[float]]:
        """The status, the body's pieces as they arrived and (``timed``) each piece's arrival time."""
        assert self.transport is not None
        self._body = []
        times: list[float] = []
        self._times = times if timed else None
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await self._done, self._body, times
        finally:
            self._done = None
            self._times = None


class H1Client:
    """Keep-alive connections to one ``host:port``, handed out one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._free: list[_Connection] = []
        self._all: set[_Connection] = set()
        self.connects = 0
        """Connections opened (a keep-alive run opens one per concurrent request, once)."""

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self.connects += 1
        self._all.add(conn)
        return conn

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one prepared request on a free (or new) connection; its status and body."""
        status, pieces, _ = await self._exchange(request, timed=False)
        return status, b"".join(pieces)

    async def exchange_timed(self, request: bytes) -> tuple[int, list[tuple[float, bytes]]]:
        """Like :meth:`exchange`, with the body as ``(perf_counter at arrival, piece)`` pairs."""
        status, pieces, times = await self._exchange(request, timed=True)
        return status, list(zip(times, pieces, strict=True))

    async def _exchange(self, request: bytes, *, timed: bool) -> tuple[int, list[bytes], list[float]]:
        conn = self._free.pop() if self._free else None
        if conn is None or conn.closed:
            conn = await self._connect()
        try:
            answer = await conn.exchange(request, timed=timed)
        except BaseException:
            self._drop(conn)
            raise
        if conn.closed:
            self._drop(conn)
        else:
            self._free.append(conn)
        return answer

    def _drop(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn.transport is not None and not conn.closed:
            conn.transport.close()

    async def aclose(self) -> None:
        for conn in list(self._all):
            self._drop(conn)
        self._free.clear()
        await asyncio.sleep(0)  # let the transports close


def h1_sender(client: H1Client, path: str, body: bytes, headers: Mapping[str, str]) -> Send:
    """POST ``body`` to ``path``; anything but a 200 is a failure."""
    request = request_bytes(client.host, client.port, path, body, {"Content-Type": "application/json", **headers})

    async def send() -> None:
        status, answer = await client.exchange(request)
        if status != 200:
            raise RequestFailed(f"HTTP {status}: {answer[:200]!r}")

    return send


class H1Clients:
    """One :class:`H1Client` per server, for senders given URLs (``async with`` closes them all)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, int], H1Client] = {}

    def sender(self, url: str, body: bytes, headers: Mapping[str, str]) -> Send:
        """POST ``body`` to ``url`` (``http://host:port/path``) with ``headers``."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"the load generator speaks plain http to host:port, not {url!r}")
        key = (parts.hostname, parts.port)
        client = self._clients.get(key) or self._clients.setdefault(key, H1Client(*key))
        return h1_sender(client, parts.path or "/", body, headers)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def __aenter__(self) -> H1Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def describe(client: H1Client) -> dict[str, Any]:
    return {"host": client.host, "port": client.port, "connects": client.connects}
