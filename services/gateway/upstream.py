"""The gateway's side of the NATS request/reply protocol: a request to the routers and its replies.

It follows :mod:`shared.replies` exactly as :class:`shared.client.ModelbusClient`
does: one :class:`~shared.mux.ReplyMux` subscription on the gateway's inbox for
every request in flight, ``Modelbus-Keepalive: 1`` and ``Modelbus-Timeout-Ms``
on every request, :data:`~shared.replies.MAX_SILENCE_S` of silence taken for a
lost request, streams checked for their sequence and their explicit end. Unlike
that client it hands keepalives to its caller (:data:`KEEPALIVE`), which turns
them into the HTTP stream's own keepalives, and it keeps every reply's headers
(endpoint, model, attempts, request id), which become response headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client

from shared import headers as H
from shared.bus import retry_after_from
from shared.chat import ChatCompletion, ChatCompletionChunk
from shared.errors import (
    BadUpstreamResponse,
    DeadlineExceeded,
    ModelbusError,
    NoRouteAvailable,
    PayloadTooLarge,
    RequestLost,
    error_from_wire,
)
from shared.formats import openai
from shared.mux import ReplyMux, Silence, Waiter
from shared.replies import CLIENT_GRACE_S, MAX_SILENCE_S, is_keepalive, is_no_responders, is_stream_end, status_of
from shared.subjects import CHAT_COMPLETIONS


class Keepalive:
    """The type of :data:`KEEPALIVE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE: Final = Keepalive()
"""What :meth:`Pending.next_chunk` returns for a keepalive: modelbus is still at work."""


class Upstream:
    """Requests to the routers over one NATS connection."""

    def __init__(self, nc: Client, *, subject: str = CHAT_COMPLETIONS) -> None:
        self.nc = nc
        self.subject = subject
        self._mux = ReplyMux(nc)
        """Every reply on one subscription; keepalives are queued too (they become HTTP keepalives)."""

    async def start(self) -> None:
        """Subscribe to the gateway's inbox."""
        await self._mux.start()

    async def stop(self) -> None:
        await self._mux.stop()

    @property
    def in_flight(self) -> int:
        """Requests waiting for replies."""
        return self._mux.open_count

    async def send(self, body: bytes, headers: dict[str, str], timeout_s: float) -> Pending:
        """Publish one request; its replies come through the returned :class:`Pending` (close it)."""
        waiter = self._mux.open(MAX_SILENCE_S)
        try:
            await self.nc.publish(self.subject, body, reply=waiter.subject, headers=headers)
        except nats.errors.MaxPayloadError:
            self._mux.close(waiter)
            raise PayloadTooLarge(f"the request ({len(body)} bytes) is larger than the NATS server takes") from None
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            self._mux.close(waiter)
            raise NoRouteAvailable(
                f"the gateway cannot reach NATS right now ({type(exc).__name__})", code="gateway_disconnected"
            ) from None
        except BaseException:
            self._mux.close(waiter)
            raise
        until = asyncio.get_running_loop().time() + timeout_s + CLIENT_GRACE_S
        pending = Pending(self, waiter, until, timeout_s)
        pending.sent_overhead = headers.get(H.OVERHEAD_MS, "0.000")
        return pending


class Pending:
    """The replies of one request, in order."""

    __slots__ = (
        "_seq",
        "_timeout_s",
        "_until",
        "_upstream",
        "_waiter",
        "format",
        "headers",
        "sent_overhead",
        "tail",
        "usage",
    )

    def __init__(self, upstream: Upstream, waiter: Waiter, until: float, timeout_s: float) -> None:
        self._upstream = upstream
        self._waiter = waiter
        self._until = until
        self._timeout_s = timeout_s
        self._seq = 0
        self.sent_overhead = "0.000"
        """``Modelbus-Overhead-Ms`` the request went out with: the gateway's time before sending."""
        self.headers: Mapping[str, str] = {}
        """The headers of the last reply read (the final one once the request is over)."""
        self.usage: ChatCompletionChunk | None = None
        """A stream's usage chunk, from its clean end (sent only when the request asked for it)."""
        self.tail = b""
        """The body of a stream's clean end as it came: the usage chunk's JSON, or empty."""
        self.format: str | None = None
        """``Modelbus-Format`` of the answer (a completion, or a stream's chunk 0): the body is the
        upstream's own, in that API's format; ``None``: the internal contract."""

    def close(self) -> None:
        """Stop listening; later replies are dropped."""
        self._upstream._mux.close(self._waiter)

    async def _message(self) -> tuple[dict[str, str], bytes]:
        try:
            msg = await self._waiter.next(self._until)
        except Silence:
            raise RequestLost(
                f"modelbus sent nothing for {MAX_SILENCE_S:g}s, not even a keepalive: "
                "whoever held the request is gone (it may or may not have reached a provider)"
            ) from None
        except TimeoutError:
            raise DeadlineExceeded(f"no answer from modelbus within {self._timeout_s:g}s") from None
        hdrs = dict(msg.headers) if msg.headers else {}
        if is_no_responders(hdrs, msg.data):
            raise NoRouteAvailable(f"no router serves {self._upstream.subject}", code="no_router")
        return hdrs, msg.data

    def _error(self, status: int, hdrs: dict[str, str], body: bytes) -> ModelbusError:
        self.headers = hdrs
        return error_from_wire(status, body, retry_after=retry_after_from(hdrs))

    async def completion_body(self) -> bytes:
        """The answer of a non-streamed request as the provider worker encoded it (OpenAI's
        ``chat.completion``, already validated there), or the typed error it ended with."""
        while True:
            hdrs, body = await self._message()
            if not is_keepalive(hdrs):
                break
        status = status_of(hdrs)
        if status != 200:
            raise self._error(status, hdrs, body)
        self.headers = hdrs
        self.format = hdrs.get(H.FORMAT)
        return body

    async def completion(self) -> ChatCompletion:
        """The answer of a non-streamed request, decoded, or the typed error it ended with."""
        body = await self.completion_body()
        try:
            return openai.completion_from_native(body)
        except msgspec.MsgspecError as exc:
            raise BadUpstreamResponse(f"modelbus sent an unreadable completion: {exc}") from None

    async def first_chunk(self) -> ChatCompletionChunk | None:
        """A stream's first chunk, past any keepalives (``None``: it ended with none); raises the
        error a stream that never began failed with."""
        while True:
            item = await self.next_chunk()
            if not isinstance(item, Keepalive):
                return item

    async def next_chunk(self) -> ChatCompletionChunk | Keepalive | None:
        """A stream's next chunk, :data:`KEEPALIVE`, or ``None`` at its clean end (its usage chunk,
        if any, is then :attr:`usage`). Raises the typed error the stream ended with."""
        item = await self.next_data()
        try:
            if item is None:
                if self.tail:
                    self.usage = openai.chunk_from_native(self.tail)
                return None
            if isinstance(item, Keepalive):
                return item
            return openai.chunk_from_native(item)
        except msgspec.MsgspecError as exc:
            raise BadUpstreamResponse(f"modelbus sent an unreadable stream chunk: {exc}") from None

    async def next_data(self) -> bytes | Keepalive | None:
        """A stream's next chunk as it came (not decoded: the provider worker checked it),
        :data:`KEEPALIVE`, or ``None`` at its clean end (whose body is then :attr:`tail`).
        Raises the typed error the stream ended with."""
        hdrs, body = await self._message()
        if is_keepalive(hdrs):
            return KEEPALIVE
        status = status_of(hdrs, default=200)
        if status != 200:  # an error terminator, or an error before the stream began
            raise self._error(status, hdrs, body)
        self.headers = hdrs
        seq = hdrs.get(H.SEQ, "")
        if seq != str(self._seq):
            raise BadUpstreamResponse(f"stream out of order: got seq {seq or 'none'}, expected {self._seq}")
        if not self._seq or is_stream_end(hdrs):
            self.format = hdrs.get(H.FORMAT, self.format)
        self._seq += 1
        if is_stream_end(hdrs):
            self.tail = body
            return None
        return body

    async def first_data(self) -> bytes | None:
        """A stream's first chunk as it came, past any keepalives (``None``: it ended with none);
        raises the error a stream that never began failed with."""
        while True:
            item = await self.next_data()
            if not isinstance(item, Keepalive):
                return item
