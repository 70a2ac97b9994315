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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram

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
from services.gateway.upstream import Pending, Upstream
from shared import headers as H
from shared import metrics as M
from shared.errors import ModelbusError
from shared.formats import anthropic, openai
from shared.overhead import overhead_value
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
    started: float | None = None,
) -> None:
    """``err`` as ``shape``'s error answer, with the reply's modelbus headers when there was a reply
    (``Modelbus-Overhead-Ms``: the reply's, else the gateway's own time since ``started``, minus
    any wait on NATS)."""
    native_status, extra, body = shape.encode(err, request_id)
    headers = [JSON, *((k.encode(), v.encode()) for k, v in extra.items())]
    reply = pending.headers if pending is not None else {}
    headers += response_headers(reply, request_id, anthropic=shape.anthropic)
    if H.OVERHEAD_MS not in reply:
        if pending is not None:  # no answer from modelbus: what the gateway spent before sending
            headers.append((b"modelbus-overhead-ms", pending.sent_overhead.encode()))
        elif started is not None:
            own = time.perf_counter() - started
            headers.append((b"modelbus-overhead-ms", overhead_value(0.0, own).encode()))
    await respond(send, status or native_status, headers, body)


class Answering:
    """``async with Answering(OPENAI, "POST /v1/...", send, headers) as ex:`` around an endpoint's work.

    Set :attr:`pending` as soon as the request is on NATS, so that an error
    answer carries the reply's headers and the request is closed at the end.
    """

    __slots__ = ("_span_cm", "name", "parent", "pending", "request_id", "send", "shape", "span", "started")

    def __init__(self, shape: Shape, name: str, send: Send, headers: Headers) -> None:
        self.shape = shape
        self.name = name
        self.send = send
        self.request_id = request_id_of(headers)
        self.parent = trace_headers(headers)
        self.pending: Pending | None = None
        self.started = time.perf_counter()  # loop.time() may tick in whole milliseconds
        self.span: trace.Span
        self._span_cm = hot_span(_tracer, name, kind=SpanKind.SERVER, parent_headers=self.parent)

    async def ask(self, upstream: Upstream, body: bytes, headers: dict[str, str], timeout_s: float) -> Pending:
        """Send the request on NATS with the gateway's time so far (``Modelbus-Overhead-Ms``); its
        replies come through the returned :attr:`pending`."""
        headers[H.OVERHEAD_MS] = overhead_value(0.0, time.perf_counter() - self.started)
        self.pending = await upstream.send(body, headers, timeout_s)
        return self.pending

    async def __aenter__(self) -> Answering:
        self.span = self._span_cm.__enter__()
        self.span.set_attribute("modelbus.request_id", self.request_id)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        status = 200
        try:
            if exc is None or isinstance(exc, ClientGone):
                status = 200 if exc is None else 499
                return exc is not None
            if isinstance(exc, ModelbusError):
                status = exc.http_status
                record_error(self.span, exc, exc.http_status)
                await send_error(self.shape, self.send, exc, self.request_id, self.pending, started=self.started)
                return True
            if isinstance(exc, Exception):
                status = 500
                log.error("internal error on request %s", self.request_id, exc_info=exc)
                record_error(self.span, exc, 500)
                internal = ModelbusError("internal gateway error")
                await send_error(self.shape, self.send, internal, self.request_id, self.pending, started=self.started)
                return True
            status = 499
            return False  # cancellation and the like go on
        finally:
            if _HTTP is not None:
                _HTTP.observe(self.name, status, time.perf_counter() - self.started)
            if self.pending is not None:
                self.pending.close()
            self._span_cm.__exit__(None, None, None)


class _HttpMetrics:
    """HTTP requests by route and status, and their durations; children bound once per pair."""

    def __init__(self) -> None:
        self._bound: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        bound = self._bound.get((route, status))
        if bound is None:
            bound = self._bound[(route, status)] = (
                M.http_requests_total.labels(route, str(status)),
                M.http_request_duration.labels(route),
            )
        bound[0].inc()
        bound[1].observe(seconds)


_HTTP = _HttpMetrics() if M.metrics_enabled() else None
"""``None`` with MODELBUS_METRICS=off: no metric work at all."""
