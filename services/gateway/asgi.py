"""The few ASGI pieces the gateway needs, with no framework on the hot path.

A request is read once (its body up to the limit, its headers as a dict of the
lower-case names ASGI gives), answered with :func:`respond` or streamed with
:func:`start_stream` and :func:`write`; :func:`watch_disconnect` tells a stream
that its client went away. The modelbus headers are mapped here both ways:
``x-modelbus-*`` request headers to the NATS headers a router reads
(:mod:`shared.headers`), and a reply's headers back to ``x-modelbus-*`` and
``x-request-id`` response headers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from shared import headers as H
from shared.errors import InvalidRequest, PayloadTooLarge
from shared.replies import parse_timeout_ms

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = dict[bytes, bytes]
ResponseHeaders = list[tuple[bytes, bytes]]

JSON = (b"content-type", b"application/json")
EVENT_STREAM = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]

AGENT = b"x-modelbus-agent"
RUN_ID = b"x-modelbus-run-id"
SENSITIVITY = b"x-modelbus-sensitivity"
TIMEOUT_MS = b"x-modelbus-timeout-ms"
REQUEST_ID = b"x-request-id"
_FORWARDED: tuple[tuple[bytes, str], ...] = ((AGENT, H.AGENT), (RUN_ID, H.RUN_ID), (SENSITIVITY, H.SENSITIVITY))
"""HTTP request header → NATS header, passed on as given (the router checks the values)."""
_TRACE = (b"traceparent", b"tracestate", b"baggage")
_REPLIED: tuple[tuple[str, bytes], ...] = (
    (H.ENDPOINT, b"x-modelbus-endpoint"),
    (H.MODEL, b"x-modelbus-model"),
    (H.ATTEMPTS, b"x-modelbus-attempts"),
    (H.OVERHEAD_MS, b"modelbus-overhead-ms"),
)
"""Reply header → HTTP response header."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


def request_headers(scope: Scope) -> Headers:
    """The request's headers by lower-case name (a repeated header keeps its last value)."""
    return dict(scope["headers"])


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The whole request body; :class:`PayloadTooLarge` past ``limit`` bytes, told by
    ``content-length`` before anything is read when the client declared it."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {int(declared)} bytes; the limit is {limit}")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


async def respond(send: Send, status: int, headers: ResponseHeaders, body: bytes) -> None:
    """A whole response: status, headers (``content-length`` is added) and body."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def start_stream(send: Send, headers: ResponseHeaders, first: bytes) -> None:
    """Start a 200 event stream with its first bytes."""
    await send({"type": "http.response.start", "status": 200, "headers": EVENT_STREAM + headers})
    await send({"type": "http.response.body", "body": first, "more_body": True})


async def write(send: Send, data: bytes, *, last: bool = False) -> None:
    """More of a started stream; ``last`` ends the response."""
    await send({"type": "http.response.body", "body": data, "more_body": not last})


def watch_disconnect(receive: Receive) -> asyncio.Future[Any]:
    """A task that ends when the client disconnects (or the response is over); cancel it when done."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return asyncio.ensure_future(wait())


# ---------------------------------------------------------------- headers


def _ascii(headers: Headers, name: bytes) -> str | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        shown = name.decode()
        raise InvalidRequest(f"{shown}: must be ASCII", param=shown) from None


def request_id_of(headers: Headers) -> str:
    """The client's ``x-request-id`` when it is a plain token of up to 128 characters, else a new id."""
    raw = headers.get(REQUEST_ID)
    if raw is not None:
        text = raw.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return f"{_ID_PREFIX}{next(_ids):012x}"


_ID_PREFIX = os.urandom(10).hex()
"""80 random bits per process: ids of two gateway replicas never meet, and the counter after it
makes each of this process's ids unique (a tenth of uuid4's cost, measured: 0.2 against 2 us)."""
_ids = itertools.count(1)


def timeout_ms_of(headers: Headers, default_ms: int) -> int:
    """``x-modelbus-timeout-ms`` (the rules of ``Modelbus-Timeout-Ms``), or ``default_ms``."""
    raw = _ascii(headers, TIMEOUT_MS)
    try:
        value = parse_timeout_ms(raw)
    except InvalidRequest as exc:
        shown = TIMEOUT_MS.decode()
        raise InvalidRequest(exc.message.replace(H.TIMEOUT_MS, shown), param=shown) from None
    return default_ms if value is None else value


def nats_headers(headers: Headers, request_id: str, timeout_ms: int) -> dict[str, str]:
    """The NATS headers of a request, as a NATS client sets them (:class:`shared.client.ModelbusClient`)."""
    out = {H.REQUEST_ID: request_id, H.KEEPALIVE: "1", H.TIMEOUT_MS: str(timeout_ms)}
    for http_name, nats_name in _FORWARDED:
        value = _ascii(headers, http_name)
        if value is not None:
            out[nats_name] = value
    return out


def trace_headers(headers: Headers) -> dict[str, str]:
    """The client's W3C trace context, to continue its trace."""
    out: dict[str, str] = {}
    for name in _TRACE:
        raw = headers.get(name)
        if raw is not None:
            out[name.decode()] = raw.decode("latin-1")
    return out


def response_headers(reply: Mapping[str, str], request_id: str, *, anthropic: bool = False) -> ResponseHeaders:
    """``x-modelbus-endpoint``, ``-model``, ``-attempts`` from a reply, and the request id
    (``x-request-id``; Anthropic's clients read ``request-id``)."""
    out: ResponseHeaders = []
    for nats_name, http_name in _REPLIED:
        value = reply.get(nats_name)
        if value is not None:
            out.append((http_name, value.encode()))
    rid = (reply.get(H.REQUEST_ID) or request_id).encode()
    out.append((b"x-request-id", rid))
    if anthropic:
        out.append((b"request-id", rid))
    return out
