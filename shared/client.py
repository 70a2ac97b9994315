"""A Python client for the wire contract, used by the CLI, tests and benchmarks.

It is a thin layer over one nats-py connection: it sends a request on
:data:`shared.subjects.CHAT_COMPLETIONS`, turns error replies back into the
typed error tree, and reassembles streams while checking their order and that
they ended with an explicit terminator. Any language's NATS client can do the
same by following docs/contract.md.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from opentelemetry import trace

from shared import headers as H
from shared.bus import connect, retry_after_from
from shared.chat import ChatCompletion, ChatCompletionChunk, chunk_decoder, completion_decoder
from shared.errors import BadUpstreamResponse, DeadlineExceeded, ModelbusError, error_from_wire
from shared.subjects import CHAT_COMPLETIONS
from shared.telemetry import inject_headers, tracer

_encoder = msgspec.json.Encoder()
_tracer = tracer("modelbus.client")


class Reply(msgspec.Struct, frozen=True):
    """A raw reply: status, headers and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


class ModelbusClient:
    """Send chat completions through modelbus."""

    def __init__(self, nc: Client, *, subject: str = CHAT_COMPLETIONS) -> None:
        self.nc = nc
        self.subject = subject

    @classmethod
    async def connect(cls, url: str | None = None, **kwargs: Any) -> ModelbusClient:
        """Connect to NATS (``url``, then ``NATS_URL``) and return a client."""
        return cls(await connect("modelbus-client", url, **kwargs))

    async def close(self) -> None:
        """Drain and close the connection."""
        await self.nc.drain()

    @staticmethod
    def _body(request: Mapping[str, Any] | bytes | msgspec.Struct) -> bytes:
        if isinstance(request, bytes):
            return request
        return _encoder.encode(request)

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        hdrs = {H.REQUEST_ID: uuid.uuid4().hex}
        if extra:
            hdrs.update(extra)
        inject_headers(hdrs)
        return hdrs

    async def request_raw(
        self,
        request: Mapping[str, Any] | bytes | msgspec.Struct,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        """Send one non-streamed request and return the reply as it came."""
        with _tracer.start_as_current_span("chat.completions request"):
            hdrs = self._headers(headers)
            try:
                msg = await self.nc.request(self.subject, self._body(request), timeout=timeout, headers=hdrs)
            except nats.errors.TimeoutError as exc:
                raise DeadlineExceeded(f"no reply from modelbus within {timeout}s") from exc
        reply_headers = dict(msg.headers or {})
        return Reply(int(reply_headers.get(H.STATUS, "0") or 0), reply_headers, msg.data)

    async def complete(
        self,
        request: Mapping[str, Any] | bytes | msgspec.Struct,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[ChatCompletion, dict[str, str]]:
        """Send a request and return the completion and reply headers, or raise the typed error."""
        reply = await self.request_raw(request, headers=headers, timeout=timeout)
        if reply.status != 200:
            raise _error_of(reply.status, reply.headers, reply.body)
        try:
            return completion_decoder.decode(reply.body), reply.headers
        except msgspec.MsgspecError as exc:
            raise BadUpstreamResponse(f"modelbus sent an unreadable completion: {exc}") from exc

    async def stream(
        self,
        request: Mapping[str, Any] | bytes | msgspec.Struct,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        idle_timeout: float = 30.0,
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Stream a request (its body must set ``"stream": true``) chunk by chunk.

        Raises the typed error if the stream ends with an error terminator, and
        :class:`DeadlineExceeded` if it stalls or runs past ``timeout``: a
        stream is never taken as complete without its clean ``end`` message.
        """
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        # The span covers the whole stream but is current only around the
        # publish: an async generator must not leave context attached across yields.
        span = _tracer.start_span("chat.completions stream")
        try:
            with trace.use_span(span, end_on_exit=False):
                await self.nc.publish(self.subject, self._body(request), reply=inbox, headers=self._headers(headers))
            deadline = time.monotonic() + timeout
            expected_seq = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"stream did not finish within {timeout}s")
                try:
                    msg = await sub.next_msg(timeout=min(left, idle_timeout))
                except nats.errors.TimeoutError as exc:
                    raise DeadlineExceeded("stream stalled: no message from modelbus in time") from exc
                hdrs = dict(msg.headers or {})
                seq = int(hdrs.get(H.SEQ, "-1"))
                if seq != expected_seq:
                    raise BadUpstreamResponse(f"stream out of order: got seq {seq}, expected {expected_seq}")
                expected_seq += 1
                status = int(hdrs.get(H.STATUS, "200") or 0)
                if hdrs.get(H.STREAM) == H.STREAM_END:
                    if status != 200:
                        raise _error_of(status, hdrs, msg.data)
                    if msg.data:
                        yield chunk_decoder.decode(msg.data)
                    return
                if status != 200:
                    raise _error_of(status, hdrs, msg.data)
                yield chunk_decoder.decode(msg.data)
        except BaseException as exc:
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()
            await sub.unsubscribe()


def _error_of(status: int, headers: Mapping[str, str], body: bytes) -> ModelbusError:
    return error_from_wire(status, body, retry_after=retry_after_from(headers))
