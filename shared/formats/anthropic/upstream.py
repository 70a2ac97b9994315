"""Modelbus calling Anthropic: the internal request as a Messages request, and the answer back.

The rules (what maps to what, what is dropped, what is refused) are in
:mod:`shared.formats.anthropic`. A client's request that cannot be honoured
raises :class:`~shared.errors.InvalidRequest` naming the parameter; an answer
that is not a message raises ``msgspec.MsgspecError``, one that breaks the
stream protocol :class:`~shared.formats.anthropic.wire.InvalidAnswer`, and an
``error`` event :class:`~shared.formats.anthropic.wire.StreamError`.
"""

from __future__ import annotations

import time
from typing import Literal, assert_never

import msgspec

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
    PromptTokensDetails,
    ResponseMessage,
    SystemMessage,
    TextFormat,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoiceFunction,
    ToolMessage,
    UserMessage,
)
from shared.chat import Message as InternalMessage
from shared.chat import Usage as InternalUsage
from shared.errors import InvalidRequest, unsupported
from shared.formats.anthropic import wire
from shared.formats.anthropic.wire import (
    Base64Source,
    ContentBlockParam,
    DocumentBlock,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    Metadata,
    OutputConfig,
    OutputFormat,
    TextBlock,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)
from shared.formats.images import parse_data_uri

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
"""Media types Anthropic accepts in a ``base64`` image source."""

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # only with server tools, which modelbus never sends
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# ---------------------------------------------------------------- request


def request_to_native(request: ChatCompletionRequest, model: str, *, default_max_tokens: int) -> bytes:
    """The Messages request body for ``request``, sent to ``model``; ``default_max_tokens``
    when the request sets no limit (Anthropic requires one)."""
    _rejectunsupported(request)
    system, turns = _map_messages(request.messages)
    tools, tool_choice = _map_tools(request)
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    native = MessagesRequest(
        model=model,
        max_tokens=request.output_token_limit or default_max_tokens,
        messages=turns,
        system=system or None,
        stop_sequences=stop or None,
        temperature=request.temperature,
        top_p=request.top_p,
        tools=tools,
        tool_choice=tool_choice,
        metadata=Metadata(user_id=request.user) if request.user else None,
        output_config=_map_response_format(request),
        stream=request.stream,
    )
    return wire.encoder.encode(native)


def _rejectunsupported(request: ChatCompletionRequest) -> None:
    """Parameters Anthropic cannot honour, when setting them would change the answer."""
    if request.temperature is not None and request.temperature > 1:
        raise unsupported("temperature", "Anthropic accepts 0 to 1")
    if request.reasoning_effort is not None:
        raise unsupported("reasoning_effort", "not supported by the anthropic adapter")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise unsupported(name, "Anthropic has no penalties; omit it or send 0")
    if request.logit_bias:
        raise unsupported("logit_bias", "Anthropic has no logit bias")
    if request.logprobs or request.top_logprobs:
        raise unsupported("logprobs" if request.logprobs else "top_logprobs", "Anthropic returns no log probabilities")


def _map_messages(messages: list[InternalMessage]) -> tuple[list[TextBlock], list[MessageParam]]:
    """System text (hoisted, in order) and alternating user/assistant turns."""
    system: list[TextBlock] = []
    turns: list[MessageParam] = []

    def add(role: Literal["user", "assistant"], blocks: list[ContentBlockParam]) -> None:
        last = turns[-1] if turns else None
        if last is not None and last.role == role and isinstance(last.content, list):
            last.content.extend(blocks)
        else:
            turns.append(MessageParam(role=role, content=blocks))

    for i, message in enumerate(messages):
        match message:
            case SystemMessage(content=content) | DeveloperMessage(content=content):
                system.extend(t for t in _texts(content) if t.text)  # Anthropic rejects empty text blocks
            case UserMessage(content=content):
                if isinstance(content, str):
                    add("user", [TextBlock(text=content)])
                else:
                    add("user", [_map_part(part, f"messages[{i}].content[{j}]") for j, part in enumerate(content)])
            case AssistantMessage():
                add("assistant", _assistant_blocks(message, i))
            case ToolMessage(content=content, tool_call_id=call_id):
                result: str | list[TextBlock | ImageBlock | DocumentBlock]
                result = content if isinstance(content, str) else [TextBlock(text=p.text) for p in content]
                add("user", [ToolResultBlock(tool_use_id=call_id, content=result)])
            case _:
                assert_never(message)
    return system, turns


def _texts(content: str | list[TextPart]) -> list[TextBlock]:
    return [TextBlock(text=content)] if isinstance(content, str) else [TextBlock(text=p.text) for p in content]


def _map_part(part: TextPart | ImagePart, where: str) -> ContentBlockParam:
    match part:
        case TextPart(text=text):
            return TextBlock(text=text)
        case ImagePart(image_url=image):
            return ImageBlock(source=_image_source(image.url, f"{where}.image_url.url"))
        case _:
            assert_never(part)


def _image_source(url: str, where: str) -> Base64Source | UrlSource:
    if url.startswith("https://"):
        return UrlSource(url=url)
    parsed = parse_data_uri(url, where)
    if parsed is None:
        raise InvalidRequest(f"{where}: Anthropic takes images as data: URIs or https:// URLs", param=where)
    media_type, data = parsed
    if media_type not in IMAGE_TYPES:
        raise InvalidRequest(
            f"{where}: Anthropic takes {', '.join(sorted(IMAGE_TYPES))}, not {media_type!r}", param=where
        )
    return Base64Source(media_type=media_type, data=data)


def _assistant_blocks(message: AssistantMessage, i: int) -> list[ContentBlockParam]:
    content = message.content if message.content is not None else message.refusal
    # Anthropic rejects empty text blocks, which tool-calling turns often carry.
    blocks: list[ContentBlockParam] = [t for t in _texts(content) if t.text] if content else []
    for j, call in enumerate(message.tool_calls or []):
        where = f"messages[{i}].tool_calls[{j}].function.arguments"
        try:
            arguments = msgspec.json.decode(call.function.arguments or "{}")
        except msgspec.DecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{where}: must be a JSON object", param=where)
        blocks.append(ToolUseBlock(id=call.id, name=call.function.name, input=arguments))
    return blocks


def _map_tools(request: ChatCompletionRequest) -> tuple[list[Tool] | None, ToolChoice | None]:
    tools = [
        Tool(
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
            raise unsupported("tool_choice", "needs tools")
        return None, None
    no_parallel = True if request.parallel_tool_calls is False else None
    match choice:
        case None:
            native = ToolChoice(type="auto", disable_parallel_tool_use=True) if no_parallel else None
        case "auto":
            native = ToolChoice(type="auto", disable_parallel_tool_use=no_parallel)
        case "none":
            native = ToolChoice(type="none")
        case "required":
            native = ToolChoice(type="any", disable_parallel_tool_use=no_parallel)
        case ToolChoiceFunction(function=function):
            native = ToolChoice(type="tool", name=function.name, disable_parallel_tool_use=no_parallel)
        case _:
            assert_never(choice)
    return tools, native


def _map_response_format(request: ChatCompletionRequest) -> OutputConfig | None:
    response_format = request.response_format
    match response_format:
        case None | TextFormat():
            return None
        case JsonObjectFormat():
            raise unsupported(
                "response_format", "Anthropic has no schema-less JSON mode; use type json_schema with a schema"
            )
        case JsonSchemaResponseFormat(json_schema=spec):
            # https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs
            return OutputConfig(format=OutputFormat(type="json_schema", schema=spec.schema or {"type": "object"}))
        case _:
            assert_never(response_format)


# ---------------------------------------------------------------- answer


def completion_from_native(body: bytes) -> ChatCompletion:
    """A Messages answer as a completion; raises ``msgspec.MsgspecError`` when it is not a message."""
    native = wire.message_decoder.decode(body)
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in native.content:
        if block.type == "text":
            text.append(block.text or "")
        elif block.type == "tool_use":
            arguments = "{}" if block.input is msgspec.UNSET else bytes(block.input).decode()
            calls.append(ToolCall(id=block.id or "", function=FunctionCall(name=block.name or "", arguments=arguments)))
    message = ResponseMessage(content="".join(text) if text or not calls else None, tool_calls=calls or None)
    return ChatCompletion(
        id=native.id,
        created=int(time.time()),
        model=native.model,
        choices=[Choice(index=0, message=message, finish_reason=map_finish_reason(native.stop_reason))],
        usage=map_usage(native.usage),
    )


def error_in(body: bytes) -> wire.ErrorDetail | None:
    """The error an answer body carries (``{"type": "error", "error": {...}}``), if it is one."""
    try:
        return wire.error_decoder.decode(body).error
    except msgspec.MsgspecError:
        return None


def map_finish_reason(stop_reason: str | None) -> FinishReason | None:
    """Anthropic's ``stop_reason`` in OpenAI's terms; a reason added later counts as ``stop``."""
    if stop_reason is None:
        return None
    return _FINISH.get(stop_reason, "stop")


def map_usage(usage: wire.Usage) -> InternalUsage:
    """Both cache counts are prompt tokens (Anthropic's ``input_tokens`` excludes them); the cache
    writes are also kept apart in ``cache_write_tokens``, which OpenAI-shaped clients never see."""
    cached = usage.cache_read_input_tokens
    written = usage.cache_creation_input_tokens or None  # kept apart for the ledger (shared.usage)
    prompt = (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + (cached or 0)
    completion = usage.output_tokens or 0
    return InternalUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=(
            PromptTokensDetails(cached_tokens=cached, cache_write_tokens=written)
            if cached is not None or written is not None
            else None
        ),
    )


# ---------------------------------------------------------------- stream


class StreamReader:
    """Native stream events to chunks; keeps what earlier events said (ids, tool-call
    numbering, usage, the finish reason)."""

    __slots__ = (
        "_usage",
        "created",
        "finish_reason",
        "id",
        "model",
        "started",
        "stopped",
        "tools",
        "tools_with_arguments",
    )

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.started = False
        self.stopped = False
        """``message_stop`` arrived: the stream is complete."""
        self.finish_reason: FinishReason | None = None
        """Set by ``message_delta``: the answer is complete even if ``message_stop`` never comes."""
        self._usage = wire.Usage()
        self.tools: dict[int, int] = {}
        """Content-block index → OpenAI tool-call index."""
        self.tools_with_arguments: set[int] = set()

    def read(self, name: str, data: bytes) -> list[ChatCompletionChunk]:
        """The chunks one event (SSE ``name`` and ``data``) yields; the usage chunk comes with ``message_stop``."""
        if name not in wire.STREAM_EVENTS:
            return []  # Anthropic may add event types; unknown ones are to be ignored
        event = wire.event_decoder.decode(data)
        if not self.started and not isinstance(event, wire.MessageStart | wire.Ping | wire.ErrorEvent):
            raise wire.InvalidAnswer(f"{name} event before message_start")
        match event:
            case wire.MessageStart(message=message):
                self.started = True
                self.id, self.model, self._usage = message.id, message.model, message.usage
                return [self._chunk(Delta(role="assistant", content=""))]
            case wire.ContentBlockStart(index=index, content_block=block):
                if block.type == "tool_use":
                    self.tools[index] = len(self.tools)
                    return [self._tool_delta(index, FunctionCallDelta(name=block.name, arguments=""), id=block.id)]
                if block.type == "text" and block.text:
                    return [self._chunk(Delta(content=block.text))]
                return []
            case wire.ContentBlockDelta(index=index, delta=delta):
                if delta.type == "text_delta" and delta.text:
                    return [self._chunk(Delta(content=delta.text))]
                if delta.type == "input_json_delta" and delta.partial_json and index in self.tools:
                    self.tools_with_arguments.add(index)
                    return [self._tool_delta(index, FunctionCallDelta(arguments=delta.partial_json))]
                return []  # thinking, signature and citations deltas have no OpenAI counterpart
            case wire.ContentBlockStop(index=index):
                if index in self.tools and index not in self.tools_with_arguments:
                    # A call without arguments still needs a JSON object, as in a non-streamed answer.
                    return [self._tool_delta(index, FunctionCallDelta(arguments="{}"))]
                return []
            case wire.MessageDelta(delta=delta, usage=usage):
                # message_delta usage is cumulative and may restate input counts.
                reported = {f: v for f in usage.__struct_fields__ if (v := getattr(usage, f)) is not None}
                self._usage = msgspec.structs.replace(self._usage, **reported)
                self.finish_reason = map_finish_reason(delta.stop_reason)
                return [self._chunk(Delta(), self.finish_reason)]
            case wire.MessageStop():
                self.stopped = True
                return [self.usage_chunk()]
            case wire.Ping():
                return []
            case wire.ErrorEvent(error=error):
                raise wire.StreamError(error.type, error.message)
            case _:
                assert_never(event)

    def usage_chunk(self) -> ChatCompletionChunk:
        """The closing chunk: no choices, the usage so far."""
        usage = map_usage(self._usage)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[], usage=usage)

    def _chunk(self, delta: Delta, finish_reason: FinishReason | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

    def _tool_delta(self, block: int, function: FunctionCallDelta, *, id: str | None = None) -> ChatCompletionChunk:
        call = ToolCallDelta(index=self.tools[block], id=id, type="function" if id else None, function=function)
        return self._chunk(Delta(tool_calls=[call]))
