"""One HTTP request's answer, whatever happens: what both API modules of the gateway share.

:class:`Answering` is the frame of every endpoint that talks to NATS: the
request id, the server span (continuing the client's trace), the pending NATS
request, and the rule that every request gets exactly one answer. An error
raised inside it is answered in the endpoint's own API shape (:data:`OPENAI`,
:data:`ANTHROPIC`): a :class:`~shared.errors.ModelbusError` as itself, anything
else as a logged 500 ``internal gateway error``; a client that went away gets
nothing; the pending request is closed in every case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.gateway.asgi import (
    JSON,
    ClientGone,
    Headers,
    Send,
    request_id_of,
    respond,
    response_headers,
    trace_headers,
)
from services.gateway.upstream import Pending
from shared.errors import ModelbusError
from shared.formats import anthropic, openai
from shared.telemetry import hot_span, record_error, tracer

log = logging.getLogger("modelbus.gateway")
_tracer = tracer("modelbus.gateway")

ErrorEncoder = Callable[[ModelbusError, str], tuple[int, Mapping[str, str], bytes]]


@dataclass(frozen=True, slots=True)
class Shape:
    """How one API answers errors: the body and headers of an error, and its response headers."""

    encode: ErrorEncoder
    """``(error, request id) -> (status, extra headers, body)``."""
    anthropic: bool
    """Anthropic's response headers too (``request-id``)."""


OPENAI = Shape(lambda err, request_id: openai.error_to_native(err), anthropic=False)
ANTHROPIC = Shape(lambda err, request_id: anthropic.error_to_native(err, request_id=request_id), anthropic=True)


async def send_error(
    shape: Shape,
    send: Send,
    err: ModelbusError,
    request_id: str,
    pending: Pending | None = None,
    *,
    status: int | None = None,
) -> None:
    """``err`` as ``shape``'s error answer, with the reply's modelbus headers when there was a reply."""
    native_status, extra, body = shape.encode(err, request_id)
    headers = [JSON, *((k.encode(), v.encode()) for k, v in extra.items())]
    reply = pending.headers if pending is not None else {}
    headers += response_headers(reply, request_id, anthropic=shape.anthropic)
    await respond(send, status or native_status, headers, body)


class Answering:
    """``async with Answering(OPENAI, "POST /v1/...", send, headers) as ex:`` around an endpoint's work.

    Set :attr:`pending` as soon as the request is on NATS, so that an error
    answer carries the reply's headers and the request is closed at the end.
    """

    __slots__ = ("_span_cm", "name", "parent", "pending", "request_id", "send", "shape", "span")

    def __init__(self, shape: Shape, name: str, send: Send, headers: Headers) -> None:
        self.shape = shape
        self.name = name
        self.send = send
        self.request_id = request_id_of(headers)
        self.parent = trace_headers(headers)
        self.pending: Pending | None = None
        self.span: trace.Span
        self._span_cm = hot_span(_tracer, name, kind=SpanKind.SERVER, parent_headers=self.parent)

    async def __aenter__(self) -> Answering:
        self.span = self._span_cm.__enter__()
        self.span.set_attribute("modelbus.request_id", self.request_id)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            if exc is None or isinstance(exc, ClientGone):
                return exc is not None
            if isinstance(exc, ModelbusError):
                record_error(self.span, exc, exc.http_status)
                await send_error(self.shape, self.send, exc, self.request_id, self.pending)
                return True
            if isinstance(exc, Exception):
                log.error("internal error on request %s", self.request_id, exc_info=exc)
                record_error(self.span, exc, 500)
                internal = ModelbusError("internal gateway error")
                await send_error(self.shape, self.send, internal, self.request_id, self.pending)
                return True
            return False  # cancellation and the like go on
        finally:
            if self.pending is not None:
                self.pending.close()
            self._span_cm.__exit__(None, None, None)
