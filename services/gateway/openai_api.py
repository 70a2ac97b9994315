"""``POST /v1/chat/completions``: OpenAI's Chat Completions over HTTP, answered through the routers.

The body is checked with :func:`shared.formats.openai.request_from_native` (a 400
naming the field) and sent on NATS as it came: the internal contract *is* this
format. A non-streamed answer is OpenAI's ``chat.completion``, relayed as the
provider worker encoded it. A stream waits for
its first message before answering, so a stream that fails before its first
token (after the router's failover) is an HTTP error with its own status; once
it has begun, chunks are written as they arrive (``data: {chunk}``), then the
usage chunk when ``stream_options.include_usage`` asked for it, then
``data: [DONE]``; a failure after the start ends it with an error event
(:func:`~shared.formats.openai.sse_error`) and never with ``[DONE]``. While
modelbus is at work and sends nothing else, each NATS keepalive becomes an SSE
comment (``: keepalive``), which clients skip.
"""

from __future__ import annotations

import logging

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
from services.gateway.core import Core, bearer_key
from services.gateway.exchange import OPENAI, Answering
from services.gateway.upstream import Keepalive, Pending
from shared import headers as H
from shared.chat import ChatCompletionRequest
from shared.errors import ModelbusError
from shared.formats import openai
from shared.telemetry import record_error

log = logging.getLogger("modelbus.gateway")

SSE_KEEPALIVE = b": keepalive\n\n"
"""An SSE comment: keeps an idle connection open; every SSE client skips it."""
HOW = "Authorization: Bearer <key>"


async def chat_completions(core: Core, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
    """Answer one Chat Completions request, whatever happens."""
    async with Answering(OPENAI, "POST /v1/chat/completions", send, headers) as ex:
        grant = core.authorize(bearer_key(headers), HOW)
        ex.span.set_attribute("modelbus.key", grant.key)
        body = await read_body(receive, headers, core.max_body)
        request = openai.request_view(body)
        nats_hdrs, timeout_s = core.nats_headers(headers, ex.request_id, grant)
        nats_hdrs[H.FORMAT] = "openai"  # the client's own body: unknown fields go on to OpenAI-format upstreams
        pending = await ex.ask(core.upstream, body, nats_hdrs, timeout_s)
        if request.stream:
            await _stream(pending, request, send, receive, ex.request_id, ex.span)
            return
        # The worker's body is OpenAI's chat.completion already: relayed as it came, no re-encode.
        answer = await pending.completion_body()
        await respond(send, 200, [JSON, *response_headers(pending.headers, ex.request_id)], answer)


async def _stream(
    pending: Pending, request: ChatCompletionRequest, send: Send, receive: Receive, request_id: str, span: trace.Span
) -> None:
    """Relay a stream; errors before its first chunk propagate (an HTTP error), later ones end it.

    Chunks are OpenAI's ``chat.completion.chunk`` JSON already (the upstream's own from an
    OpenAI-format upstream, the worker's translation from any other), checked by the provider
    worker: each is written as it came, never decoded here."""
    first = await pending.first_data()
    headers = response_headers(pending.headers, request_id)
    if first is None:
        await start_stream(send, headers, _tail(pending, request))
        await write(send, b"", last=True)
        return
    await start_stream(send, headers, _event(first))
    gone = watch_disconnect(receive)
    try:
        while not gone.done():
            item = await pending.next_data()
            if item is None:
                await write(send, _tail(pending, request), last=True)
                return
            if isinstance(item, Keepalive):
                await write(send, SSE_KEEPALIVE)
                continue
            await write(send, _event(item))
    except ModelbusError as err:
        record_error(span, err, err.http_status)
        await write(send, openai.sse_error(err), last=True)
    except Exception as exc:
        log.exception("internal error in stream %s", request_id)
        record_error(span, exc, 500)
        await write(send, openai.sse_error(ModelbusError("internal gateway error")), last=True)
    finally:
        gone.cancel()


def _event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _tail(pending: Pending, request: ChatCompletionRequest) -> bytes:
    """A clean end: the usage chunk when the client asked for it, then ``[DONE]``."""
    if pending.tail and request.include_usage:
        return _event(pending.tail) + openai.SSE_DONE
    return openai.SSE_DONE
