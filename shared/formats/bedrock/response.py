"""Converse answers and ConverseStream events, in both directions, and AWS error bodies.

Rules for both directions are listed in :mod:`shared.formats.bedrock`. A Converse answer and a
ConverseStream share one mapping of usage and stop reasons (:func:`_map_usage`,
:func:`_map_finish_reason`).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, assert_never

import msgspec
from msgspec import UNSET

from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    PromptTokensDetails,
    ResponseMessage,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from shared.formats.bedrock import wire

EXCEPTION_STATUS = {
    "throttlingexception": 429,
    "modelnotreadyexception": 429,
    "validationexception": 400,
    "accessdeniedexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
}
"""HTTP statuses of the exceptions a ConverseStream can carry (lower-cased type), from its reference;
any other (``modelStreamErrorException``) is a 502."""


class MalformedAnswer(ValueError):
    """A native answer that decodes but breaks the API's rules (a delta for a block that never started)."""


class NativeError(NamedTuple):
    """What an AWS error body says."""

    type: str
    """The short exception type (``ThrottlingException``), or ``""``."""
    message: str | None


# ---------------------------------------------------------------- native -> internal


def completion_from_native(body: bytes, *, completion_id: str, model: str) -> ChatCompletion:
    """A Converse answer as a completion; raises ``msgspec.MsgspecError`` when it is not one."""
    parsed = wire.response_decoder.decode(body)
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in parsed.output.message.content:
        if block.text is not None:
            text.append(block.text)
        elif block.tool_use is not None:
            use = block.tool_use
            calls.append(ToolCall(id=use.tool_use_id, function=FunctionCall(name=use.name, arguments=_arguments(use))))
    usage = parsed.usage if isinstance(parsed.usage, wire.TokenUsage) else None
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
        usage=_map_usage(usage) if usage is not None else None,
    )


class StreamDecoder:
    """The ConverseStream events of one answer as chunks, event by event."""

    __slots__ = ("_metadata_seen", "_tool_index", "created", "id", "model", "stopped")

    def __init__(self, completion_id: str, model: str) -> None:
        self.id = completion_id
        self.created = int(time.time())
        self.model = model
        self._tool_index: dict[int, int] = {}
        """contentBlockIndex of each tool-use block -> OpenAI tool-call index."""
        self.stopped = False
        """``messageStop`` has arrived: the answer is whole (``metadata`` may still follow)."""
        self._metadata_seen = False

    @property
    def complete(self) -> bool:
        """Both ``messageStop`` and ``metadata`` (the last event) have arrived."""
        return self.stopped and self._metadata_seen

    def chunks(self, event_type: str, payload: bytes) -> list[ChatCompletionChunk]:
        """The chunks one event carries; an event type newer than this module carries none.

        Raises ``msgspec.MsgspecError`` for a malformed payload and :class:`MalformedAnswer`
        for a tool-use delta whose block never started.
        """
        decoder = wire.event_decoders.get(event_type)
        if decoder is None:
            return []
        event: wire.StreamEventBody = decoder.decode(payload)
        match event:
            case wire.MessageStart():
                return [self._chunk(Delta(role="assistant", content=""))]
            case wire.ContentBlockStart():
                tool = event.start.tool_use
                if tool is None:
                    return []
                index = self._tool_index[event.content_block_index] = len(self._tool_index)
                call = ToolCallDelta(
                    index=index, id=tool.tool_use_id, type="function", function=FunctionCallDelta(name=tool.name)
                )
                return [self._chunk(Delta(tool_calls=[call]))]
            case wire.ContentBlockDelta(delta=wire.BlockDelta(text=str() as text)):
                return [self._chunk(Delta(content=text))]
            case wire.ContentBlockDelta(delta=wire.BlockDelta(tool_use=wire.ToolUseDelta() as fragment)):
                known = self._tool_index.get(event.content_block_index)
                if known is None:
                    raise MalformedAnswer(f"toolUse delta for block {event.content_block_index} that never started")
                delta = ToolCallDelta(index=known, function=FunctionCallDelta(arguments=fragment.input))
                return [self._chunk(Delta(tool_calls=[delta]))]
            case wire.ContentBlockDelta() | wire.ContentBlockStop():
                return []  # reasoning and other block kinds have no OpenAI form
            case wire.MessageStop():
                self.stopped = True
                return [self._chunk(Delta(), _map_finish_reason(event.stop_reason))]
            case wire.Metadata():
                self._metadata_seen = True
                if not isinstance(event.usage, wire.TokenUsage):
                    return []
                usage = _map_usage(event.usage)
                return [
                    ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[], usage=usage)
                ]
            case _:
                assert_never(event)

    def _chunk(self, delta: Delta, finish_reason: FinishReason | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])


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
            return "stop"  # a stop reason newer than this module: generation did end


def _map_usage(usage: wire.TokenUsage) -> Usage:
    """OpenAI counts cached prompt tokens in ``prompt_tokens``; Converse counts them apart."""
    cached = usage.cache_read_input_tokens or 0
    written = usage.cache_write_input_tokens or 0
    prompt = usage.input_tokens + cached + written
    details = None
    if cached or written:  # cache writes kept apart: they are priced at their own rate
        details = PromptTokensDetails(cached_tokens=cached or None, cache_write_tokens=written or None)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=usage.output_tokens,
        total_tokens=prompt + usage.output_tokens,
        prompt_tokens_details=details,
    )


def _arguments(use: wire.ToolUse) -> str:
    return "{}" if use.input is None else wire.encoder.encode(use.input).decode()


def error_from_native(body: bytes) -> NativeError | None:
    """The type and message of an AWS error body or exception payload; ``None`` if it is no JSON object."""
    try:
        shape = wire.error_decoder.decode(body)
    except msgspec.MsgspecError:
        return None
    return NativeError(short_type(shape.type), shape.message or shape.Message)


def short_type(value: str | None) -> str:
    """``ThrottlingException:http://...`` or ``com.amazon...#ThrottlingException`` -> ``ThrottlingException``."""
    if not value:
        return ""
    return value.split(":", 1)[0].rsplit("#", 1)[-1]


def exception_status(exception_type: str) -> int:
    """The HTTP status of an exception that arrived inside a stream."""
    return EXCEPTION_STATUS.get(exception_type.lower(), 502)


# ---------------------------------------------------------------- internal -> native


def completion_to_native(completion: ChatCompletion, *, latency_ms: float | None = None) -> bytes:
    """A completion as a Converse answer body (``metrics`` only when ``latency_ms`` is given)."""
    content: list[wire.OutputContent] = []
    stop_reason = "end_turn"
    if completion.choices:
        choice = completion.choices[0]
        message = choice.message
        text = message.content if message.content is not None else message.refusal
        if text is not None and (text or not message.tool_calls):
            content.append(wire.OutputContent(text=text))
        for call in message.tool_calls or []:
            use = wire.ToolUse(tool_use_id=call.id, name=call.function.name, input=_tool_input(call.function.arguments))
            content.append(wire.OutputContent(tool_use=use))
        stop_reason = _stop_reason_to_native(choice.finish_reason)
    body = wire.ConverseResponse(
        output=wire.Output(message=wire.OutputMessage(content=content)),
        stop_reason=stop_reason,
        usage=_usage_to_native(completion.usage) if completion.usage is not None else UNSET,
        metrics=wire.Metrics(latency_ms=latency_ms) if latency_ms is not None else UNSET,
    )
    return wire.encoder.encode(body)


class StreamEncoder:
    """The chunks of one answer as ConverseStream events: ``(event type, JSON payload)`` pairs.

    Text opens a block without a start event and tool calls open one with ``contentBlockStart``,
    as AWS does; a block stops when the next one starts or the message stops.
    """

    __slots__ = ("_blocks", "_next_block", "_open", "_open_is_text", "_started")

    def __init__(self) -> None:
        self._started = False
        self._next_block = 0
        self._open: int | None = None
        self._open_is_text = False
        self._blocks: dict[int, int] = {}
        """OpenAI tool-call index -> contentBlockIndex."""

    def events(self, chunk: ChatCompletionChunk, *, latency_ms: float | None = None) -> list[tuple[str, bytes]]:
        """The events one chunk becomes; ``latency_ms`` fills ``metadata.metrics`` on the usage chunk."""
        out: list[tuple[str, bytes]] = []
        for choice in chunk.choices:
            delta = choice.delta
            if not self._started:
                self._started = True
                out.append(_event("messageStart", wire.MessageStart(role="assistant")))
            # The empty content of OpenAI's opening role chunk is a convention, not text.
            if delta.content is not None and (delta.content or delta.role is None):
                index = self._text_block(out)
                out.append(
                    _event("contentBlockDelta", wire.ContentBlockDelta(wire.BlockDelta(text=delta.content), index))
                )
            for call in delta.tool_calls or []:
                self._tool_call(call, out)
            if choice.finish_reason is not None:
                self._stop_block(out)
                out.append(_event("messageStop", wire.MessageStop(_stop_reason_to_native(choice.finish_reason))))
        if chunk.usage is not None:
            metrics = wire.Metrics(latency_ms=latency_ms) if latency_ms is not None else UNSET
            out.append(_event("metadata", wire.Metadata(usage=_usage_to_native(chunk.usage), metrics=metrics)))
        return out

    def _text_block(self, out: list[tuple[str, bytes]]) -> int:
        if self._open is not None and self._open_is_text:
            return self._open
        self._stop_block(out)
        self._open, self._open_is_text = self._next_block, True
        self._next_block += 1
        return self._open

    def _tool_call(self, call: ToolCallDelta, out: list[tuple[str, bytes]]) -> None:
        index = self._blocks.get(call.index)
        if index is None:
            self._stop_block(out)
            index = self._blocks[call.index] = self._open = self._next_block
            self._open_is_text = False
            self._next_block += 1
            name = call.function.name if call.function is not None else None
            start = wire.BlockStart(tool_use=wire.ToolUseStart(tool_use_id=call.id or "", name=name or ""))
            out.append(_event("contentBlockStart", wire.ContentBlockStart(start, index)))
        if call.function is not None and call.function.arguments:
            fragment = wire.BlockDelta(tool_use=wire.ToolUseDelta(input=call.function.arguments))
            out.append(_event("contentBlockDelta", wire.ContentBlockDelta(fragment, index)))

    def _stop_block(self, out: list[tuple[str, bytes]]) -> None:
        if self._open is not None:
            out.append(_event("contentBlockStop", wire.ContentBlockStop(self._open)))
            self._open = None


def _event(name: str, body: wire.StreamEventBody) -> tuple[str, bytes]:
    return name, wire.encoder.encode(body)


def _stop_reason_to_native(finish_reason: FinishReason | None) -> str:
    match finish_reason:
        case "stop" | None:
            return "end_turn"
        case "length":
            return "max_tokens"
        case "tool_calls" | "function_call":
            return "tool_use"
        case "content_filter":
            return "content_filtered"
        case _:
            assert_never(finish_reason)


def _usage_to_native(usage: Usage) -> wire.TokenUsage:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details is not None else None
    return wire.TokenUsage(
        input_tokens=usage.prompt_tokens - (cached or 0),
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cache_read_input_tokens=cached or UNSET,
    )


def _tool_input(arguments: str) -> Any:
    """Tool-call arguments as the JSON document Converse carries; not JSON, the string itself."""
    try:
        return msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return arguments
