"""Anthropic Messages API (``POST {base_url}/messages``).

API: https://docs.anthropic.com/en/api/messages ; streaming events:
https://docs.anthropic.com/en/docs/build-with-claude/streaming .

Request (OpenAI → Anthropic)
============================

=============================== ================================================================
``system`` / ``developer``      top-level ``system`` text blocks, in order, wherever they appear
``user``                        ``user`` turn of ``text`` and ``image`` blocks
image ``data:`` URI             ``image`` block, ``base64`` source (jpeg, png, gif, webp only)
image ``https://`` URL          ``image`` block, ``url`` source (Anthropic fetches it)
``assistant``                   ``assistant`` turn: ``text`` (or ``refusal``), one ``tool_use`` per call
``tool``                        ``tool_result`` block in a ``user`` turn
consecutive same-role turns     merged into one turn (several tool results go back together)
``tools``                       ``tools`` (``parameters`` → ``input_schema``, ``strict`` kept)
``tool_choice``                 none/auto/required/named → ``{type: none|auto|any|tool}``
``parallel_tool_calls: false``  ``tool_choice.disable_parallel_tool_use: true``
``stop``                        ``stop_sequences``
``max_completion_tokens``       ``max_tokens`` (else option ``max_tokens``, else 4096)
``temperature`` / ``top_p``     as is; ``temperature`` above 1 is rejected (Anthropic's range is 0-1)
``response_format`` json_schema ``output_config.format`` ``{type: json_schema, schema}``
``user``                        ``metadata.user_id``
=============================== ================================================================

Dropped, because they change nothing a caller can rely on: ``seed`` (Anthropic has
no seeded sampling), ``n`` (always 1), ``metadata``, ``store`` and ``service_tier``
(OpenAI account features), message ``name`` and image ``detail``, penalties and
``logit_bias`` when zero/empty, ``logprobs: false``, ``top_logprobs: 0``.

Rejected with a 400 naming the parameter: ``response_format: json_object`` (Anthropic
has no schema-less JSON mode; send ``json_schema``), ``reasoning_effort`` (extended
thinking returns blocks the OpenAI shape cannot carry back), non-zero penalties,
a non-empty ``logit_bias``, ``logprobs: true``, ``top_logprobs`` above 0,
``temperature`` above 1, images that are neither ``data:`` nor ``https://``,
tool-call ``arguments`` that are not a JSON object, and ``tool_choice``
``required``/named without ``tools``.

Response (Anthropic → OpenAI): ``text`` blocks join into ``content``; ``tool_use``
blocks become ``tool_calls`` with ``input`` as the JSON ``arguments`` string;
thinking and other block types are left out. ``stop_reason`` end_turn,
stop_sequence, pause_turn → ``stop``; max_tokens, model_context_window_exceeded
→ ``length``; tool_use → ``tool_calls``; refusal → ``content_filter``. Usage:
``prompt_tokens`` = input + cache_creation_input + cache_read_input tokens (all
are prompt tokens; Anthropic's ``input_tokens`` excludes both cache counts),
``cached_tokens`` = cache_read_input_tokens; ``completion_tokens`` = output tokens.

Errors: HTTP status through the shared mapping, 529 (overloaded) as a retryable
503; an ``error`` event mid-stream maps by its ``error.type`` the same way.

Endpoint options
================

===================== ============== ==================================================
option                default        effect
===================== ============== ==================================================
``anthropic_version`` ``2023-06-01`` ``anthropic-version`` header
``max_tokens``        ``4096``       ``max_tokens`` when the request sets no limit
                                     (a string such as ``"1024"`` or a number)
``anthropic_beta``    (none)         ``anthropic-beta`` header: comma-separated names
                                     (a string, or a list joined with commas)
===================== ============== ==================================================
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal, assert_never

import httpx
import msgspec

from services.providers.base import EndpointConnection
from services.providers.http import Answer, parse_retry_after, transport_error, upstream_message
from services.providers.images import parse_data_uri
from services.providers.sse import Event, sse_events
from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    DeveloperMessage,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaResponseFormat,
    Message,
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
from shared.errors import BadUpstreamResponse, ConfigError, InvalidRequest, ProviderError, error_from_status

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
"""Media types Anthropic accepts in a ``base64`` image source."""

# ---------------------------------------------------------------- native request


class _Text(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class _Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class _UrlSource(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class _Image(msgspec.Struct, tag="image", tag_field="type"):
    source: _Base64Source | _UrlSource


class _ToolUse(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class _ToolResult(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[_Text]


_Block = _Text | _Image | _ToolUse | _ToolResult


class _Turn(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: list[_Block]


class _Tool(msgspec.Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class _ToolChoice(msgspec.Struct, omit_defaults=True):
    type: Literal["none", "auto", "any", "tool"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Metadata(msgspec.Struct):
    user_id: str


class _OutputFormat(msgspec.Struct):
    schema: dict[str, Any]
    type: Literal["json_schema"] = "json_schema"


class _OutputConfig(msgspec.Struct):
    format: _OutputFormat


class _MessagesRequest(msgspec.Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[_Turn]
    system: list[_Text] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    metadata: _Metadata | None = None
    output_config: _OutputConfig | None = None
    stream: bool = False


# ---------------------------------------------------------------- native response and stream


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _ContentBlock(msgspec.Struct):
    """Any content block; types modelbus does not map (thinking, ...) are skipped."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))


class _NativeMessage(msgspec.Struct):
    id: str
    model: str
    content: list[_ContentBlock]
    type: Literal["message"]
    stop_reason: str | None = None
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _MaybeError(msgspec.Struct):
    error: _ErrorDetail | None = None


class _BlockDeltaBody(msgspec.Struct):
    type: str
    text: str | None = None
    partial_json: str | None = None


class _MessageDeltaBody(msgspec.Struct):
    stop_reason: str | None = None


class _MessageStart(msgspec.Struct, tag="message_start", tag_field="type"):
    message: _NativeMessage


class _BlockStart(msgspec.Struct, tag="content_block_start", tag_field="type"):
    index: int
    content_block: _ContentBlock


class _BlockDelta(msgspec.Struct, tag="content_block_delta", tag_field="type"):
    index: int
    delta: _BlockDeltaBody


class _BlockStop(msgspec.Struct, tag="content_block_stop", tag_field="type"):
    index: int


class _MessageDelta(msgspec.Struct, tag="message_delta", tag_field="type"):
    delta: _MessageDeltaBody
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _MessageStop(msgspec.Struct, tag="message_stop", tag_field="type"):
    pass


class _Ping(msgspec.Struct, tag="ping", tag_field="type"):
    pass


class _StreamError(msgspec.Struct, tag="error", tag_field="type"):
    error: _ErrorDetail


_StreamEvent = (
    _MessageStart | _BlockStart | _BlockDelta | _BlockStop | _MessageDelta | _MessageStop | _Ping | _StreamError
)
_STREAM_EVENTS = frozenset(
    {"message_start", "content_block_start", "content_block_delta", "content_block_stop"}
    | {"message_delta", "message_stop", "ping", "error"}
)

_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(_NativeMessage)
_event_decoder = msgspec.json.Decoder(_StreamEvent)
_maybe_error = msgspec.json.Decoder(_MaybeError)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # only with server tools, which modelbus never sends
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# https://docs.anthropic.com/en/api/errors ; used for ``error`` events, which carry no HTTP status.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class _StreamState:
    """What a stream has said so far: ids, tool-call numbering, usage, finish."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.started = False
        self.stopped = False
        self.finish_reason: FinishReason | None = None
        self.usage = _Usage()
        self.tools: dict[int, int] = {}
        """Content-block index → OpenAI tool-call index."""
        self.tools_with_arguments: set[int] = set()

    def chunk(self, delta: Delta, finish_reason: FinishReason | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

    def tool_delta(self, block: int, function: FunctionCallDelta, *, id: str | None = None) -> ChatCompletionChunk:
        call = ToolCallDelta(index=self.tools[block], id=id, type="function" if id else None, function=function)
        return self.chunk(Delta(tool_calls=[call]))


class AnthropicAdapter:
    """Anthropic's Messages API at ``{base_url}/messages`` with ``x-api-key`` auth."""

    gen_ai_provider: ClassVar[str] = "anthropic"
    provider_type: ClassVar[str] = "anthropic"

    def __init__(self, connection: EndpointConnection) -> None:
        self.connection = connection
        self.endpoint = connection.endpoint
        base = self.endpoint.base_url or DEFAULT_BASE_URL
        self.url = f"{base.rstrip('/')}/messages"
        options = self.endpoint.options
        self.default_max_tokens = _positive_int(self.endpoint.name, options, "max_tokens", DEFAULT_MAX_TOKENS)
        self._static_headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": str(options.get("anthropic_version") or DEFAULT_VERSION),
        }
        beta = options.get("anthropic_beta")
        if beta:
            self._static_headers["anthropic-beta"] = ",".join(beta) if isinstance(beta, list) else str(beta)

    # ------------------------------------------------------------ request mapping

    async def _headers(self) -> dict[str, str]:
        headers = dict(self._static_headers)
        key = await self.connection.credential()
        if key:
            headers["x-api-key"] = key
        return headers

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        _reject_unsupported(request)
        system, turns = _map_messages(request.messages)
        tools, tool_choice = _map_tools(request)
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        native = _MessagesRequest(
            model=model,
            max_tokens=request.output_token_limit or self.default_max_tokens,
            messages=turns,
            system=system or None,
            stop_sequences=stop or None,
            temperature=request.temperature,
            top_p=request.top_p,
            tools=tools,
            tool_choice=tool_choice,
            metadata=_Metadata(user_id=request.user) if request.user else None,
            output_config=_map_response_format(request),
            stream=request.stream,
        )
        return _encoder.encode(native)

    # ------------------------------------------------------------ response mapping

    def _map_response(self, body: bytes) -> ChatCompletion:
        try:
            native = _message_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(body, f"malformed message: {exc}") from exc
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in native.content:
            if block.type == "text":
                text.append(block.text or "")
            elif block.type == "tool_use":
                arguments = FunctionCall(name=block.name or "", arguments=bytes(block.input).decode())
                calls.append(ToolCall(id=block.id or "", function=arguments))
        message = ResponseMessage(content="".join(text) if text or not calls else None, tool_calls=calls or None)
        return ChatCompletion(
            id=native.id,
            created=int(time.time()),
            model=native.model,
            choices=[Choice(index=0, message=message, finish_reason=_map_finish_reason(native.stop_reason))],
            usage=_map_usage(native.usage),
        )

    def _map_stream_event(self, event: Event, state: _StreamState, model: str) -> ChatCompletionChunk | None:
        """One native event to at most one chunk; ``state`` carries what earlier events said."""
        if event.event not in _STREAM_EVENTS:
            return None  # Anthropic may add event types; unknown ones are to be ignored
        try:
            native = _event_decoder.decode(event.data)
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(event.data.encode(), f"malformed {event.event} event: {exc}") from exc
        if not state.started and not isinstance(native, _MessageStart | _Ping | _StreamError):
            raise BadUpstreamResponse(
                f"{self.endpoint.name}: {event.event} event before message_start",
                provider=self.provider_type,
                model=model,
            )
        match native:
            case _MessageStart(message=message):
                state.started = True
                state.id, state.model, state.usage = message.id, message.model, message.usage
                return state.chunk(Delta(role="assistant", content=""))
            case _BlockStart(index=index, content_block=block):
                if block.type == "tool_use":
                    state.tools[index] = len(state.tools)
                    return state.tool_delta(index, FunctionCallDelta(name=block.name, arguments=""), id=block.id)
                if block.type == "text" and block.text:
                    return state.chunk(Delta(content=block.text))
                return None
            case _BlockDelta(index=index, delta=delta):
                if delta.type == "text_delta" and delta.text:
                    return state.chunk(Delta(content=delta.text))
                if delta.type == "input_json_delta" and delta.partial_json and index in state.tools:
                    state.tools_with_arguments.add(index)
                    return state.tool_delta(index, FunctionCallDelta(arguments=delta.partial_json))
                return None  # thinking, signature and citations deltas have no OpenAI counterpart
            case _BlockStop(index=index):
                if index in state.tools and index not in state.tools_with_arguments:
                    # A call without arguments still needs a JSON object, as in a non-streamed answer.
                    return state.tool_delta(index, FunctionCallDelta(arguments="{}"))
                return None
            case _MessageDelta(delta=delta, usage=usage):
                # message_delta usage is cumulative and may restate input counts.
                state.usage = _merge_usage(state.usage, usage)
                state.finish_reason = _map_finish_reason(delta.stop_reason)
                return state.chunk(Delta(), state.finish_reason)
            case _MessageStop():
                state.stopped = True
                return self._usage_chunk(state)
            case _Ping():
                return None
            case _StreamError(error=error):
                status = _ERROR_STATUS.get(error.type, 500)
                raise self._map_error(status, f"{error.type}: {error.message} (mid-stream)", model, None)
            case _:
                assert_never(native)

    @staticmethod
    def _usage_chunk(state: _StreamState) -> ChatCompletionChunk:
        usage = _map_usage(state.usage)
        return ChatCompletionChunk(id=state.id, created=state.created, model=state.model, choices=[], usage=usage)

    # ------------------------------------------------------------ errors

    def _map_error(self, status: int, message: str, model: str, retry_after: float | None) -> ProviderError:
        """Shared status mapping; 529 is Anthropic's "overloaded", a retryable 503."""
        return error_from_status(
            503 if status == 529 else status,
            f"{self.provider_type} returned {status}: {message}",
            provider=self.provider_type,
            model=model,
            retry_after=retry_after,
        )

    def _map_http_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        status = response.status_code
        return self._map_error(status, upstream_message(body, status), model, parse_retry_after(response.headers))

    def _bad_answer(self, body: bytes, fallback: str) -> ProviderError:
        """A 200 that carries an error object or no valid answer is a 502."""
        try:
            error = _maybe_error.decode(body).error
        except msgspec.MsgspecError:
            error = None
        reason = f"upstream error in a 200 answer: {error.type}: {error.message}" if error else fallback
        return BadUpstreamResponse(f"{self.endpoint.name}: {reason}", provider=self.provider_type)

    # ------------------------------------------------------------ adapter API

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """POST the mapped request and map the message back."""
        body = self._map_request(request, model)
        headers = await self._headers()
        try:
            response = await self.connection.http.post(self.url, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        if response.status_code != 200:
            raise self._map_http_error(response, response.content, model)
        return self._map_response(response.content)

    async def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Map SSE events to chunks as they arrive; the usage chunk comes with ``message_stop``."""
        body = self._map_request(request, model)
        headers = await self._headers()
        headers["accept"] = "text/event-stream"
        state = _StreamState()
        try:
            async with self.connection.http.stream(
                "POST", self.url, content=body, headers=headers, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise self._map_http_error(response, await response.aread(), model)
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    raise self._bad_answer(await response.aread(), f"expected an event stream, got {content_type!r}")
                async for event in sse_events(response):
                    chunk = self._map_stream_event(event, state, model)
                    if chunk is not None:
                        yield chunk
                    if state.stopped:
                        return
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        if state.finish_reason is not None:  # complete answer, only message_stop missing
            yield self._usage_chunk(state)
            return
        raise BadUpstreamResponse(
            f"{self.endpoint.name}: stream ended before message_stop", provider=self.provider_type, model=model
        )


# ---------------------------------------------------------------- request helpers


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {why}", code="unsupported_parameter", param=param)


def _reject_unsupported(request: ChatCompletionRequest) -> None:
    """Parameters Anthropic cannot honour, when setting them would change the answer."""
    if request.temperature is not None and request.temperature > 1:
        raise _unsupported("temperature", "Anthropic accepts 0 to 1")
    if request.reasoning_effort is not None:
        raise _unsupported("reasoning_effort", "not supported by the anthropic adapter")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise _unsupported(name, "Anthropic has no penalties; omit it or send 0")
    if request.logit_bias:
        raise _unsupported("logit_bias", "Anthropic has no logit bias")
    if request.logprobs or request.top_logprobs:
        raise _unsupported("logprobs" if request.logprobs else "top_logprobs", "Anthropic returns no log probabilities")


def _map_messages(messages: list[Message]) -> tuple[list[_Text], list[_Turn]]:
    """System text (hoisted, in order) and alternating user/assistant turns."""
    system: list[_Text] = []
    turns: list[_Turn] = []

    def add(role: Literal["user", "assistant"], blocks: list[_Block]) -> None:
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(_Turn(role=role, content=blocks))

    for i, message in enumerate(messages):
        match message:
            case SystemMessage(content=content) | DeveloperMessage(content=content):
                system.extend(t for t in _texts(content) if t.text)  # Anthropic rejects empty text blocks
            case UserMessage(content=content):
                if isinstance(content, str):
                    add("user", [_Text(text=content)])
                else:
                    add("user", [_map_part(part, f"messages[{i}].content[{j}]") for j, part in enumerate(content)])
            case AssistantMessage():
                add("assistant", _assistant_blocks(message, i))
            case ToolMessage(content=content, tool_call_id=call_id):
                result = content if isinstance(content, str) else [_Text(text=p.text) for p in content]
                add("user", [_ToolResult(tool_use_id=call_id, content=result)])
            case _:
                assert_never(message)
    return system, turns


def _texts(content: str | list[TextPart]) -> list[_Text]:
    return [_Text(text=content)] if isinstance(content, str) else [_Text(text=p.text) for p in content]


def _map_part(part: TextPart | ImagePart, where: str) -> _Block:
    match part:
        case TextPart(text=text):
            return _Text(text=text)
        case ImagePart(image_url=image):
            return _Image(source=_image_source(image.url, f"{where}.image_url.url"))
        case _:
            assert_never(part)


def _image_source(url: str, where: str) -> _Base64Source | _UrlSource:
    if url.startswith("https://"):
        return _UrlSource(url=url)
    parsed = parse_data_uri(url, where)
    if parsed is None:
        raise InvalidRequest(f"{where}: Anthropic takes images as data: URIs or https:// URLs", param=where)
    media_type, data = parsed
    if media_type not in IMAGE_TYPES:
        raise InvalidRequest(
            f"{where}: Anthropic takes {', '.join(sorted(IMAGE_TYPES))}, not {media_type!r}", param=where
        )
    return _Base64Source(media_type=media_type, data=data)


def _assistant_blocks(message: AssistantMessage, i: int) -> list[_Block]:
    content = message.content if message.content is not None else message.refusal
    # Anthropic rejects empty text blocks, which tool-calling turns often carry.
    blocks: list[_Block] = [t for t in _texts(content) if t.text] if content else []
    for j, call in enumerate(message.tool_calls or []):
        where = f"messages[{i}].tool_calls[{j}].function.arguments"
        try:
            arguments = msgspec.json.decode(call.function.arguments or "{}")
        except msgspec.DecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{where}: must be a JSON object", param=where)
        blocks.append(_ToolUse(id=call.id, name=call.function.name, input=arguments))
    return blocks


def _map_tools(request: ChatCompletionRequest) -> tuple[list[_Tool] | None, _ToolChoice | None]:
    tools = [
        _Tool(
            name=t.function.name,
            description=t.function.description,
            input_schema=t.function.parameters or {"type": "object", "properties": {}},
            strict=t.function.strict or None,
        )
        for t in request.tools or []
    ]
    choice = request.tool_choice
    if not tools:
        if choice == "required" or isinstance(choice, ToolChoiceFunction):
            raise _unsupported("tool_choice", "needs tools")
        return None, None
    no_parallel = True if request.parallel_tool_calls is False else None
    match choice:
        case None:
            native = _ToolChoice(type="auto", disable_parallel_tool_use=True) if no_parallel else None
        case "auto":
            native = _ToolChoice(type="auto", disable_parallel_tool_use=no_parallel)
        case "none":
            native = _ToolChoice(type="none")
        case "required":
            native = _ToolChoice(type="any", disable_parallel_tool_use=no_parallel)
        case ToolChoiceFunction(function=function):
            native = _ToolChoice(type="tool", name=function.name, disable_parallel_tool_use=no_parallel)
        case _:
            assert_never(choice)
    return tools, native


def _map_response_format(request: ChatCompletionRequest) -> _OutputConfig | None:
    response_format = request.response_format
    match response_format:
        case None | TextFormat():
            return None
        case JsonObjectFormat():
            raise _unsupported(
                "response_format", "Anthropic has no schema-less JSON mode; use type json_schema with a schema"
            )
        case JsonSchemaResponseFormat(json_schema=spec):
            # https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs
            return _OutputConfig(format=_OutputFormat(schema=spec.schema or {"type": "object"}))
        case _:
            assert_never(response_format)


# ---------------------------------------------------------------- shared response helpers


def _map_finish_reason(stop_reason: str | None) -> FinishReason | None:
    if stop_reason is None:
        return None
    return _FINISH.get(stop_reason, "stop")


def _map_usage(usage: _Usage) -> Usage:
    cached = usage.cache_read_input_tokens
    prompt = (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + (cached or 0)
    completion = usage.output_tokens or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached) if cached is not None else None,
    )


def _merge_usage(old: _Usage, new: _Usage) -> _Usage:
    """``old`` with every count ``new`` reports."""
    reported = {f: v for f in new.__struct_fields__ if (v := getattr(new, f)) is not None}
    return msgspec.structs.replace(old, **reported)


def _positive_int(endpoint: str, options: dict[str, Any], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"endpoint {endpoint!r}: options.{name}: expected a positive whole number, got {raw!r}")
    return value
