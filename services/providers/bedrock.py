"""AWS Bedrock Runtime: the Converse and ConverseStream APIs, signed with SigV4.

API: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
and https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html .
``POST {base}/model/{modelId}/converse`` (or ``/converse-stream``), where the
model id (``anthropic.claude-...-v1:0``, ``us.anthropic...`` inference
profiles, ARNs with ``/``) is percent-encoded as one path segment exactly as
botocore encodes it, and the signature covers exactly the URL sent.

Options (``endpoint.options``; strings are accepted for numbers):

============== ==============================================================
``region``     AWS region for the default URL and the signature; required
               unless ``base_url`` is an ``bedrock-runtime.<region>.amazonaws.com`` URL
``max_tokens`` ``inferenceConfig.maxTokens`` when the request sets no limit
               (default 1024, as Orloj)
``profile``    AWS profile for the default credential chain (no ``auth``)
============== ==============================================================

Credentials: the endpoint's secret (or a BYO call credential) is JSON
``{"access_key_id", "secret_access_key", "session_token"?}``; without one the
default AWS chain (environment, profile, SSO, container, instance metadata)
is resolved once, off the event loop, and cached. Requests are signed with
botocore's ``SigV4Auth`` for service ``bedrock``. Errors are scrubbed of the
access key id, the secret access key and the session token alike
(:mod:`services.providers.scrub`): the key id is not secret to AWS, but it names
the account and AWS error messages quote it.

Mapping, request: system and developer messages (wherever they appear) become
``system`` text blocks; consecutive turns of one role merge into one message,
so consecutive tool results become one user message with several
``toolResult`` blocks; images must be ``data:`` URIs (png, jpeg, gif, webp) and
become ``image.source.bytes``; assistant tool calls become ``toolUse`` blocks;
tools become ``toolConfig.tools[].toolSpec``; ``tool_choice`` auto/required/
function become ``auto``/``any``/``tool``, and ``none`` omits ``toolConfig``
(Bedrock then rejects a conversation that holds tool blocks: its own 400);
``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``
go to ``inferenceConfig``; ``metadata`` becomes ``requestMetadata``.

Dropped, by rule: ``seed`` (best effort in OpenAI's contract; Converse has
none), ``user``, ``store``, ``service_tier``, ``parallel_tool_calls``, message
``name``, image ``detail``, function ``strict``. Rejected with a 400 naming
the parameter: ``response_format`` other than ``text``, https image URLs,
``logprobs``/``top_logprobs``, ``logit_bias``, non-zero presence or frequency
penalties, ``reasoning_effort`` (model-specific on Bedrock).

Response: text blocks join into ``content``; ``toolUse`` blocks become tool
calls with JSON-string arguments; reasoning blocks are dropped. ``stopReason``
end_turn/stop_sequence -> stop, max_tokens/model_context_window_exceeded ->
length, tool_use -> tool_calls, guardrail_intervened/content_filtered ->
content_filter. Usage: ``prompt_tokens`` counts input, cache-read and
cache-write tokens (Bedrock reports them apart, OpenAI counts them in), and
``cacheReadInputTokens`` is ``prompt_tokens_details.cached_tokens``.

Streams are AWS event-stream binary frames (framing in
:mod:`services.providers.eventstream`); llm-katan sends the same events as
``data:`` lines and answers a streamed tool request with one JSON body, so
both are accepted too. An exception event mid-stream maps like an HTTP error
of the same type (throttlingException 429, modelStreamErrorException 502, ...).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar, Literal, assert_never

import httpx
import msgspec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError
from botocore.session import Session
from botocore.utils import percent_encode

from services.providers.base import EndpointConnection
from services.providers.eventstream import EventStreamError, aws_events
from services.providers.http import Answer, parse_retry_after, transport_error
from services.providers.images import parse_data_uri
from services.providers.response import UpstreamResponse
from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ContentPart,
    Delta,
    DeveloperMessage,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaResponseFormat,
    PromptTokensDetails,
    ResponseMessage,
    SystemMessage,
    TextFormat,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoiceFunction,
    ToolMessage,
    Usage,
    UserMessage,
)
from shared.errors import AuthFailed, BadUpstreamResponse, InvalidRequest, ProviderError, error_from_status

# botocore logs the canonical request, session token included, at DEBUG.
logging.getLogger("botocore.auth").setLevel(logging.INFO)

DEFAULT_MAX_TOKENS = 1024
SERVICE = "bedrock"
PROVIDER = "bedrock"
CHAIN_RETRY_S = 60.0
"""How long an empty default credential chain is remembered before it is looked up again."""

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_REGION = re.compile(r"^[a-z0-9-]+$")
_REGION_IN_HOST = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
_EXCEPTION_STATUS = {
    "throttlingexception": 429,
    "modelnotreadyexception": 429,
    "validationexception": 400,
    "accessdeniedexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
}
"""Statuses of errors that arrive inside a stream, from the ConverseStream docs; others are 502."""

# ---------------------------------------------------------------- Converse wire format


class _Empty(msgspec.Struct, frozen=True):
    """``{}``: the value of a tool-choice variant."""


class _ImageSource(msgspec.Struct, frozen=True):
    data: str = msgspec.field(name="bytes")
    """Base64 image bytes (JSON blobs are base64 in AWS REST-JSON)."""


class _Image(msgspec.Struct, frozen=True):
    format: str
    source: _ImageSource


class _ToolUse(msgspec.Struct, frozen=True, rename="camel"):
    tool_use_id: str
    name: str
    input: Any = None


class _ToolResult(msgspec.Struct, frozen=True, rename="camel"):
    tool_use_id: str
    content: list[_ContentBlock]


class _ContentBlock(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    """One content block; exactly one field is set (a union on the wire)."""

    text: str | None = None
    image: _Image | None = None
    tool_use: _ToolUse | None = None
    tool_result: _ToolResult | None = None


class _Message(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    content: list[_ContentBlock]


class _SystemBlock(msgspec.Struct, frozen=True):
    text: str


class _InferenceConfig(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None


class _InputSchema(msgspec.Struct, frozen=True):
    json: dict[str, Any]


class _ToolSpec(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    name: str
    input_schema: _InputSchema
    description: str | None = None


class _Tool(msgspec.Struct, frozen=True, rename="camel"):
    tool_spec: _ToolSpec


class _ToolName(msgspec.Struct, frozen=True):
    name: str


class _ToolChoice(msgspec.Struct, frozen=True, omit_defaults=True):
    auto: _Empty | None = None
    any_: _Empty | None = msgspec.field(default=None, name="any")
    tool: _ToolName | None = None


class _ToolConfig(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    tools: list[_Tool]
    tool_choice: _ToolChoice | None = None


class _ConverseRequest(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    messages: list[_Message]
    system: list[_SystemBlock] | None = None
    inference_config: _InferenceConfig | None = None
    tool_config: _ToolConfig | None = None
    request_metadata: dict[str, str] | None = None


class _TokenUsage(msgspec.Struct, frozen=True, rename="camel"):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0


class _OutputContent(msgspec.Struct, frozen=True, rename="camel"):
    """A response content block; reasoning and other block kinds are ignored."""

    text: str | None = None
    tool_use: _ToolUse | None = None


class _OutputMessage(msgspec.Struct, frozen=True):
    content: list[_OutputContent]
    role: str = "assistant"


class _Output(msgspec.Struct, frozen=True):
    message: _OutputMessage


class _ConverseResponse(msgspec.Struct, frozen=True, rename="camel"):
    output: _Output
    stop_reason: str
    usage: _TokenUsage | None = None


class _ErrorShape(msgspec.Struct, frozen=True):
    """AWS error bodies: ``{"message"}`` (sometimes ``Message``), maybe ``__type``."""

    message: str | None = None
    Message: str | None = None
    type: str | None = msgspec.field(default=None, name="__type")


# Stream events (ConverseStreamOutput members).


class _MessageStart(msgspec.Struct, frozen=True):
    role: str = "assistant"


class _ToolUseStart(msgspec.Struct, frozen=True, rename="camel"):
    tool_use_id: str
    name: str


class _BlockStart(msgspec.Struct, frozen=True, rename="camel"):
    tool_use: _ToolUseStart | None = None


class _ContentBlockStart(msgspec.Struct, frozen=True, rename="camel"):
    start: _BlockStart
    content_block_index: int = 0


class _ToolUseDelta(msgspec.Struct, frozen=True):
    input: str = ""


class _BlockDelta(msgspec.Struct, frozen=True, rename="camel"):
    text: str | None = None
    tool_use: _ToolUseDelta | None = None


class _ContentBlockDelta(msgspec.Struct, frozen=True, rename="camel"):
    delta: _BlockDelta
    content_block_index: int = 0


class _ContentBlockStop(msgspec.Struct, frozen=True, rename="camel"):
    content_block_index: int = 0


class _MessageStop(msgspec.Struct, frozen=True, rename="camel"):
    stop_reason: str


class _Metadata(msgspec.Struct, frozen=True):
    usage: _TokenUsage | None = None


_StreamEvent = _MessageStart | _ContentBlockStart | _ContentBlockDelta | _ContentBlockStop | _MessageStop | _Metadata

_EVENT_TYPES: dict[str, type[_StreamEvent]] = {
    "messageStart": _MessageStart,
    "contentBlockStart": _ContentBlockStart,
    "contentBlockDelta": _ContentBlockDelta,
    "contentBlockStop": _ContentBlockStop,
    "messageStop": _MessageStop,
    "metadata": _Metadata,
}
_event_decoders = {name: msgspec.json.Decoder(kind) for name, kind in _EVENT_TYPES.items()}
_response_decoder = msgspec.json.Decoder(_ConverseResponse)
_error_decoder = msgspec.json.Decoder(_ErrorShape)
_encoder = msgspec.json.Encoder()


class _AwsKeys(msgspec.Struct, frozen=True):
    """The endpoint secret's format (Orloj's)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


_keys_decoder = msgspec.json.Decoder(_AwsKeys)


class _StreamState:
    """What one stream's mapping remembers between events."""

    def __init__(self, completion_id: str, model: str) -> None:
        self.id = completion_id
        self.created = int(time.time())
        self.model = model
        self.tool_index: dict[int, int] = {}
        """contentBlockIndex of each tool-use block -> OpenAI tool-call index."""
        self.stopped = False

    def chunk(self, delta: Delta, finish_reason: FinishReason | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
        )


# ---------------------------------------------------------------- adapter


class BedrockAdapter:
    """AWS Bedrock Runtime Converse / ConverseStream."""

    gen_ai_provider: ClassVar[str] = "aws.bedrock"
    provider_type: ClassVar[str] = PROVIDER

    def __init__(self, connection: EndpointConnection) -> None:
        self.connection = connection
        self.endpoint = endpoint = connection.endpoint
        options = endpoint.options
        region = _str_option(options, "region")
        if region is not None and not _REGION.match(region):
            raise _config_error(endpoint.name, f"options.region {region!r} is not an AWS region name")
        base = endpoint.base_url or (f"https://bedrock-runtime.{region}.amazonaws.com" if region else None)
        if base is None:
            raise _config_error(endpoint.name, "bedrock needs options.region or a base_url")
        if region is None:
            found = _REGION_IN_HOST.search(base)
            if found is None:
                raise _config_error(endpoint.name, "options.region is required to sign for a custom base_url")
            region = found.group(1)
        self.region = region
        self.base = base.rstrip("/")
        self.max_tokens = _int_option(endpoint.name, options, "max_tokens", DEFAULT_MAX_TOKENS)
        self.profile = _str_option(options, "profile")
        self._chain: Any = None
        self._chain_checked = -CHAIN_RETRY_S
        self._chain_lock = asyncio.Lock()

    # ------------------------------------------------------------ request mapping

    def _url(self, model: str, operation: str) -> str:
        # One path segment: ':' and '/' are escaped, as botocore's serializer does.
        return f"{self.base}/model/{percent_encode(model)}/{operation}"

    def _map_request(self, request: ChatCompletionRequest) -> bytes:
        _check_supported(request)
        system, messages = _map_messages(request)
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        body = _ConverseRequest(
            messages=messages,
            system=system or None,
            inference_config=_InferenceConfig(
                max_tokens=request.output_token_limit or self.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop_sequences=stop or None,
            ),
            tool_config=_map_tools(request),
            request_metadata=request.metadata or None,
        )
        return _encoder.encode(body)

    async def _signed_headers(self, url: str, body: bytes, accept: str) -> dict[str, str]:
        credentials = await self._credentials()
        aws_request = AWSRequest(
            method="POST", url=url, data=body, headers={"content-type": "application/json", "accept": accept}
        )
        SigV4Auth(credentials, SERVICE, self.region).add_auth(aws_request)
        return {str(k): str(v) for k, v in aws_request.headers.items()}

    async def _credentials(self) -> Credentials:
        secret = await self.connection.credential()
        if secret is not None:
            try:
                keys = _keys_decoder.decode(secret)
            except msgspec.MsgspecError:
                raise AuthFailed(
                    f"{self.endpoint.name}: the bedrock credential must be JSON "
                    '{"access_key_id", "secret_access_key", "session_token"?}',
                    provider=PROVIDER,
                ) from None
            # The key id is not secret by AWS's definition, but it names the account and AWS
            # errors quote it ("The security token included in the request is invalid"): scrubbed too.
            self.connection.sent(keys.access_key_id, keys.secret_access_key, keys.session_token)
            return Credentials(keys.access_key_id, keys.secret_access_key, keys.session_token)
        return await self._chain_credentials()

    async def _chain_credentials(self) -> Credentials:
        """The default AWS chain, looked up off the event loop once and cached."""
        if self._chain is None and time.monotonic() - self._chain_checked >= CHAIN_RETRY_S:
            async with self._chain_lock:
                if self._chain is None and time.monotonic() - self._chain_checked >= CHAIN_RETRY_S:
                    self._chain_checked = time.monotonic()
                    try:
                        self._chain = await asyncio.to_thread(_resolve_chain, self.profile)
                    except BotoCoreError as exc:
                        raise AuthFailed(
                            f"{self.endpoint.name}: AWS credential chain failed ({type(exc).__name__})",
                            provider=PROVIDER,
                        ) from None
        chain = self._chain
        if chain is None:
            raise AuthFailed(
                f"{self.endpoint.name}: no auth set and no AWS credentials in the default chain", provider=PROVIDER
            )
        refresh_needed = getattr(chain, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            frozen = await asyncio.to_thread(chain.get_frozen_credentials)  # may call STS or IMDS
        else:
            frozen = chain.get_frozen_credentials()
        self.connection.sent(frozen.access_key, frozen.secret_key, frozen.token)
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    # ------------------------------------------------------------ response mapping

    def _map_response(self, body: bytes, model: str, completion_id: str) -> ChatCompletion:
        try:
            parsed = _response_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            raise self._bad_body(body, f"malformed Converse response: {exc}") from None
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in parsed.output.message.content:
            if block.text is not None:
                text.append(block.text)
            elif block.tool_use is not None:
                calls.append(
                    ToolCall(
                        id=block.tool_use.tool_use_id,
                        function=FunctionCall(name=block.tool_use.name, arguments=_arguments(block.tool_use.input)),
                    )
                )
        return ChatCompletion(
            id=completion_id,
            created=int(time.time()),
            model=model,
            choices=[
                Choice(
                    index=0,
                    message=ResponseMessage(content="".join(text) if text else None, tool_calls=calls or None),
                    finish_reason=_map_finish_reason(parsed.stop_reason),
                )
            ],
            usage=_map_usage(parsed.usage) if parsed.usage is not None else None,
        )

    def _map_stream_event(self, state: _StreamState, event: _StreamEvent) -> ChatCompletionChunk | None:
        match event:
            case _MessageStart():
                return state.chunk(Delta(role="assistant", content=""))
            case _ContentBlockStart():
                tool = event.start.tool_use
                if tool is None:
                    return None
                index = state.tool_index[event.content_block_index] = len(state.tool_index)
                call = ToolCallDelta(
                    index=index, id=tool.tool_use_id, type="function", function=FunctionCallDelta(name=tool.name)
                )
                return state.chunk(Delta(tool_calls=[call]))
            case _ContentBlockDelta(delta=_BlockDelta(text=str() as text)):
                return state.chunk(Delta(content=text))
            case _ContentBlockDelta(delta=_BlockDelta(tool_use=_ToolUseDelta() as fragment)):
                known = state.tool_index.get(event.content_block_index)
                if known is None:
                    raise BadUpstreamResponse(
                        f"{self.endpoint.name}: toolUse delta for block {event.content_block_index} that never started",
                        provider=PROVIDER,
                        model=state.model,
                    )
                delta = ToolCallDelta(index=known, function=FunctionCallDelta(arguments=fragment.input))
                return state.chunk(Delta(tool_calls=[delta]))
            case _ContentBlockDelta() | _ContentBlockStop():
                return None  # reasoning and other block kinds have no OpenAI form
            case _MessageStop():
                state.stopped = True
                return state.chunk(Delta(), _map_finish_reason(event.stop_reason))
            case _Metadata():
                if event.usage is None:
                    return None
                return ChatCompletionChunk(
                    id=state.id, created=state.created, model=state.model, choices=[], usage=_map_usage(event.usage)
                )
            case _:
                assert_never(event)

    def _bad_body(self, body: bytes, fallback: str) -> ProviderError:
        """A 200 answer that is an AWS error or not a valid answer is a 502."""
        try:
            shape = _error_decoder.decode(body)
        except msgspec.MsgspecError:
            shape = _ErrorShape()
        message = shape.message or shape.Message
        reason = f"upstream error in a 200 answer: {_short_type(shape.type)} {message}" if message else fallback
        return BadUpstreamResponse(f"{self.endpoint.name}: {reason}", provider=PROVIDER, model=None)

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        try:
            shape = _error_decoder.decode(body)
        except msgspec.MsgspecError:
            shape = _ErrorShape(message=body[:200].decode("utf-8", "replace").strip() or None)
        error_type = _short_type(response.headers.get("x-amzn-errortype") or shape.type)
        message = shape.message or shape.Message or f"HTTP {response.status_code}"
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

    def _map_stream_error(self, exception_type: str, message: str, model: str) -> ProviderError:
        """An exception inside a stream; its status comes from the ConverseStream docs."""
        status = _EXCEPTION_STATUS.get(exception_type.lower(), 502)
        return error_from_status(
            status,
            f"{PROVIDER} stream failed with {exception_type or 'an error'}: {message or 'no message'}",
            provider=PROVIDER,
            model=model,
        )

    # ------------------------------------------------------------ adapter API

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """POST ``/converse`` and map the answer."""
        body = self._map_request(request)
        url = self._url(model, "converse")
        headers = await self._signed_headers(url, body, "application/json")
        try:
            response = await self.connection.http.post(url, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=PROVIDER, model=model) from None
        if response.status_code != 200:
            raise self._map_error(response, response.content, model)
        return self._map_response(response.content, model, _completion_id(response))

    async def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """POST ``/converse-stream`` and map each event as its frame arrives."""
        body = self._map_request(request)
        url = self._url(model, "converse-stream")
        headers = await self._signed_headers(url, body, "application/vnd.amazon.eventstream")
        try:
            async with self.connection.http.stream(
                "POST", url, content=body, headers=headers, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise self._map_error(response, await response.aread(), model)
                state = _StreamState(_completion_id(response), model)
                if response.headers.get("content-type", "").startswith("application/json"):
                    completion = self._map_response(await response.aread(), model, state.id)
                    for replayed in _replay(completion):
                        yield replayed
                    return
                async for event in self._events(response, model):
                    chunk = self._map_stream_event(state, event)
                    if chunk is not None:
                        yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=PROVIDER, model=model) from None
        if not state.stopped:
            raise BadUpstreamResponse(
                f"{self.endpoint.name}: stream ended before messageStop", provider=PROVIDER, model=model
            )

    async def _events(self, response: UpstreamResponse, model: str) -> AsyncIterator[_StreamEvent]:
        """Decoded events as their frames (or llm-katan's lines) arrive; exceptions raised."""
        try:
            async for raw in aws_events(response.aiter_bytes()):
                if raw.kind == "exception":
                    raise self._map_stream_error(raw.name, _error_message(raw.payload), model)
                event = self._decode_event(raw.name, raw.payload)
                if event is not None:
                    yield event
        except EventStreamError as exc:
            raise BadUpstreamResponse(
                f"{self.endpoint.name}: broken event stream: {exc}", provider=PROVIDER, model=model
            ) from None
        except msgspec.MsgspecError as exc:
            raise BadUpstreamResponse(
                f"{self.endpoint.name}: malformed stream event: {exc}", provider=PROVIDER, model=model
            ) from None

    @staticmethod
    def _decode_event(name: str, payload: bytes) -> _StreamEvent | None:
        decoder = _event_decoders.get(name)
        if decoder is None:
            return None  # an event type newer than this adapter
        event: _StreamEvent = decoder.decode(payload)
        return event


# ---------------------------------------------------------------- mapping helpers


def _check_supported(request: ChatCompletionRequest) -> None:
    """Reject what Converse cannot honour, naming the parameter."""
    match request.response_format:
        case None | TextFormat():
            pass
        case JsonObjectFormat() | JsonSchemaResponseFormat():
            raise _unsupported("response_format", "Bedrock Converse has no JSON mode; use a tool with a schema")
        case _:
            assert_never(request.response_format)
    if request.logprobs or request.top_logprobs is not None:
        raise _unsupported("logprobs", "Bedrock Converse returns no log probabilities")
    if request.logit_bias:
        raise _unsupported("logit_bias", "Bedrock Converse has no logit bias")
    if request.presence_penalty:
        raise _unsupported("presence_penalty", "Bedrock Converse has no presence penalty")
    if request.frequency_penalty:
        raise _unsupported("frequency_penalty", "Bedrock Converse has no frequency penalty")
    if request.reasoning_effort is not None:
        raise _unsupported("reasoning_effort", "reasoning settings are model-specific on Bedrock")


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param} is not supported by the bedrock provider: {why}", param=param, code="unsupported_parameter"
    )


def _map_messages(request: ChatCompletionRequest) -> tuple[list[_SystemBlock], list[_Message]]:
    """System text hoisted to ``system``; turns of one role in a row merged into one message."""
    system: list[_SystemBlock] = []
    turns: list[_Message] = []

    def add(role: Literal["user", "assistant"], blocks: list[_ContentBlock]) -> None:
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(_Message(role=role, content=blocks))

    for i, message in enumerate(request.messages):
        match message:
            case SystemMessage() | DeveloperMessage():
                system.extend(_SystemBlock(text=text) for text in _texts(message.content))
            case UserMessage():
                add("user", _user_blocks(message.content, f"messages[{i}].content"))
            case AssistantMessage():
                add("assistant", _assistant_blocks(message, i))
            case ToolMessage():
                result = _ToolResult(
                    tool_use_id=message.tool_call_id,
                    content=[_ContentBlock(text=text) for text in _texts(message.content)],
                )
                add("user", [_ContentBlock(tool_result=result)])
            case _:
                assert_never(message)
    return system, turns


def _texts(content: str | list[TextPart]) -> list[str]:
    return [content] if isinstance(content, str) else [part.text for part in content]


def _user_blocks(content: str | list[ContentPart], param: str) -> list[_ContentBlock]:
    if isinstance(content, str):
        return [_ContentBlock(text=content)]
    blocks: list[_ContentBlock] = []
    for j, part in enumerate(content):
        match part:
            case TextPart():
                blocks.append(_ContentBlock(text=part.text))
            case ImagePart():
                blocks.append(_image_block(part.image_url.url, f"{param}[{j}].image_url.url"))
            case _:
                assert_never(part)
    return blocks


def _image_block(url: str, param: str) -> _ContentBlock:
    """A ``data:`` URI as image bytes; Converse cannot fetch URLs, so those are a 400."""
    parsed = parse_data_uri(url, param)
    if parsed is None:
        raise InvalidRequest(
            f"{param}: Bedrock Converse takes images as bytes only; send a base64 data: URI",
            param=param,
            code="unsupported_image_url",
        )
    mime, payload = parsed
    image_format = _IMAGE_FORMATS.get(mime)
    if image_format is None:
        raise InvalidRequest(
            f"{param}: image type {mime!r} is not supported by Bedrock (png, jpeg, gif, webp)",
            param=param,
            code="invalid_image",
        )
    return _ContentBlock(image=_Image(format=image_format, source=_ImageSource(data=payload)))


def _assistant_blocks(message: AssistantMessage, i: int) -> list[_ContentBlock]:
    blocks: list[_ContentBlock] = []
    if message.content is not None:
        blocks.extend(_ContentBlock(text=text) for text in _texts(message.content) if text or not message.tool_calls)
    elif message.refusal:
        blocks.append(_ContentBlock(text=message.refusal))
    for j, call in enumerate(message.tool_calls or []):
        try:
            arguments = msgspec.json.decode(call.function.arguments or "{}")
        except msgspec.DecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            raise InvalidRequest(f"{param}: must be a JSON object", param=param, code="invalid_tool_arguments")
        blocks.append(_ContentBlock(tool_use=_ToolUse(tool_use_id=call.id, name=call.function.name, input=arguments)))
    return blocks


def _map_tools(request: ChatCompletionRequest) -> _ToolConfig | None:
    if not request.tools:
        return None
    choice: _ToolChoice | None
    match request.tool_choice:
        case "none":
            return None  # Converse has no "none": offering no tools is the faithful equivalent
        case None:
            choice = None
        case "auto":
            choice = _ToolChoice(auto=_Empty())
        case "required":
            choice = _ToolChoice(any_=_Empty())
        case ToolChoiceFunction():
            choice = _ToolChoice(tool=_ToolName(name=request.tool_choice.function.name))
        case _:
            assert_never(request.tool_choice)
    tools = [
        _Tool(
            tool_spec=_ToolSpec(
                name=tool.function.name,
                description=tool.function.description,
                input_schema=_InputSchema(json=tool.function.parameters or {"type": "object", "properties": {}}),
            )
        )
        for tool in request.tools
    ]
    return _ToolConfig(tools=tools, tool_choice=choice)


def _map_finish_reason(stop_reason: str) -> FinishReason:
    match stop_reason:
        case "end_turn" | "stop_sequence":
            return "stop"
        case "max_tokens" | "model_context_window_exceeded":
            return "length"
        case "tool_use":
            return "tool_calls"
        case "guardrail_intervened" | "content_filtered":
            return "content_filter"
        case _:
            return "stop"  # a stop reason newer than this adapter: generation did end


def _map_usage(usage: _TokenUsage) -> Usage:
    cached = usage.cache_read_input_tokens
    prompt = usage.input_tokens + cached + usage.cache_write_input_tokens
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=usage.output_tokens,
        total_tokens=prompt + usage.output_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached) if cached else None,
    )


def _arguments(value: Any) -> str:
    return "{}" if value is None else _encoder.encode(value).decode()


def _replay(completion: ChatCompletion) -> Iterator[ChatCompletionChunk]:
    """A whole answer as the chunks a stream of it would have carried."""
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
    state = _StreamState(completion.id, completion.model)
    yield state.chunk(Delta(role="assistant", content=choice.message.content, tool_calls=calls or None))
    yield state.chunk(Delta(), choice.finish_reason)
    if completion.usage is not None:
        yield ChatCompletionChunk(
            id=completion.id, created=state.created, model=completion.model, choices=[], usage=completion.usage
        )


# ---------------------------------------------------------------- small helpers


def _completion_id(response: Answer) -> str:
    return f"chatcmpl-{response.headers.get('x-amzn-requestid') or uuid.uuid4().hex}"


def _error_message(payload: bytes) -> str:
    """``message`` of an AWS error payload, or ``""``."""
    try:
        shape = _error_decoder.decode(payload)
    except msgspec.MsgspecError:
        return ""
    return shape.message or shape.Message or ""


def _short_type(value: str | None) -> str:
    """``ThrottlingException:http://...`` or ``com.amazon...#ThrottlingException`` -> ``ThrottlingException``."""
    if not value:
        return ""
    return value.split(":", 1)[0].rsplit("#", 1)[-1]


def _resolve_chain(profile: str | None) -> Any:
    """Blocking: botocore's default credential chain (env, profile, SSO, container, IMDS)."""
    return Session(profile=profile).get_credentials()


def _str_option(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    return str(value) if value not in (None, "") else None


def _int_option(endpoint: str, options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise _config_error(endpoint, f"options.{key} must be a positive integer, got {value!r}")
    return number


def _config_error(endpoint: str, reason: str) -> BadUpstreamResponse:
    return BadUpstreamResponse(f"endpoint {endpoint!r}: {reason}", provider=PROVIDER, retryable=False)
