"""From Ollama's format: a client's ``/api/chat`` request as the internal one, and answers back.

What an HTTP ingress that speaks Ollama's API to its clients calls; the rules
(what is dropped, what is a 400) are in :mod:`shared.formats.ollama`.
"""

from __future__ import annotations

import datetime
from typing import Any, assert_never

import msgspec

from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ContentPart,
    FinishReason,
    FunctionCall,
    ImagePart,
    ImageURL,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaResponseFormat,
    Message,
    ResponseFormat,
    ResponseMessage,
    StreamOptions,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
    decode_client_body,
    invalid_field,
)
from shared.errors import InvalidRequest
from shared.formats.ollama import wire
from shared.formats.ollama.wire import RUNTIME_OPTIONS, UnusableAnswer

# ---------------------------------------------------------------- requests


def request_from_native(body: bytes) -> ChatCompletionRequest:
    """A client's ``/api/chat`` body as the internal request; raises :class:`InvalidRequest` naming the field."""
    native = decode_client_body(wire.request_decoder, body)
    if not native.messages:
        raise InvalidRequest("messages: must not be empty (loading a model is not a chat)", param="messages")
    sampling = _sampling(native.options or {})
    limit = sampling.num_predict
    if limit is not None and limit < 1 and limit not in (-1, -2):
        raise InvalidRequest(
            "options.num_predict: must be positive, or -1/-2 for no limit", param="options.num_predict"
        )
    stream = native.stream is not False  # Ollama streams unless told not to
    return ChatCompletionRequest(
        messages=_messages(native.messages),
        model=native.model,
        tools=native.tools or None,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=limit if limit is not None and limit > 0 else None,
        stop=sampling.stop,
        response_format=_response_format(native.format),
        seed=sampling.seed,
        stream=stream,
        stream_options=StreamOptions(include_usage=True) if stream else None,  # the done line has the counts
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
    )


def _sampling(options: dict[str, Any]) -> wire.Sampling:
    for key in options:
        if key not in wire.Sampling.__struct_fields__ and key not in RUNTIME_OPTIONS:
            param = f"options.{key}"
            raise InvalidRequest(
                f"{param}: has no equivalent in modelbus's chat contract", code="unsupported_parameter", param=param
            )
    try:
        return msgspec.convert({k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}, wire.Sampling)
    except msgspec.ValidationError as exc:
        raise invalid_field(exc, "options") from None


def _messages(messages: list[wire.Message]) -> list[Message]:
    out: list[Message] = []
    unanswered: list[tuple[str, str]] = []  # (tool name, call id) of calls without a result yet, oldest first
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if m.images and m.role != "user":
            raise InvalidRequest(f"{path}.images: only user messages carry images", param=f"{path}.images")
        text = m.content or ""
        match m.role:
            case "system":
                out.append(SystemMessage(content=text))
            case "user":
                images: list[ContentPart] = [
                    ImagePart(image_url=ImageURL(url=f"data:{_sniff_mime(b64)};base64,{b64}")) for b64 in m.images or []
                ]
                out.append(UserMessage(content=[TextPart(text=text), *images] if images else text))
            case "assistant":
                calls = [
                    ToolCall(
                        id=call.id or f"call_{i}_{k}",
                        function=FunctionCall(
                            name=call.function.name, arguments=wire.encoder.encode(call.function.arguments).decode()
                        ),
                    )
                    for k, call in enumerate(m.tool_calls or [])
                ]
                unanswered += [(call.function.name, call.id) for call in calls]
                out.append(AssistantMessage(content=(text or None) if calls else text, tool_calls=calls or None))
            case "tool":
                out.append(ToolMessage(content=text, tool_call_id=_answered_call(m, unanswered, path)))
            case None:
                raise InvalidRequest(f"{path}.role: is required", param=f"{path}.role")
            case _:
                assert_never(m.role)
    return out


def _answered_call(message: wire.Message, unanswered: list[tuple[str, str]], path: str) -> str:
    """The id of the call a tool result answers: its own ``tool_call_id``, else the oldest by ``tool_name``."""
    for k, (name, call_id) in enumerate(unanswered):
        if call_id == message.tool_call_id or (message.tool_call_id is None and name == message.tool_name):
            del unanswered[k]
            return call_id
    if message.tool_call_id is not None:
        return message.tool_call_id
    param = f"{path}.tool_name"
    raise InvalidRequest(f"{param}: answers no earlier tool call named {message.tool_name!r}", param=param)


_MAGIC = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


def _sniff_mime(b64: str) -> str:
    """The media type from the payload's first bytes (Ollama's images carry none)."""
    return next((mime for prefix, mime in _MAGIC if b64.startswith(prefix)), "application/octet-stream")


def _response_format(fmt: str | dict[str, Any] | None) -> ResponseFormat | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JsonObjectFormat()
    if isinstance(fmt, dict):
        return JsonSchemaResponseFormat(json_schema=JsonSchemaFormat(name="response", schema=fmt))
    raise InvalidRequest(f'format: must be "json" or a JSON Schema, not {fmt!r}', param="format")


# ---------------------------------------------------------------- answers


def completion_to_native(completion: ChatCompletion) -> bytes:
    """A completion as a ``stream: false`` answer body; :class:`UnusableAnswer` if its tool
    arguments are not a JSON object (Ollama's clients expect one)."""
    choice = completion.choices[0] if completion.choices else None
    message = choice.message if choice else ResponseMessage(content="")
    calls = [_native_call(call) for call in message.tool_calls or []]
    usage = completion.usage
    return wire.encoder.encode(
        wire.ChatResponse(
            model=completion.model,
            created_at=_rfc3339(completion.created),
            message=wire.Message(role="assistant", content=message.content or "", tool_calls=calls or None),
            done=True,
            done_reason=_done_reason(choice.finish_reason if choice else None),
            prompt_eval_count=usage.prompt_tokens if usage else None,
            eval_count=usage.completion_tokens if usage else None,
        )
    )


def error_to_native(message: str) -> bytes:
    """An error body, or the error line that ends a stream."""
    return wire.encoder.encode(wire.ErrorResponse(error=message))


class NativeStream:
    """The chunks of one internal stream as Ollama's NDJSON lines, in order.

    Content goes out as it comes. Tool-call fragments are joined and go out
    whole, in one line before the ``done`` line (Ollama sends calls whole);
    the ``done`` line waits for the usage chunk, or :meth:`close`, so it can
    carry the counts.
    """

    def __init__(self) -> None:
        self._model = ""
        self._created = 0
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        self._finish: FinishReason | None = None
        self._done = False

    def lines(self, chunk: ChatCompletionChunk) -> list[bytes]:
        """The lines ``chunk`` stands for, each ending in ``\\n``."""
        self._model, self._created = chunk.model, chunk.created
        out: list[bytes] = []
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                out.append(self._line(wire.Message(role="assistant", content=delta.content), done=False))
            for call in delta.tool_calls or []:
                held = self._calls.setdefault(call.index, ["", "", ""])
                held[0] = call.id or held[0]
                if call.function is not None:
                    held[1] = call.function.name or held[1]
                    held[2] += call.function.arguments or ""
            self._finish = choice.finish_reason or self._finish
        if chunk.usage is not None and self._finish is not None and not self._done:
            out += self._final(chunk.usage)
        return out

    def close(self) -> list[bytes]:
        """What is still owed when the internal stream ends: the ``done`` line, unless it went out."""
        return [] if self._done else self._final(None)

    def _final(self, usage: Usage | None) -> list[bytes]:
        self._done = True
        out: list[bytes] = []
        if self._calls:
            calls = [
                _native_call(ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments)))
                for call_id, name, arguments in (self._calls[k] for k in sorted(self._calls))
            ]
            out.append(self._line(wire.Message(role="assistant", content="", tool_calls=calls), done=False))
        reason = _done_reason(self._finish)
        message = wire.Message(role="assistant", content="")
        if usage is None:
            out.append(self._line(message, done=True, done_reason=reason))
        else:
            counts = {"prompt_eval_count": usage.prompt_tokens, "eval_count": usage.completion_tokens}
            out.append(self._line(message, done=True, done_reason=reason, **counts))
        return out

    def _line(self, message: wire.Message, **fields: Any) -> bytes:
        line = wire.ChatResponse(model=self._model, created_at=_rfc3339(self._created), message=message, **fields)
        return wire.encoder.encode(line) + b"\n"


def _native_call(call: ToolCall) -> wire.ToolCall:
    raw = call.function.arguments
    try:
        arguments = wire.arguments_decoder.decode(raw) if raw.strip() else {}
    except msgspec.MsgspecError:
        raise UnusableAnswer(f"tool call {call.id!r}: arguments are not a JSON object") from None
    return wire.ToolCall(id=call.id or None, function=wire.Function(name=call.function.name, arguments=arguments))


def _done_reason(finish: FinishReason | None) -> str:
    """Ollama knows ``stop`` and ``length`` only: a tool call or a filter is a ``stop``."""
    return "length" if finish == "length" else "stop"


def _rfc3339(created: int) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat().replace("+00:00", "Z")
