"""One HTTP/1.1 client connection: an asyncio ``Protocol`` whose answers ``httptools`` (llhttp) parses.

The provider worker sends one kind of request upstream, a POST with a
prebuilt body, and its cost per call used to be mostly the HTTP machinery:
httpcore's pool and state machines over h11's pure-Python parser. Here the
request head is one joined string written with the body in one transport
write, and llhttp (the parser Node.js uses, in C) reports the answer through
callbacks on this protocol. A call that wants the whole answer is woken once,
when it is complete; a stream is woken for the head, then as data arrives.

Timeouts are httpx's: a read timeout is the longest silence allowed while a
call waits (one timer per wait, pushed back by arriving data, not re-armed per
chunk), a write timeout the longest wait for the kernel to take the request.
Errors are httpx's exception classes, which the adapters already catch and
:func:`services.providers.http.transport_error` maps onto the error tree.
A connection serves one request at a time and is reusable only when the
answer was read to its end and the server kept it alive.
"""

from __future__ import annotations

import asyncio
import re
import select
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import httptools
import httpx

from services.providers.transport_errors import (
    BadRequestHeader,
    ConnectionLost,
    ReadTimedOut,
    UpstreamProtocolError,
    WriteTimedOut,
)

MAX_HEAD_BYTES = 64 * 1024
"""An answer's status line and headers larger than this are refused (typed, never buffered on)."""
STREAM_HIGH_WATER = 256 * 1024
"""A streamed body buffered beyond this pauses reading until the consumer catches up."""
DRAIN_MAX_BYTES = 64 * 1024
DRAIN_MAX_S = 0.5
"""A stream closed before its end is read on for at most this, to keep the connection (see ``drain``)."""

_TOKEN_LIST = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+\n)*\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class NotSent(Exception):
    """The connection was closed before the request was written: safe to send it on another."""


def request_head(method: str, target: str, host: str, headers: Mapping[str, str], length: int | None) -> bytes:
    """The request line and headers, validated: no header can smuggle a line break into the request.

    ``headers`` must not name ``Host``, ``Content-Length``, ``Transfer-Encoding``
    or ``Connection``: the client frames the request itself.
    """
    names = "\n".join(headers) + "\n" if headers else ""
    if not _TOKEN_LIST.match(names):
        raise BadRequestHeader("an upstream request header has an illegal name")
    block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # Names are tokens, so each header adds exactly one CR and one LF unless a value has its own.
    if block.count("\n") != len(headers) or block.count("\r") != len(headers) or "\x00" in block:
        bad = next(name for name, value in headers.items() if _BAD_VALUE.search(value))
        raise BadRequestHeader(f"the value of request header {bad!r} contains a line break or NUL")  # never the value
    framing = f"Content-Length: {length}\r\n" if length is not None else ""
    try:
        return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{block}{framing}\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise BadRequestHeader("an upstream request header is not latin-1 text") from None


class H1Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time: :meth:`send`, then :meth:`read_all`, or
    :meth:`receive_head` and :meth:`read_chunk` until ``b""``; then the pool takes it back."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._poller: Any = None  # select.poll on the socket, for readable()
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._busy = False
        self._write_paused = False
        self._read_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last_activity = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._head_bytes = 0  # received while the head is incomplete (bounds llhttp's partial header)
        self._header_bytes = 0  # of the headers themselves
        self._interim = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._whole = False  # the consumer wants the whole body: no wake-up per chunk, no read pause
        self._limit = 0
        self.complete = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._on_drained: Callable[[H1Connection], None] | None = None
        self._drained = 0

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        fileno = sock.fileno() if sock is not None else -1
        if fileno >= 0:
            self._poller = select.poll()
            self._poller.register(fileno, select.POLLIN)

    def readable(self) -> bool:
        """Whether the socket has bytes waiting while idle: for HTTP/1.1, the server closed it.

        The event loop would notice on its next turn; this catches a close that
        arrived since the last one, just before the connection is reused.
        """
        return self._poller is None or bool(self._poller.poll(0))

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        if not self._busy or self.complete:
            self._broken("the upstream sent bytes nobody asked for")
            return
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            self._broken(f"malformed HTTP/1.1 answer: {exc}")
        if not self._head_done and self._head_bytes > MAX_HEAD_BYTES:
            self._broken(f"answer head larger than {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool | None:
        return None  # close: an HTTP/1.1 client has nothing to say after the server's FIN

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._busy and not self.complete and self._error is None:
            if exc is None and self._head_done and self._ends_at_close():
                self._finish(keep_alive=False)
            elif exc is not None:
                self._error = ConnectionLost(f"connection to the upstream lost: {type(exc).__name__}")
            elif self._head_done:
                self._error = UpstreamProtocolError("the upstream closed the connection in the middle of its answer")
            else:
                self._error = UpstreamProtocolError("the upstream closed the connection without answering")
        self._wake()
        if self._on_drained is not None:
            self._drain_done()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # ------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request
            self._refuse("the upstream sent a second answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        self._header_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            if status == 101:
                self._refuse("the upstream switched protocols unasked (101)")
            self._interim = True
            self._header_bytes = 0
            self.raw_headers = []
            return
        if self._header_bytes > MAX_HEAD_BYTES:  # a head that completed within its last read
            self._refuse(f"answer head larger than {MAX_HEAD_BYTES} bytes")
        self.status = status
        self._head_done = True
        if not self._whole:  # a whole read waits for the end, not the head: one wake-up per call
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self._on_drained is not None:
            self._drained += len(body)
            if self._drained > DRAIN_MAX_BYTES:
                self._broken("too much left to drain")
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._whole:
            if self._buffered > self._limit:
                self._refuse(f"answer body larger than {self._limit} bytes")
        else:
            if self._buffered > STREAM_HIGH_WATER and not self._read_paused and not self.closed:
                self._read_paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._finish(keep_alive=self._parser.should_keep_alive())

    # ------------------------------------------------------------ what the client calls

    def usable(self) -> bool:
        """Whether this idle connection can carry another request (not closed, nothing pending)."""
        return not self.closed and self._error is None and not self.transport.is_closing()

    async def send(self, request: bytes, body: bytes | None, timeout: float | None) -> None:
        """Write a request; :class:`NotSent` if the connection was already closed."""
        if self.closed or self.transport.is_closing():
            self.abort()  # and the pool discards it
            raise NotSent
        self._reset()
        self._busy = True
        if body is None:
            self.transport.write(request)
        elif len(body) < 65536:
            self.transport.write(request + body)
        else:
            self.transport.writelines((request, body))
        while self._write_paused and not self._head_done and self._error is None:
            await self._wait(timeout, WriteTimedOut)
        self._raise_error()

    async def receive_head(self, timeout: float | None) -> None:
        """Wait for the status line and headers (:attr:`status`, :attr:`raw_headers`)."""
        while not self._head_done and self._error is None:
            await self._wait(timeout, ReadTimedOut)
        self._raise_error()

    async def read_all(self, limit: int, timeout: float | None) -> bytes:
        """The whole (still encoded) body, at most ``limit`` bytes; callable before the head arrived
        (then :attr:`status` and :attr:`raw_headers` are set on return)."""
        self._whole, self._limit = True, limit
        if self._buffered > limit:  # arrived with the head, before the limit applied
            self._error = UpstreamProtocolError(f"answer body larger than {limit} bytes")
            self.abort()
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        while not self.complete and self._error is None:
            await self._wait(timeout, ReadTimedOut)
        self._raise_error()
        return self._take()

    async def read_chunk(self, timeout: float | None) -> bytes:
        """What arrived of the (still encoded) body since the last call; ``b""`` at its end."""
        while not self._body and not self.complete and self._error is None:
            await self._wait(timeout, ReadTimedOut)
        if self._body:
            return self._take()
        if not self.complete:
            self._raise_error()
        return b""

    @property
    def reusable(self) -> bool:
        """The answer was read to its end and the server keeps the connection open."""
        return self.complete and self._keep_alive and self._error is None and not self.closed

    def finished(self) -> None:
        """The call is done with this connection (its answer read, or abandoned)."""
        self._busy = False
        if not self.reusable:
            self.abort()

    def drain(self, on_drained: Callable[[H1Connection], None]) -> None:
        """Read the rest of an answer the caller stopped reading, then call ``on_drained``.

        A streamed answer whose consumer stopped at the protocol's own end mark
        (OpenAI's ``[DONE]``) usually has only the chunked terminator left,
        arriving a moment later; reading it keeps the connection for the next
        call instead of opening a new one. At most :data:`DRAIN_MAX_BYTES` or
        :data:`DRAIN_MAX_S`, then the connection is closed.
        """
        self._body.clear()
        if self.complete or self._error is not None or self.closed:
            on_drained(self)
            return
        self._on_drained = on_drained
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        self._timer = self._loop.call_later(DRAIN_MAX_S, self._broken, "the rest of the answer took too long")

    def abort(self) -> None:
        """Close at once (an unread or broken answer cannot be skipped on HTTP/1.1)."""
        if not self.closed:
            self.closed = True
            self._busy = False
            if self.transport is not None:
                self.transport.abort()

    # ------------------------------------------------------------ plumbing

    def _take(self) -> bytes:
        body = self._body
        chunk = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._read_paused and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
        return chunk

    def _finish(self, *, keep_alive: bool) -> None:
        self.complete = True
        self._keep_alive = keep_alive
        self._wake()
        if self._on_drained is not None:
            self._drain_done()

    def _drain_done(self) -> None:
        on_drained, self._on_drained = self._on_drained, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._busy = False
        if on_drained is not None:
            on_drained(self)

    def _ends_at_close(self) -> bool:
        """Whether the answer's body is delimited by the end of the connection (no length, not chunked)."""
        for name, value in self.raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
                return False
        return True

    def _refuse(self, reason: str) -> None:
        """From inside a parser callback: fail the answer and stop llhttp."""
        self._broken(reason)
        raise httptools.HttpParserError(reason)

    def _broken(self, reason: str) -> None:
        if self._error is None and not self.complete:  # a complete answer stays readable
            self._error = UpstreamProtocolError(reason)
        self.abort()
        self._wake()
        if self._on_drained is not None:
            self._drain_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None, kind: type[httpx.TimeoutException]) -> None:
        waiter = self._waiter = self._loop.create_future()
        if timeout is not None:
            self._timeout = timeout
            self._last_activity = self._loop.time()
            self._timer = self._loop.call_later(timeout, self._check_silence, waiter, kind)
        try:
            await waiter
        except BaseException:  # cancelled mid-answer: the connection's state is unknown
            self.abort()
            raise
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _check_silence(self, waiter: asyncio.Future[None], kind: type[httpx.TimeoutException]) -> None:
        silent = self._loop.time() - self._last_activity
        if silent < self._timeout:  # data came meanwhile: wait for the rest of the allowed silence
            self._timer = self._loop.call_later(self._timeout - silent, self._check_silence, waiter, kind)
            return
        if self._error is None:
            if kind is WriteTimedOut:
                what = "the upstream took none of the request"
            elif not self._head_done:
                what = "no answer from the upstream"
            else:
                what = "the upstream stopped sending its answer"
            self._error = kind(f"{what} within {self._timeout:g}s")
        self.abort()
        if not waiter.done():
            waiter.set_result(None)
