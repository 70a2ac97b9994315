"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API over HTTP.

A Messages request goes on NATS as the client sent it, marked
``Modelbus-Format: anthropic``, after the fields routing needs are checked
(:func:`shared.formats.anthropic.view.request_view`). Routed to an ``anthropic``
endpoint it reaches Anthropic as it came, with only ``model`` set, and the
answer (or each event of a stream) comes back as Anthropic sent it. Routed to
any other API, the provider worker translates it
(:func:`shared.formats.anthropic.request_from_native`: what is dropped and what is
refused with a 400 is that module's rule), and the internal answer is turned
back here by :func:`~shared.formats.anthropic.completion_to_native`, or,
streamed, by a :class:`~shared.formats.anthropic.StreamWriter`:
``message_start``, ``ping``, the content blocks, ``message_delta`` with the stop
reason and usage, ``message_stop``. As on the OpenAI side, a stream that fails
before its first token is an HTTP error with its status, one that fails later
ends with an ``error`` event and no ``message_stop``, and a NATS keepalive
while nothing else is sent becomes a ``ping``.

The key is ``x-api-key`` or ``Authorization: Bearer``; ``anthropic-version``,
``anthropic-beta`` and the ``?beta=true`` query are accepted and ignored.
``count_tokens`` asks the routers (``Modelbus-Operation: count_tokens``) for the
provider's own count; where no target of the route counts, it answers modelbus's
estimate (:func:`shared.formats.anthropic.estimate_input_tokens`).
"""

from __future__ import annotations

import logging

import msgspec
from opentelemetry import trace

from services.gateway.asgi import (
    JSON,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    response_headers,
    start_stream,
    watch_disconnect,
    write,
)
from services.gateway.core import Core, anthropic_key
from services.gateway.exchange import ANTHROPIC, Answering
from services.gateway.upstream import Keepalive, Pending
from shared import headers as H
from shared.errors import BadUpstreamResponse, InvalidRequest, ModelbusError
from shared.formats import anthropic, openai
from shared.formats.anthropic.view import request_view
from shared.telemetry import record_error, tracer

log = logging.getLogger("modelbus.gateway")
_tracer = tracer("modelbus.gateway")

HOW = "x-api-key: <key> (or Authorization: Bearer <key>)"


async def messages(core: Core, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
    """Answer one Messages request, whatever happens."""
    async with Answering(ANTHROPIC, "POST /v1/messages", send, headers) as ex:
        grant = core.authorize(anthropic_key(headers), HOW)
        ex.span.set_attribute("modelbus.key", grant.key)
        body = await read_body(receive, headers, core.max_body)
        request = request_view(body)  # checks what routing needs; the body goes on as it came
        nats_hdrs, timeout_s = core.nats_headers(headers, ex.request_id, grant)
        nats_hdrs[H.FORMAT] = "anthropic"
        pending = await ex.ask(core.upstream, body, nats_hdrs, timeout_s)
        if request.stream:
            await _stream(pending, send, receive, ex.request_id, ex.span)
            return
        answer = await pending.completion_body()
        if pending.format != "anthropic":  # an upstream of another API: the internal answer, translated
            answer = _translated(answer)
        reply = response_headers(pending.headers, ex.request_id, anthropic=True)
        await respond(send, 200, [JSON, *reply], answer)


def _translated(body: bytes) -> bytes:
    try:
        return anthropic.completion_to_native(openai.completion_from_native(body))
    except msgspec.MsgspecError as exc:
        raise BadUpstreamResponse(f"modelbus sent an unreadable completion: {exc}") from None
    except anthropic.InvalidAnswer as exc:
        raise BadUpstreamResponse(f"the answer has no Messages form: {exc}") from None


async def _stream(pending: Pending, send: Send, receive: Receive, request_id: str, span: trace.Span) -> None:
    """Relay a stream as Anthropic's events; errors before its first chunk propagate, later ones end it.

    From an ``anthropic`` upstream the events are Anthropic's own (``Modelbus-Format`` on chunk 0),
    written as they came; from any other, internal chunks that a :class:`StreamWriter` turns into
    Anthropic's sequence."""
    first = await pending.first_data()
    if pending.format == "anthropic":
        await _relay(pending, first, send, receive, request_id, span)
        return
    writer = anthropic.StreamWriter()
    try:
        chunk = openai.chunk_from_native(first) if first is not None else None
        events = writer.events(chunk) if chunk is not None else writer.end()
    except (msgspec.MsgspecError, anthropic.InvalidAnswer) as exc:
        raise BadUpstreamResponse(f"the stream has no Messages form: {exc}") from None
    # message_start comes first; Anthropic sends a ping right after it.
    opening = anthropic.sse_event(events[0]) + anthropic.PING_EVENT + anthropic.sse_events(events[1:])
    await start_stream(send, response_headers(pending.headers, request_id, anthropic=True), opening)
    if first is None:
        await write(send, b"", last=True)
        return
    gone = watch_disconnect(receive)
    try:
        while not gone.done():
            item = await pending.next_chunk()
            if item is None:
                if pending.usage is not None:
                    writer.events(pending.usage)  # records the usage for message_delta
                await write(send, anthropic.sse_events(writer.end()), last=True)
                return
            if isinstance(item, Keepalive):
                await write(send, anthropic.PING_EVENT)
                continue
            events = writer.events(item)
            if events:
                await write(send, anthropic.sse_events(events))
    except Exception as exc:
        await _fail(send, exc, request_id, span)
    finally:
        gone.cancel()


async def _relay(
    pending: Pending, first: bytes | None, send: Send, receive: Receive, request_id: str, span: trace.Span
) -> None:
    """Anthropic's own events, each written as it came; a keepalive is a ``ping``."""
    await start_stream(send, response_headers(pending.headers, request_id, anthropic=True), first or b"")
    if first is None:
        await write(send, b"", last=True)
        return
    gone = watch_disconnect(receive)
    try:
        while not gone.done():
            item = await pending.next_data()
            if item is None:
                await write(send, b"", last=True)
                return
            await write(send, anthropic.PING_EVENT if isinstance(item, Keepalive) else item)
    except Exception as exc:
        await _fail(send, exc, request_id, span)
    finally:
        gone.cancel()


async def _fail(send: Send, exc: Exception, request_id: str, span: trace.Span) -> None:
    """End a stream that has begun with Anthropic's ``error`` event (never ``message_stop``)."""
    if isinstance(exc, ModelbusError):
        err = exc
    elif isinstance(exc, anthropic.InvalidAnswer):
        err = BadUpstreamResponse(f"the stream has no Messages form: {exc}")
    else:
        log.error("internal error in stream %s", request_id, exc_info=exc)
        err = ModelbusError("internal gateway error")
    record_error(span, err, err.http_status)
    await write(send, anthropic.error_event(err, request_id=request_id), last=True)


async def count_tokens(core: Core, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
    """``{"input_tokens": N}``: the provider's own count where the route has a target that counts
    (an ``anthropic`` endpoint), else modelbus's estimate; ``x-modelbus-token-count`` says which."""
    async with Answering(ANTHROPIC, "POST /v1/messages/count_tokens", send, headers) as ex:
        grant = core.authorize(anthropic_key(headers), HOW)
        body = await read_body(receive, headers, core.max_body)
        nats_hdrs, timeout_s = core.nats_headers(headers, ex.request_id, grant)
        nats_hdrs[H.FORMAT] = "anthropic"
        nats_hdrs[H.OPERATION] = H.COUNT_TOKENS
        pending = await ex.ask(core.upstream, body, nats_hdrs, timeout_s)
        try:
            answer, source = await pending.completion_body(), b"provider"
        except InvalidRequest as err:
            if err.code != "count_unsupported":
                raise
            request = anthropic.count_tokens_request_from_native(body)
            answer, source = anthropic.token_count_to_native(anthropic.estimate_input_tokens(request)), b"estimate"
        reply = response_headers(pending.headers, ex.request_id, anthropic=True)
        await respond(send, 200, [JSON, (b"x-modelbus-token-count", source), *reply], answer)
