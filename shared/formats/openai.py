"""OpenAI Chat Completions (https://platform.openai.com/docs/api-reference/chat).

The internal contract (:mod:`shared.chat`) *is* this format, so translation is
a re-encode: towards OpenAI the upstream model is substituted and streamed
usage is always asked for; from OpenAI the body is decoded and validated, so a
malformed answer is caught at the boundary. The same functions serve an HTTP
ingress that accepts OpenAI's format (:func:`request_from_native`,
:func:`completion_to_native`, :func:`chunk_to_native`).

For that ingress the module also writes what goes back on the wire: the stream
as server-sent events (:func:`sse_chunk`, :data:`SSE_DONE`) and errors in
OpenAI's shape (:func:`error_to_native`, and :func:`sse_error` for a stream that
fails after it started). OpenAI documents the error object's fields (``message``,
``type``, ``param``, ``code``) but no closed list of types, and its SDKs choose the
exception class by HTTP status alone, so the body carries modelbus's own ``type``
and ``code`` (the OpenAI-style vocabulary of :mod:`shared.errors`, the same a
NATS client reads) and the status follows :func:`http_error_status`.
"""

from __future__ import annotations

import math

import msgspec

from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    StreamOptions,
    chunk_decoder,
    completion_decoder,
    decode_client_body,
    decode_request,
    encoder,
)
from shared.errors import ModelbusError

DONE = b"[DONE]"
"""The data of the server-sent event that ends a stream."""


class _MaybeError(msgspec.Struct):
    error: object | None = None


_maybe_error = msgspec.json.Decoder(_MaybeError)

# ---------------------------------------------------------------- internal -> native


def request_to_native(request: ChatCompletionRequest, model: str) -> bytes:
    """The request body for OpenAI, with ``model`` set; a stream always asks for usage
    (spans and budgets need it; the worker forwards the usage chunk only when the client asked)."""
    if request.stream:
        request = msgspec.structs.replace(request, model=model, stream_options=StreamOptions(include_usage=True))
    else:
        request = msgspec.structs.replace(request, model=model)
    return encoder.encode(request)


def completion_to_native(completion: ChatCompletion) -> bytes:
    """A completion as OpenAI's ``chat.completion`` body."""
    return encoder.encode(completion)


def chunk_to_native(chunk: ChatCompletionChunk) -> bytes:
    """A chunk as the data of one ``chat.completion.chunk`` event."""
    return encoder.encode(chunk)


# ---------------------------------------------------------------- native -> internal


def request_from_native(body: bytes) -> ChatCompletionRequest:
    """A client's OpenAI request body; raises :class:`shared.errors.InvalidRequest` naming the field."""
    return decode_request(body)


class _OwnBody(ChatCompletionRequest, forbid_unknown_fields=False, kw_only=True, frozen=True, omit_defaults=True):
    """A client's own body: the known fields checked, unknown ones ignored (they go on untouched)."""


_own_body_decoder = msgspec.json.Decoder(_OwnBody)


def request_view(body: bytes) -> ChatCompletionRequest:
    """A client's own Chat Completions body, to route and then send on as it came to an OpenAI-format
    upstream: every field modelbus knows is checked as :func:`request_from_native` checks it (a 400
    naming it), and a field it does not know is ignored here instead of refused. A body that must go
    to another API is translated with :func:`request_from_native`, which refuses unknown fields."""
    return decode_client_body(_own_body_decoder, body)


def completion_from_native(body: bytes) -> ChatCompletion:
    """An OpenAI ``chat.completion`` body; raises ``msgspec.MsgspecError`` when it is not one."""
    return completion_decoder.decode(body)


def chunk_from_native(data: bytes) -> ChatCompletionChunk:
    """The data of one stream event; raises ``msgspec.MsgspecError`` when it is not a chunk."""
    return chunk_decoder.decode(data)


def is_error_object(body: bytes) -> bool:
    """The body is an ``{"error": ...}`` object (some servers send one with a 200)."""
    try:
        return _maybe_error.decode(body).error is not None
    except msgspec.MsgspecError:
        return False


# ---------------------------------------------------------------- what an ingress writes back

SSE_DONE = b"data: " + DONE + b"\n\n"
"""The server-sent event that ends a successful stream (never sent after :func:`sse_error`)."""


class ErrorObject(msgspec.Struct, kw_only=True, frozen=True):
    """OpenAI's error object (https://platform.openai.com/docs/guides/error-codes); ``param``
    and ``code`` are sent as ``null`` when unset, as OpenAI does."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct, kw_only=True, frozen=True):
    """The body of an error answer, and the data of a stream's error event."""

    error: ErrorObject


def http_error_status(err: ModelbusError) -> int:
    """The HTTP status an ingress answers ``err`` with: its own status, except

    - 408 becomes 504: modelbus's 408 means the answer missed the caller's deadline, which
      HTTP calls a gateway timeout (HTTP's 408 says the client was too slow to send its
      request, and SDKs retry it);
    - a status outside 400-599 becomes 502: an upstream that failed with an odd status
      (``error_from_status`` keeps it) must not reach a client as a redirect or a success.

    Anthropic's ingress (:mod:`shared.formats.anthropic.errors`) uses the same rule.
    """
    status = err.http_status
    if status == 408:
        return 504
    if not 400 <= status <= 599:
        return 502
    return status


def http_error_headers(err: ModelbusError) -> dict[str, str]:
    """The response headers of an error answer (lower-case names; the request id is the edge's).

    - ``retry-after`` (whole seconds, rounded up: never tell a client to come back early)
      and ``retry-after-ms`` (exact) when ``err.retry_after`` is known; the OpenAI and
      Anthropic SDKs read ``retry-after-ms`` first and wait as told when it is 60 s or less;
    - ``x-should-retry``: ``err.retryable``. Both SDKs obey it over their own rule (retry
      408, 409, 429 and 5xx), so a client does not repeat what modelbus already knows is
      futile (a 502 for a malformed upstream answer, after the router's own failover) and
      does repeat what can succeed.
    """
    headers = {"x-should-retry": "true" if err.retryable else "false"}
    if err.retry_after is not None:
        seconds = max(0.0, err.retry_after)
        headers["retry-after"] = str(math.ceil(seconds))
        headers["retry-after-ms"] = str(round(seconds * 1000))
    return headers


def _error_response(err: ModelbusError) -> ErrorResponse:
    return ErrorResponse(error=ErrorObject(message=err.message, type=err.type, param=err.param, code=err.code))


def error_to_native(err: ModelbusError) -> tuple[int, dict[str, str], bytes]:
    """``err`` as an OpenAI error answer: status, headers and the ``{"error": {...}}`` body.

    The SDKs raise by status: 400 ``BadRequestError``, 401 ``AuthenticationError``, 403
    ``PermissionDeniedError``, 404 ``NotFoundError``, 409 ``ConflictError``, 422
    ``UnprocessableEntityError``, 429 ``RateLimitError``, 5xx ``InternalServerError``
    (413 is a plain ``APIStatusError``); the body's ``type``, ``code`` and ``param`` become
    the exception's attributes. ``retryable`` is not in the body (OpenAI's object has no
    such field): it travels as ``x-should-retry``.
    """
    return http_error_status(err), http_error_headers(err), encoder.encode(_error_response(err))


def sse_chunk(chunk: ChatCompletionChunk) -> bytes:
    """One chunk as a server-sent event: ``data: <chunk JSON>`` and a blank line."""
    return b"data: " + encoder.encode(chunk) + b"\n\n"


def sse_error(err: ModelbusError) -> bytes:
    """The event that ends a stream failing after it started: ``data: {"error": {...}}``.

    OpenAI streams report a late failure this way; the SDK's stream raises ``APIError``
    with the object's ``message``, ``type``, ``code`` and ``param`` when it reads a data
    line holding ``error``, so no ``[DONE]`` follows it.
    """
    return b"data: " + encoder.encode(_error_response(err)) + b"\n\n"
