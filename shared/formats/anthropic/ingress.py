"""An HTTP ingress speaking Anthropic's format: a client's Messages request as the internal
request, and the internal answer back as a Message or as Anthropic's event sequence.

The rules (what maps to what, what is dropped, what is refused) are in
:mod:`shared.formats.anthropic`. A request modelbus cannot honour raises
:class:`~shared.errors.InvalidRequest` naming the field; an internal answer
with no Messages form raises :class:`~shared.formats.anthropic.wire.InvalidAnswer`.
"""

from __future__ import annotations

from typing import Literal, assert_never

import msgspec

from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ContentPart,
    FinishReason,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    JsonSchemaFormat,
    JsonSchemaResponseFormat,
    StreamOptions,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoiceFunction,
    ToolChoiceFunctionName,
    ToolMessage,
    UserMessage,
    decode_client_body,
)
from shared.chat import Message as InternalMessage
from shared.chat import Tool as InternalTool
from shared.chat import ToolChoice as InternalToolChoice
from shared.chat import Usage as InternalUsage
from shared.errors import InvalidRequest, unsupported
from shared.formats.anthropic import wire
from shared.formats.anthropic.wire import (
    Base64Source,
    BlockDelta,
    ContentBlock,
    ContentBlockDelta,
    ContentBlockParam,
    ContentBlockStart,
    ContentBlockStop,
    DocumentBlock,
    FileSource,
    ImageBlock,
    Message,
    MessageDelta,
    MessageDeltaBody,
    MessageParam,
    MessagesRequest,
    MessageStart,
    MessageStop,
    OutputConfig,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)

NativeEvent = tuple[str, bytes]
"""One server-sent event: its ``event:`` name and its ``data:`` (one JSON line)."""

_STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_EFFORTS: dict[str, Literal["low", "medium", "high"]] = {"low": "low", "medium": "medium", "high": "high"}

# ---------------------------------------------------------------- request


def request_from_native(body: bytes) -> ChatCompletionRequest:
    """A client's Messages request body; raises :class:`InvalidRequest` naming the field at fault."""
    native = decode_client_body(wire.request_decoder, body)
    _refuse_unmapped(native)
    messages = _map_system(native.system)
    for i, turn in enumerate(native.messages):
        messages.extend(_map_turn(turn, f"messages[{i}].content"))
    if not messages:
        raise InvalidRequest("messages: no turn has content modelbus can send", param="messages")
    tools, tool_choice, parallel = _map_tools(native)
    return ChatCompletionRequest(
        messages=messages,
        model=native.model,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        temperature=native.temperature,
        top_p=native.top_p,
        max_tokens=native.max_tokens,
        stop=native.stop_sequences or None,
        response_format=_map_output_format(native.output_config),
        reasoning_effort=_map_effort(native.output_config),
        user=native.metadata.user_id if native.metadata else None,
        stream=native.stream,
        # Anthropic's streams always report usage, at the end in message_delta.
        stream_options=StreamOptions(include_usage=True) if native.stream else None,
    )


def _refuse_unmapped(native: MessagesRequest) -> None:
    """Fields that would change the answer, or a promise, and have no internal counterpart."""
    if native.top_k is not None:
        raise unsupported("top_k", "modelbus has no top-k sampling; use top_p or temperature")
    if native.thinking is not None and native.thinking.type not in ("disabled", "adaptive"):
        raise unsupported("thinking", "extended thinking returns blocks modelbus cannot carry back")
    if native.container is not None:
        raise unsupported("container", "modelbus offers no code-execution containers")
    if native.inference_geo is not None:
        raise unsupported("inference_geo", "modelbus cannot promise where inference runs")


def _map_system(system: str | list[TextBlock] | None) -> list[InternalMessage]:
    if not system:
        return []
    if isinstance(system, str):
        return [SystemMessage(content=system)]
    return [SystemMessage(content=[TextPart(text=block.text) for block in system])]


def _map_turn(turn: MessageParam, where: str) -> list[InternalMessage]:
    if turn.role == "system":
        return [SystemMessage(content=_system_text(turn.content, where))]
    if isinstance(turn.content, str):
        text = turn.content
        return [UserMessage(content=text) if turn.role == "user" else AssistantMessage(content=text)]
    if turn.role == "user":
        return _map_user_blocks(turn.content, where)
    return _map_assistant_blocks(turn.content, where)


def _system_text(content: str | list[ContentBlockParam], where: str) -> str | list[TextPart]:
    """A ``system`` turn between the others (Claude Code sends them): text only, kept in place."""
    if isinstance(content, str):
        return content
    parts: list[TextPart] = []
    for j, block in enumerate(content):
        if not isinstance(block, TextBlock):
            raise unsupported(f"{where}[{j}]", "a system turn carries only text blocks")
        parts.append(TextPart(text=block.text))
    return parts


def _map_user_blocks(blocks: list[ContentBlockParam], where: str) -> list[InternalMessage]:
    """Tool results become tool messages (Anthropic puts them first in the turn), the rest one user message."""
    results: list[InternalMessage] = []
    parts: list[ContentPart] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        match block:
            case TextBlock(text=text):
                parts.append(TextPart(text=text))
            case ImageBlock(source=source):
                parts.append(ImagePart(image_url=ImageURL(url=_image_url(source, f"{at}.source"))))
            case ToolResultBlock(tool_use_id=call_id, content=content):
                results.append(ToolMessage(tool_call_id=call_id, content=_tool_output(content, f"{at}.content")))
            case DocumentBlock():
                raise unsupported(at, "document blocks have no counterpart in modelbus; send the text")
            case ToolUseBlock() | ThinkingBlock() | RedactedThinkingBlock():
                raise InvalidRequest(f"{at}: this block belongs in an assistant turn", param=at)
            case _:
                assert_never(block)
    if parts:
        results.append(UserMessage(content=parts))
    return results


def _map_assistant_blocks(blocks: list[ContentBlockParam], where: str) -> list[InternalMessage]:
    """Text and tool calls; earlier thinking is dropped (Anthropic itself ignores it without thinking)."""
    texts: list[TextPart] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        match block:
            case TextBlock(text=text):
                texts.append(TextPart(text=text))
            case ToolUseBlock(id=call_id, name=name, input=arguments):
                function = FunctionCall(name=name, arguments=wire.encoder.encode(arguments).decode())
                calls.append(ToolCall(id=call_id, function=function))
            case ThinkingBlock() | RedactedThinkingBlock():
                continue
            case ImageBlock() | DocumentBlock() | ToolResultBlock():
                at = f"{where}[{j}]"
                raise InvalidRequest(f"{at}: assistant turns carry text, tool_use and thinking blocks", param=at)
            case _:
                assert_never(block)
    if not texts and not calls:
        return []
    return [AssistantMessage(content=texts or None, tool_calls=calls or None)]


def _image_url(source: Base64Source | UrlSource | FileSource, where: str) -> str:
    match source:
        case Base64Source(media_type=media_type, data=data):
            return f"data:{media_type};base64,{data}"
        case UrlSource(url=url):
            return url
        case FileSource():
            raise unsupported(where, "Files API references have no counterpart in modelbus; send the image")
        case _:
            assert_never(source)


def _tool_output(
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None, where: str
) -> str | list[TextPart]:
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[TextPart] = []
    for k, block in enumerate(content):
        if not isinstance(block, TextBlock):
            raise unsupported(f"{where}[{k}]", "tool results carry text only in modelbus")
        parts.append(TextPart(text=block.text))
    return parts


def _map_tools(
    native: MessagesRequest,
) -> tuple[list[InternalTool] | None, InternalToolChoice | None, bool | None]:
    tools = [
        InternalTool(
            function=FunctionDefinition(
                name=t.name, description=t.description, parameters=t.input_schema, strict=t.strict
            )
        )
        for t in native.tools or []
    ]
    choice = native.tool_choice
    if choice is None:
        return tools or None, None, None
    mapped: InternalToolChoice
    kind = choice.type
    match kind:
        case "auto":
            mapped = "auto"
        case "any":
            mapped = "required"
        case "none":
            mapped = "none"
        case "tool":
            if not choice.name:
                raise InvalidRequest("tool_choice.name: type tool names the tool to call", param="tool_choice.name")
            mapped = ToolChoiceFunction(function=ToolChoiceFunctionName(name=choice.name))
        case _:
            assert_never(kind)
    return tools or None, mapped, False if choice.disable_parallel_tool_use else None


def _map_output_format(config: OutputConfig | None) -> JsonSchemaResponseFormat | None:
    if config is None or config.format is None:
        return None
    return JsonSchemaResponseFormat(json_schema=JsonSchemaFormat(name="response", schema=config.format.schema))


def _map_effort(config: OutputConfig | None) -> Literal["low", "medium", "high"] | None:
    if config is None or config.effort is None:
        return None
    effort = _EFFORTS.get(config.effort)
    if effort is None:
        raise unsupported("output_config.effort", f"modelbus knows low, medium and high, not {config.effort!r}")
    return effort


# ---------------------------------------------------------------- answer


def completion_to_native(completion: ChatCompletion) -> bytes:
    """A completion as a Messages answer body; raises :class:`InvalidAnswer` when it has no
    choice or a tool call's arguments are not a JSON object."""
    if not completion.choices:
        raise wire.InvalidAnswer("the completion has no choice")
    choice = completion.choices[0]
    message = choice.message
    content: list[ContentBlock] = []
    text = message.content if message.content is not None else message.refusal
    if text:
        content.append(ContentBlock(type="text", text=text))
    for call in message.tool_calls or []:
        arguments = _tool_input(call.function.arguments)
        content.append(ContentBlock(type="tool_use", id=call.id, name=call.function.name, input=arguments))
    native = Message(
        id=completion.id,
        type="message",
        model=completion.model,
        content=content,
        stop_reason=_map_stop_reason(choice.finish_reason),
        usage=usage_to_native(completion.usage),
    )
    return wire.encoder.encode(native)


def _tool_input(arguments: str) -> msgspec.Raw:
    raw = (arguments or "{}").encode()
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise wire.InvalidAnswer(f"tool call arguments are not a JSON object: {arguments[:80]!r}")
    return msgspec.Raw(raw)


def _map_stop_reason(finish_reason: FinishReason | None) -> str | None:
    return _STOP_REASONS[finish_reason] if finish_reason is not None else None


def usage_to_native(usage: InternalUsage | None) -> wire.Usage:
    """Internal usage in Anthropic's counts: cache reads and cache writes (where the provider told
    them apart) are reported as such and left out of ``input_tokens``."""
    if usage is None:
        return wire.Usage(input_tokens=0, output_tokens=0)
    details = usage.prompt_tokens_details
    cached = usage.cached_prompt_tokens
    reported = cached or (details is not None and details.cached_tokens is not None)
    written = (details.cache_write_tokens or 0) if details is not None else 0
    return wire.Usage(
        input_tokens=max(0, usage.prompt_tokens - cached - written),
        output_tokens=usage.completion_tokens,
        cache_creation_input_tokens=written or None,
        cache_read_input_tokens=cached if reported else None,
    )


# ---------------------------------------------------------------- stream


def _event(event: wire.StreamEvent) -> NativeEvent:
    return str(event.__struct_config__.tag), wire.encoder.encode(event)


class StreamWriter:
    """Chunks as Anthropic's event sequence: ``message_start``, per block ``content_block_start``,
    ``content_block_delta`` (``text_delta``, ``input_json_delta``) and ``content_block_stop``,
    then ``message_delta`` (stop reason, usage) and ``message_stop`` from :meth:`end`.

    The stop reason and usage wait for :meth:`end`: a usage chunk follows the finish chunk.
    """

    __slots__ = ("_blocks", "_open", "_open_kind", "_started", "_stop_reason", "_tools", "_usage")

    def __init__(self) -> None:
        self._started = False
        self._blocks = 0
        """Blocks started so far: the index of the next one."""
        self._open: int | None = None
        self._open_kind: Literal["text", "tool_use"] | None = None
        self._tools: dict[int, int] = {}
        """OpenAI tool-call index → content-block index."""
        self._stop_reason: str | None = None
        self._usage: InternalUsage | None = None

    def events(self, chunk: ChatCompletionChunk) -> list[NativeEvent]:
        """The events one chunk adds."""
        out: list[NativeEvent] = []
        if not self._started:
            self._message_start(out, chunk.id, chunk.model)
        for choice in chunk.choices:
            delta = choice.delta
            text = delta.content or delta.refusal
            if text:
                if self._open_kind != "text":
                    self._start(out, ContentBlock(type="text", text=""), "text")
                text_delta = BlockDelta(type="text_delta", text=text)
                out.append(_event(ContentBlockDelta(index=self._blocks - 1, delta=text_delta)))
            for call in delta.tool_calls or []:
                self._tool_delta(out, call)
            if choice.finish_reason is not None:
                self._close(out)
                self._stop_reason = _map_stop_reason(choice.finish_reason)
        if chunk.usage is not None:
            self._usage = chunk.usage
        return out

    def end(self) -> list[NativeEvent]:
        """The closing events, once the chunks have ended."""
        out: list[NativeEvent] = []
        if not self._started:
            self._message_start(out, "", "")
        self._close(out)
        body = MessageDeltaBody(stop_reason=self._stop_reason)
        out.append(_event(MessageDelta(delta=body, usage=usage_to_native(self._usage))))
        out.append(_event(MessageStop()))
        return out

    def _message_start(self, out: list[NativeEvent], id: str, model: str) -> None:
        self._started = True
        usage = wire.Usage(input_tokens=0, output_tokens=0)  # counted at the end, in message_delta
        message = Message(id=id, type="message", model=model, content=[], usage=usage)
        out.append(_event(MessageStart(message=message)))

    def _tool_delta(self, out: list[NativeEvent], call: ToolCallDelta) -> None:
        function = call.function
        block = self._tools.get(call.index)
        if block is None:
            name = function.name if function is not None else None
            start = ContentBlock(type="tool_use", id=call.id or "", name=name or "", input=msgspec.Raw(b"{}"))
            block = self._tools[call.index] = self._start(out, start, "tool_use")
        if function is not None and function.arguments:
            if block != self._open:
                raise wire.InvalidAnswer("tool-call deltas interleave; Anthropic streams one block at a time")
            json_delta = BlockDelta(type="input_json_delta", partial_json=function.arguments)
            out.append(_event(ContentBlockDelta(index=block, delta=json_delta)))

    def _start(self, out: list[NativeEvent], block: ContentBlock, kind: Literal["text", "tool_use"]) -> int:
        self._close(out)
        index = self._blocks
        self._blocks += 1
        self._open, self._open_kind = index, kind
        out.append(_event(ContentBlockStart(index=index, content_block=block)))
        return index

    def _close(self, out: list[NativeEvent]) -> None:
        if self._open is not None:
            out.append(_event(ContentBlockStop(index=self._open)))
            self._open, self._open_kind = None, None
