"""OpenAI Chat Completions (https://platform.openai.com/docs/api-reference/chat).

The internal contract (:mod:`shared.chat`) *is* this format, so translation is
a re-encode: towards OpenAI the upstream model is substituted and streamed
usage is always asked for; from OpenAI the body is decoded and validated, so a
malformed answer is caught at the boundary. The same functions serve an HTTP
ingress that accepts OpenAI's format (:func:`request_from_native`,
:func:`completion_to_native`, :func:`chunk_to_native`).
"""

from __future__ import annotations

import msgspec

from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    StreamOptions,
    chunk_decoder,
    completion_decoder,
    decode_request,
    encoder,
)

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
