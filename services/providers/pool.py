"""A bounded keep-alive pool of HTTP/1.1 connections to one origin.

Idle connections are reused last-in first-out, so with one call at a time the
same warm connection serves every call, and with many in flight the pool
grows to what they need, up to ``max_connections``; beyond that a call waits
for a connection to come back (``PoolTimeout`` after the timeout). An idle
connection is dropped, not reused, when it has been idle longer than
``keepalive_expiry_s`` (servers close theirs after a few seconds: uvicorn and
Node.js after 5, so the default is just under), when the server closed it, or
when its socket has bytes waiting (the server's close, not yet seen by the
event loop). Checking costs one ``poll`` per reuse; there is no background
task and no per-request scan of the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from services.providers.h1 import H1Connection
from services.providers.transport_errors import PoolTimedOut

Opener = Callable[[str, "float | None"], Awaitable[H1Connection]]
"""``(url, timeout) -> connection``: :meth:`services.providers.netio.Connector.open`."""


class ConnectionPool:
    """Connections to one origin; :meth:`acquire` one per request and :meth:`release` it after."""

    def __init__(self, opener: Opener, *, max_connections: int, keepalive_expiry_s: float) -> None:
        self._opener = opener
        self._max = max_connections
        self._expiry = keepalive_expiry_s
        self._idle: list[H1Connection] = []
        self._open = 0
        """Connections open or opening, idle or not."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def acquire(self, url: str, timeout: float | None) -> H1Connection:
        """An idle connection that is still good, else a new one, else wait for one to come back."""
        while True:
            if self._closed:
                raise RuntimeError("the connection pool is closed")
            conn = self._reusable_idle()
            if conn is not None:
                return conn
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._opener(url, timeout)
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            await self._wait_for_room(timeout)

    def release(self, conn: H1Connection) -> None:
        """Take a connection back after its call: kept if reusable, else closed."""
        conn.finished()
        if conn.reusable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.abort()
            self._open -= 1
        self._wake_one()

    def release_after_drain(self, conn: H1Connection) -> None:
        """Take a connection back whose caller stopped reading its answer (see :meth:`H1Connection.drain`)."""
        conn.drain(self.release)

    async def aclose(self) -> None:
        """Close every idle connection; busy ones close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
            self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _reusable_idle(self) -> H1Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since < self._expiry and not conn.readable():
                return conn
            conn.abort()
            self._open -= 1
        return None

    async def _wait_for_room(self, timeout: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            self._pass_on(waiter)
            raise PoolTimedOut(f"all {self._max} connections stayed busy for {timeout:g}s") from None
        except BaseException:
            self._pass_on(waiter)
            raise

    def _pass_on(self, waiter: asyncio.Future[None]) -> None:
        """A waiter leaving without using its turn (timed out, cancelled) hands the turn on."""
        if waiter.done() and not waiter.cancelled():
            self._wake_one()
        else:
            waiter.cancel()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
