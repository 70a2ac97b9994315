"""AWS Bedrock Runtime: the Converse and ConverseStream APIs, signed with SigV4.

API: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
and https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html .
``POST {base}/model/{modelId}/converse`` (or ``/converse-stream``), where the
model id (``anthropic.claude-...-v1:0``, ``us.anthropic...`` inference
profiles, ARNs with ``/``) is percent-encoded as one path segment exactly as
botocore encodes it, and the signature covers exactly the URL sent.

The connection (region, base URL, the credential chain and SigV4) is
:class:`~services.providers.bedrock_connection.BedrockConnection`; the
translation, both ways, is :mod:`shared.formats.bedrock`, whose docstring lists
every mapping rule. This module is the glue between them and the base
(:class:`~services.providers.adapter.HttpChatAdapter`).

Options (``endpoint.options``; strings are accepted for numbers): ``region`` and
``profile`` (see :mod:`services.providers.bedrock_connection`), and
``max_tokens``, the ``inferenceConfig.maxTokens`` of a request that sets no
limit (default 1024, as Orloj).

Streams are AWS event-stream binary frames (:mod:`services.providers.eventstream`).
An exception frame mid-stream maps like an HTTP error of the same type
(throttlingException 429, modelStreamErrorException 502, ...). Two answers
only llm-katan gives, never AWS, are accepted too: events as ``data:`` lines
(handled in :mod:`services.providers.eventstream`) and one JSON answer to a
streamed tool request (:meth:`BedrockAdapter._map_whole_stream`).

Errors: AWS's type (``x-amzn-errortype`` or ``__type``) and message are kept;
the status decides the class, except that 424 (ModelErrorException, the model
failed rather than the request) is a retryable 502.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import msgspec

from services.providers.adapter import Framing, HttpChatAdapter, StreamState, config_error
from services.providers.base import EndpointConnection
from services.providers.bedrock_connection import PROVIDER, BedrockConnection
from services.providers.framing import StreamEvent
from services.providers.http import Answer, parse_retry_after
from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ToolCallDelta,
)
from shared.errors import BadUpstreamResponse, ProviderError, error_from_status
from shared.formats import bedrock as native

DEFAULT_MAX_TOKENS = 1024
EVENT_STREAM = "application/vnd.amazon.eventstream"
"""The content type of a ConverseStream answer."""


class BedrockStreamState(StreamState):
    """The event decoder of one stream; it is done once ``messageStop`` and ``metadata`` arrived."""

    __slots__ = ("decoder",)

    def __init__(self, decoder: native.StreamDecoder) -> None:
        super().__init__()
        self.decoder = decoder


class BedrockAdapter(HttpChatAdapter[BedrockStreamState]):
    """AWS Bedrock Runtime Converse / ConverseStream."""

    gen_ai_provider: ClassVar[str] = "aws.bedrock"
    provider_type: ClassVar[str] = PROVIDER
    framing: ClassVar[Framing] = "aws-eventstream"
    stream_content_type: ClassVar[str | None] = EVENT_STREAM

    def __init__(self, connection: EndpointConnection) -> None:
        super().__init__(connection)
        self.aws = BedrockConnection(connection)
        self.max_tokens = _positive_int_option(
            self.endpoint.name, self.endpoint.options, "max_tokens", DEFAULT_MAX_TOKENS
        )

    @property
    def region(self) -> str:
        """The region requests are signed for."""
        return self.aws.region

    # ------------------------------------------------------------ hooks

    def _url(self, model: str, *, stream: bool) -> str:
        return self.aws.url(model, "converse-stream" if stream else "converse")

    async def _headers(self, url: str, body: bytes, *, stream: bool) -> dict[str, str]:
        return await self.aws.signed_headers(url, body, accept=EVENT_STREAM if stream else "application/json")

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        return native.request_to_native(request, default_max_tokens=self.max_tokens)

    def _map_response(self, response: Answer, body: bytes, model: str) -> ChatCompletion:
        try:
            return native.completion_from_native(body, completion_id=_completion_id(response), model=model)
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(body, f"malformed Converse response: {exc}", model) from None

    def _stream_state(self, response: Answer, model: str) -> BedrockStreamState:
        return BedrockStreamState(native.StreamDecoder(_completion_id(response), model))

    def _map_stream_event(
        self, event: StreamEvent, state: BedrockStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        if event.exception:
            raise self._map_stream_error(event.name, event.data, model)
        try:
            chunks = state.decoder.chunks(event.name, event.data)
        except (msgspec.MsgspecError, native.MalformedAnswer) as exc:
            raise self._bad(f"malformed stream event: {exc}", model) from None
        state.done = state.decoder.complete
        return chunks

    def _end_stream(self, state: BedrockStreamState, model: str) -> Iterable[ChatCompletionChunk]:
        if state.decoder.stopped:
            return ()  # metadata (usage) is the last event, but the answer is whole without it
        raise self._bad("stream ended before messageStop", model)

    def _map_whole_stream(
        self, response: Answer, body: bytes, state: BedrockStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        """llm-katan only, not an AWS behaviour: a streamed tool request answered with one JSON body.

        AWS always streams ConverseStream answers; llm-katan answers a stream request with tools
        as a Converse answer, replayed here as the chunks a stream of it would carry.
        """
        if not response.headers.get("content-type", "").startswith("application/json"):
            return super()._map_whole_stream(response, body, state, model)
        return _replay(self._map_response(response, body, model))

    # ------------------------------------------------------------ errors

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        found = native.error_from_native(body)
        if found is None:
            found = native.NativeError("", body[:200].decode("utf-8", "replace").strip() or None)
        error_type = native.short_type(response.headers.get("x-amzn-errortype")) or found.type
        message = found.message or f"HTTP {response.status_code}"
        # ModelErrorException / ModelStreamErrorException are 424: the model failed, not the request.
        status = 502 if response.status_code == 424 else response.status_code
        named = f"{response.status_code} {error_type}" if error_type else str(response.status_code)
        return error_from_status(
            status,
            f"{PROVIDER} returned {named}: {message}",
            provider=PROVIDER,
            model=model,
            retry_after=parse_retry_after(response.headers),
        )

    def _map_stream_error(self, exception_type: str, payload: bytes, model: str) -> ProviderError:
        """An exception inside a stream; its status comes from the ConverseStream reference."""
        found = native.error_from_native(payload)
        message = (found.message if found is not None else None) or "no message"
        return error_from_status(
            native.exception_status(exception_type),
            f"{PROVIDER} stream failed with {exception_type or 'an error'}: {message}",
            provider=PROVIDER,
            model=model,
        )

    def _bad_answer(self, body: bytes, fallback: str, model: str) -> BadUpstreamResponse:
        """A 200 answer that is an AWS error or not a valid answer is a 502."""
        found = native.error_from_native(body)
        if found is not None and found.message:
            return self._bad(f"upstream error in a 200 answer: {found.type} {found.message}", model)
        return self._bad(fallback, model)


# ---------------------------------------------------------------- helpers


def _completion_id(response: Answer) -> str:
    return f"chatcmpl-{response.headers.get('x-amzn-requestid') or uuid.uuid4().hex}"


def _replay(completion: ChatCompletion) -> Iterator[ChatCompletionChunk]:
    """A whole answer as the chunks a stream of it would have carried (llm-katan only, see above)."""
    choice = completion.choices[0]
    calls = [
        ToolCallDelta(
            index=i,
            id=call.id,
            type="function",
            function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
        )
        for i, call in enumerate(choice.message.tool_calls or [])
    ]
    opening = Delta(role="assistant", content=choice.message.content, tool_calls=calls or None)
    for delta, finish in ((opening, None), (Delta(), choice.finish_reason)):
        yield ChatCompletionChunk(
            id=completion.id,
            created=completion.created,
            model=completion.model,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
        )
    if completion.usage is not None:
        yield ChatCompletionChunk(
            id=completion.id, created=completion.created, model=completion.model, choices=[], usage=completion.usage
        )


def _positive_int_option(endpoint: str, options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise config_error(endpoint, f"options.{key}", f"must be a positive integer, got {value!r}")
    return number
