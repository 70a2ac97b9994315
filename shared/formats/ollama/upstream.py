"""Towards Ollama: the internal request as an ``/api/chat`` body, and Ollama's answers back.

What the provider adapter calls; the mapping rules are in :mod:`shared.formats.ollama`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, assert_never

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
    Message,
    ResponseFormat,
    ResponseMessage,
    SystemMessage,
    TextFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoiceFunction,
    ToolMessage,
    Usage,
    UserMessage,
)
from shared.errors import InvalidRequest
from shared.formats.images import parse_data_uri
from shared.formats.ollama import wire
from shared.formats.ollama.wire import UnusableAnswer

# ---------------------------------------------------------------- requests


def unsupported_parameter(request: ChatCompletionRequest) -> tuple[str, str] | None:
    """The first parameter Ollama cannot honour, as ``(param, what it asks for)``, or ``None``."""
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction) or choice == "required":
        return "tool_choice", "forcing a tool call (Ollama has no tool_choice; use auto or none)"
    if request.parallel_tool_calls is False:
        return "parallel_tool_calls", "parallel_tool_calls: false (the model decides how many tools to call)"
    for param, asked in (
        ("logit_bias", bool(request.logit_bias)),
        ("logprobs", bool(request.logprobs)),
        ("top_logprobs", request.top_logprobs is not None),
    ):
        if asked:
            return param, param
    return None


def request_to_native(
    request: ChatCompletionRequest,
    model: str,
    *,
    num_ctx: int | None = None,
    keep_alive: str | int | None = None,
    think: bool | str | None = None,
) -> bytes:
    """The ``/api/chat`` body for ``request``; check :func:`unsupported_parameter` first.

    ``num_ctx``, ``keep_alive`` and ``think`` are the endpoint's settings, sent as given.
    Raises :class:`InvalidRequest` naming the field for an image URL or tool arguments
    that are not a JSON object.
    """
    options: dict[str, Any] = {} if num_ctx is None else {"num_ctx": num_ctx}
    for name, value in (
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("seed", request.seed),
        ("num_predict", request.output_token_limit),
        ("presence_penalty", request.presence_penalty),
        ("frequency_penalty", request.frequency_penalty),
    ):
        if value is not None:
            options[name] = value
    if request.stop is not None:
        options["stop"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    native = wire.ChatRequest(
        model=model,
        messages=_map_messages(request.messages),
        stream=request.stream,
        tools=_map_tools(request),
        format=_map_format(request.response_format),
        options=options or None,
        keep_alive=keep_alive,
        think=think,
    )
    return wire.encoder.encode(native)


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def _map_messages(messages: list[Message]) -> list[wire.Message]:
    out: list[wire.Message] = []
    tool_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        match message:
            case SystemMessage() | DeveloperMessage():
                out.append(wire.Message(role="system", content=_text(message.content)))
            case UserMessage():
                out.append(_map_user(message, f"messages[{i}]"))
            case AssistantMessage():
                calls: list[wire.ToolCall] = []
                for k, call in enumerate(message.tool_calls or []):
                    tool_names[call.id] = call.function.name
                    arguments = _parse_arguments(call.function.arguments, f"messages[{i}].tool_calls[{k}].function")
                    function = wire.Function(name=call.function.name, arguments=arguments)
                    calls.append(wire.ToolCall(id=call.id, function=function))
                content = _text(message.content) if message.content is not None else ""
                out.append(wire.Message(role="assistant", content=content, tool_calls=calls or None))
            case ToolMessage():
                out.append(
                    wire.Message(
                        role="tool",
                        content=_text(message.content),
                        tool_name=tool_names.get(message.tool_call_id),
                        tool_call_id=message.tool_call_id,
                    )
                )
            case _:
                assert_never(message)
    return out


def _map_user(message: UserMessage, path: str) -> wire.Message:
    if isinstance(message.content, str):
        return wire.Message(role="user", content=message.content)
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(message.content):
        match part:
            case TextPart():
                texts.append(part.text)
            case ImagePart():
                images.append(_image_base64(part.image_url.url, f"{path}.content[{j}].image_url.url"))
            case _:
                assert_never(part)
    return wire.Message(role="user", content="\n".join(texts), images=images or None)


def _image_base64(url: str, param: str) -> str:
    """The base64 payload of a ``data:`` URI (RFC 2397: ``data:<type>[;param]*;base64,<payload>``).

    Parsed by :func:`shared.formats.images.parse_data_uri`, the rule every format shares.
    """
    parsed = parse_data_uri(url, param)
    if parsed is None:
        raise InvalidRequest(
            f"{param}: the ollama provider takes images only as base64 data: URIs, not URLs",
            code="unsupported_image_url",
            param=param,
        )
    return parsed.data


def _parse_arguments(raw: str, path: str) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as the object Ollama wants."""
    if not raw.strip():
        return {}
    try:
        return wire.arguments_decoder.decode(raw)
    except msgspec.MsgspecError:
        param = f"{path}.arguments"
        raise InvalidRequest(
            f"{param}: must be a JSON object for the ollama provider", code="invalid_tool_arguments", param=param
        ) from None


def _map_tools(request: ChatCompletionRequest) -> list[Tool] | None:
    if not request.tools or request.tool_choice == "none":
        return None  # "none": the model gets no tools to call
    return [
        Tool(function=msgspec.structs.replace(t.function, strict=None)) if t.function.strict is not None else t
        for t in request.tools
    ]


def _map_format(response_format: ResponseFormat | None) -> str | dict[str, Any] | None:
    match response_format:
        case None | TextFormat():
            return None
        case JsonObjectFormat():
            return "json"
        case JsonSchemaResponseFormat():
            schema = response_format.json_schema.schema
            return schema if schema is not None else "json"
        case _:
            assert_never(response_format)


# ---------------------------------------------------------------- answers


def response_from_native(body: bytes) -> wire.ChatResponse:
    """One answer or stream line; raises :class:`UnusableAnswer` for an error body or a malformed one."""
    try:
        return wire.response_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        try:
            error = wire.error_decoder.decode(body).error
        except msgspec.MsgspecError:
            raise UnusableAnswer(f"malformed answer: {exc}") from None
        raise UnusableAnswer(f"upstream error in a 200 answer: {error}") from None


def completion_from_native(body: bytes, model: str) -> ChatCompletion:
    """A ``stream: false`` answer as a completion (``model`` when the answer names none)."""
    parsed = response_from_native(body)
    if not parsed.done or parsed.message is None:
        raise UnusableAnswer("malformed answer: no message with done: true")
    calls = _map_tool_calls(parsed.message.tool_calls)
    text = parsed.message.content
    content = (text or None) if calls else (text or "")  # OpenAI: null only beside tool calls
    choice = Choice(
        index=0,
        message=ResponseMessage(content=content, tool_calls=calls or None),
        finish_reason=_map_finish_reason(parsed.done_reason, tool_calls=bool(calls)),
    )
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=parsed.model or model,
        choices=[choice],
        usage=_map_usage(parsed),
    )


class StreamCursor:
    """What one stream remembers between lines."""

    __slots__ = ("created", "id", "model", "started", "tool_calls")

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.started = False
        self.tool_calls = 0
        """Tool calls seen so far: the index of the next one."""

    def chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)


def chunks_from_native(line: wire.ChatResponse, cursor: StreamCursor) -> list[ChatCompletionChunk]:
    """One stream line as the chunks it stands for: none, one, or also the finish and usage chunks."""
    cursor.model = line.model or cursor.model
    chunks: list[ChatCompletionChunk] = []
    message = line.message
    calls = _map_tool_calls(message.tool_calls if message else None)
    deltas = [
        ToolCallDelta(
            index=cursor.tool_calls + i,
            id=call.id,
            type="function",
            function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
        )
        for i, call in enumerate(calls)
    ]
    cursor.tool_calls += len(calls)
    content = message.content if message and message.content else None
    if content or deltas or not cursor.started:
        delta = Delta(role=None if cursor.started else "assistant", content=content, tool_calls=deltas or None)
        cursor.started = True
        chunks.append(cursor.chunk([ChunkChoice(index=0, delta=delta)]))
    if line.done:
        finish = _map_finish_reason(line.done_reason, tool_calls=cursor.tool_calls > 0)
        chunks.append(cursor.chunk([ChunkChoice(index=0, delta=Delta(), finish_reason=finish)]))
        usage = _map_usage(line)
        if usage is not None:
            chunks.append(cursor.chunk([], usage))
    return chunks


def _map_tool_calls(calls: list[wire.ToolCall] | None) -> list[ToolCall]:
    return [
        ToolCall(
            id=call.id or f"call_{uuid.uuid4().hex[:24]}",
            function=FunctionCall(
                name=call.function.name, arguments=wire.encoder.encode(call.function.arguments).decode()
            ),
        )
        for call in calls or []
    ]


def _map_finish_reason(done_reason: str | None, *, tool_calls: bool) -> FinishReason:
    """Ollama says ``stop`` even when the model called tools; OpenAI says ``tool_calls``."""
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"  # stop, load, unload, or absent


def _map_usage(parsed: wire.ChatResponse) -> Usage | None:
    if not parsed.done or (parsed.prompt_eval_count is None and parsed.eval_count is None):
        return None
    # Ollama omits prompt_eval_count when the whole prompt came from its cache.
    prompt, completion = parsed.prompt_eval_count or 0, parsed.eval_count or 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
