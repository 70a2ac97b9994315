"""Serving Gemini's format: a client's ``generateContent`` body in, answers out in Gemini's shape.

What an HTTP ingress that accepts Gemini's format uses: :func:`request_from_native`
for the body, :func:`completion_to_native` for a whole answer, :class:`ChunkWriter`
for ``streamGenerateContent`` events (and :func:`~shared.formats.gemini.wire.error_to_native`
for errors). The rules are in the package docstring (:mod:`shared.formats.gemini`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Literal

import msgspec

from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ContentPart,
    FinishReason,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaResponseFormat,
    Message,
    ResponseFormat,
    StreamOptions,
    SystemMessage,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceFunction,
    ToolChoiceFunctionName,
    ToolMessage,
    Usage,
    UserMessage,
    encoder,
    invalid_field,
)
from shared.chat import FunctionCall as InternalFunctionCall
from shared.errors import InvalidRequest
from shared.formats.gemini.schema import schema_from_native
from shared.formats.gemini.wire import (
    Candidate,
    Content,
    FunctionCall,
    GenerateContentRequest,
    GenerateContentResponse,
    GenerationConfig,
    Part,
    ToolConfig,
    UsageMetadata,
    call_id,
    request_decoder,
    signature_from_id,
)

Effort = Literal["minimal", "low", "medium", "high"]
_FINISH_TO_NATIVE: dict[FinishReason, str] = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}
_OPAQUE = frozenset(
    "args response parameters parametersJsonSchema parameters_json_schema responseSchema response_schema "
    "responseJsonSchema response_json_schema".split()
)
"""Keys whose values are the client's own data (arguments, results, schemas): never renamed."""
_REPEATED = frozenset("contents parts tools functionDeclarations safetySettings stopSequences".split())
_SNAKE_KEY = re.compile(rb'"[A-Za-z0-9]+_[A-Za-z0-9_]*"\s*:')

# ---------------------------------------------------------------- request


def request_from_native(body: bytes, *, model: str | None = None, stream: bool = False) -> ChatCompletionRequest:
    """A client's ``generateContent`` body as an internal request; ``model`` is the one in the URL
    and ``stream`` whether it came to ``streamGenerateContent``. Raises
    :class:`~shared.errors.InvalidRequest` naming the native field at fault."""
    native = _decode_request(body)
    messages = _map_messages(native)
    generation = native.generation_config or GenerationConfig()
    tools = _map_tools(native)
    name = model or (native.model.removeprefix("models/") if native.model else None)
    return ChatCompletionRequest(
        messages=messages,
        model=name,
        tools=tools,
        tool_choice=_map_tool_choice(native.tool_config),
        temperature=generation.temperature,
        top_p=generation.top_p,
        max_completion_tokens=generation.max_output_tokens,
        stop=generation.stop_sequences or None,
        response_format=_map_response_format(generation),
        seed=generation.seed,
        stream=stream,
        stream_options=StreamOptions(include_usage=True) if stream else None,
        presence_penalty=generation.presence_penalty,
        frequency_penalty=generation.frequency_penalty,
        reasoning_effort=_map_reasoning(generation),
    )


def _decode_request(body: bytes) -> GenerateContentRequest:
    """Straight into the structs when the body is spelled as the reference spells it; else through
    :func:`_normalize`. Answer structs ignore unknown fields, so a snake_case part name would be
    dropped silently: any snake_case key sends the body the slow way (user data inside may too;
    the slow way leaves it as it is)."""
    try:
        if _SNAKE_KEY.search(body) is None:
            return request_decoder.decode(body)
        raw = msgspec.json.decode(body)
    except msgspec.ValidationError:
        raw = msgspec.json.decode(body)  # valid JSON, the wrong shape: perhaps a lone object for a list
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    try:
        return msgspec.convert(_normalize(raw), GenerateContentRequest)
    except msgspec.ValidationError as exc:
        raise invalid_field(exc) from None


def _normalize(value: Any) -> Any:
    """snake_case names as camelCase, and a lone object where a list belongs as a list of one
    (proto JSON allows both; Google's cookbook sends ``"parts": {"text": ...}``)."""
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        head, *rest = str(key).split("_")
        name = head + "".join(word[:1].upper() + word[1:] for word in rest)
        if key in _OPAQUE:
            out[name] = item
            continue
        if name in _REPEATED and not isinstance(item, list):
            item = [item]
        out[name] = _normalize(item)
    return out


class _Calls:
    """Ids for the conversation's function calls, and which are still unanswered."""

    def __init__(self) -> None:
        self.count = 0
        self.pending: dict[str, list[str]] = defaultdict(list)  # function name -> ids, oldest first

    def made(self, part: Part, call: FunctionCall) -> ToolCall:
        arguments = encoder.encode(call.args or {}).decode()
        tool_call_id = call.id or call_id(None, self.count, call.name, arguments, part.thought_signature)
        self.count += 1
        self.pending[call.name].append(tool_call_id)
        return ToolCall(id=tool_call_id, function=InternalFunctionCall(name=call.name, arguments=arguments))

    def answered(self, name: str, response_id: str | None, param: str) -> str:
        waiting = self.pending.get(name) or []
        if response_id is not None and response_id in waiting:
            waiting.remove(response_id)
            return response_id
        if not waiting:
            raise InvalidRequest(f"{param}: no earlier functionCall of {name!r} is unanswered", param=param)
        return waiting.pop(0)


def _map_messages(native: GenerateContentRequest) -> list[Message]:
    messages: list[Message] = []
    if native.system_instruction is not None:
        texts = []
        for j, part in enumerate(native.system_instruction.parts):
            if part.text is None:
                param = f"systemInstruction.parts[{j}]"
                raise InvalidRequest(f"{param}: the system instruction takes text parts only", param=param)
            texts.append(part.text)
        if texts:
            messages.append(SystemMessage(content=texts[0] if len(texts) == 1 else [TextPart(text=t) for t in texts]))
    calls = _Calls()
    for i, content in enumerate(native.contents):
        if not content.parts:
            raise InvalidRequest(f"contents[{i}].parts: must not be empty", param=f"contents[{i}].parts")
        role = content.role or "user"
        if role == "model":
            messages.extend(_model_turn(content, i, calls))
        elif role in ("user", "function"):
            messages.extend(_user_turn(content, i, calls))
        else:
            param = f"contents[{i}].role"
            raise InvalidRequest(f"{param}: expected user or model, got {role!r}", param=param)
    if not native.contents:
        raise InvalidRequest("contents: at least one turn is needed", param="contents")
    return messages


def _model_turn(content: Content, i: int, calls: _Calls) -> list[Message]:
    texts: list[str] = []
    tool_calls: list[ToolCall] = []
    for j, part in enumerate(content.parts):
        if part.function_call is not None:
            tool_calls.append(calls.made(part, part.function_call))
        elif part.text is not None:
            if part.text and not part.thought:  # Gemini 3 may end a turn on an empty, signed text part
                texts.append(part.text)
        else:
            param = f"contents[{i}].parts[{j}]"
            raise InvalidRequest(f"{param}: a model turn holds text and function calls only", param=param)
    if not texts and not tool_calls:
        return []  # only thoughts: nothing a model on another API could use
    text: str | list[TextPart] | None = None
    if texts:
        text = texts[0] if len(texts) == 1 else [TextPart(text=t) for t in texts]
    return [AssistantMessage(content=text, tool_calls=tool_calls or None)]


def _user_turn(content: Content, i: int, calls: _Calls) -> list[Message]:
    messages: list[Message] = []
    pieces: list[ContentPart] = []

    def flush() -> None:
        if pieces:
            first = pieces[0]
            text_only = len(pieces) == 1 and isinstance(first, TextPart)
            messages.append(
                UserMessage(content=first.text if isinstance(first, TextPart) and text_only else list(pieces))
            )
            pieces.clear()

    for j, part in enumerate(content.parts):
        param = f"contents[{i}].parts[{j}]"
        if part.text is not None:
            pieces.append(TextPart(text=part.text))
        elif part.inline_data is not None:
            _image_only(part.inline_data.mime_type, f"{param}.inlineData.mimeType")
            url = f"data:{part.inline_data.mime_type};base64,{part.inline_data.data}"
            pieces.append(ImagePart(image_url=ImageURL(url=url)))
        elif part.file_data is not None:
            _image_only(part.file_data.mime_type, f"{param}.fileData.mimeType")
            pieces.append(ImagePart(image_url=ImageURL(url=part.file_data.file_uri)))
        elif part.function_response is not None:
            flush()
            result = part.function_response
            tool_call_id = calls.answered(result.name, result.id, f"{param}.functionResponse.name")
            messages.append(ToolMessage(tool_call_id=tool_call_id, content=_result_text(result.response)))
        else:
            raise InvalidRequest(
                f"{param}: unsupported part; a user turn takes text, images (inlineData, fileData) "
                "and functionResponse",
                param=param,
            )
    flush()
    return messages


def _image_only(mime: str | None, param: str) -> None:
    if mime is not None and not mime.lower().startswith("image/"):
        raise InvalidRequest(f"{param}: only images are passed on, not {mime!r}", param=param)


def _result_text(response: dict[str, Any]) -> str:
    """``{"output": text}`` (how modelbus sends a text result) is the text; any other object its JSON."""
    output = response.get("output")
    if len(response) == 1 and isinstance(output, str):
        return output
    return encoder.encode(response).decode()


def _map_tools(native: GenerateContentRequest) -> list[Tool] | None:
    tools: list[Tool] = []
    for i, tool in enumerate(native.tools or []):
        for j, declaration in enumerate(tool.function_declarations):
            parameters = declaration.parameters_json_schema
            if parameters is not None and declaration.parameters is not None:
                param = f"tools[{i}].functionDeclarations[{j}].parametersJsonSchema"
                raise InvalidRequest(f"{param}: give parameters or parametersJsonSchema, not both", param=param)
            if declaration.parameters is not None:
                parameters = schema_from_native(declaration.parameters)
            function = FunctionDefinition(
                name=declaration.name, description=declaration.description, parameters=parameters
            )
            tools.append(Tool(function=function))
    return tools or None


def _map_tool_choice(config: ToolConfig | None) -> ToolChoice | None:
    calling = config.function_calling_config if config is not None else None
    if calling is None or calling.mode in (None, "MODE_UNSPECIFIED"):
        return None
    if calling.mode == "AUTO":
        return "auto"
    if calling.mode == "NONE":
        return "none"
    names = calling.allowed_function_names or []
    if not names:
        return "required"
    if len(names) > 1:
        param = "toolConfig.functionCallingConfig.allowedFunctionNames"
        raise InvalidRequest(f"{param}: modelbus can force one function, not a choice of several", param=param)
    return ToolChoiceFunction(function=ToolChoiceFunctionName(name=names[0]))


def _map_response_format(config: GenerationConfig) -> ResponseFormat | None:
    schema = config.response_json_schema
    if schema is None and config.response_schema is not None:
        schema = schema_from_native(config.response_schema)
    mime = config.response_mime_type
    if mime in (None, "text/plain"):
        if schema is not None:
            param = "generationConfig.responseMimeType"
            raise InvalidRequest(f"{param}: a response schema needs application/json", param=param)
        return None
    if mime != "application/json":
        param = "generationConfig.responseMimeType"
        raise InvalidRequest(f"{param}: text/plain or application/json, not {mime!r}", param=param)
    if schema is None:
        return JsonObjectFormat()
    return JsonSchemaResponseFormat(json_schema=JsonSchemaFormat(name="response", schema=schema))


def _map_reasoning(config: GenerationConfig) -> Effort | None:
    """``thinkingLevel`` as is; a ``thinkingBudget`` to the nearest effort (``-1``, dynamic, is unset)."""
    thinking = config.thinking_config
    if thinking is None:
        return None
    if thinking.thinking_level is not None:
        return thinking.thinking_level
    budget = thinking.thinking_budget
    if budget is None or budget < 0:
        return None
    if budget == 0:
        return "minimal"
    return "low" if budget <= 1024 else "medium" if budget <= 8192 else "high"


# ---------------------------------------------------------------- answers


def completion_to_native(completion: ChatCompletion) -> bytes:
    """A ``chat.completion`` as a ``generateContent`` answer."""
    candidates: list[Candidate] = []
    for choice in completion.choices[:1]:
        message = choice.message
        texts = [text for text in (message.content, message.refusal) if text]
        parts = [Part(text=text) for text in texts]
        malformed = _add_calls(parts, [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []])
        candidates.append(_candidate(parts, choice.finish_reason, malformed))
    answer = GenerateContentResponse(
        candidates=candidates,
        usage_metadata=_usage_to_native(completion.usage) if completion.usage else None,
        model_version=completion.model,
        response_id=completion.id.removeprefix("chatcmpl-"),
    )
    return encoder.encode(answer)


def _add_calls(parts: list[Part], calls: list[tuple[str, str, str]]) -> str | None:
    """Append function call parts; the name of the first call whose arguments are not a JSON
    object is returned (and that call left out), as Gemini reports ``MALFORMED_FUNCTION_CALL``."""
    malformed: str | None = None
    for tool_call_id, name, arguments in calls:
        try:
            args = msgspec.json.decode(arguments or "{}")
        except msgspec.DecodeError:
            args = None
        if not isinstance(args, dict):
            malformed = malformed or name
            continue
        call = FunctionCall(name=name, args=args)
        parts.append(Part(function_call=call, thought_signature=signature_from_id(tool_call_id)))
    return malformed


def _candidate(parts: list[Part], finish: FinishReason | None, malformed: str | None) -> Candidate:
    if malformed is not None:
        message = f"Malformed function call: {malformed}"
        return Candidate(
            content=Content(role="model", parts=parts),
            finish_reason="MALFORMED_FUNCTION_CALL",
            finish_message=message,
            index=0,
        )
    reason = _FINISH_TO_NATIVE[finish] if finish is not None else None
    return Candidate(content=Content(role="model", parts=parts), finish_reason=reason, index=0)


def _usage_to_native(usage: Usage) -> UsageMetadata:
    details = usage.completion_tokens_details
    thoughts = details.reasoning_tokens if details is not None else None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details is not None else None
    return UsageMetadata(
        prompt_token_count=usage.prompt_tokens,
        candidates_token_count=usage.completion_tokens - (thoughts or 0),
        total_token_count=usage.total_tokens,
        cached_content_token_count=cached,
        thoughts_token_count=thoughts,
    )


class ChunkWriter:
    """``chat.completion.chunk`` objects as ``streamGenerateContent`` events, for one stream.

    Text goes out as it comes; a tool call's fragments are gathered and go out whole
    (Gemini sends a call in one part) with the finish reason; the usage chunk becomes
    an event with ``usageMetadata`` only. Each event is the data of one server-sent
    event (the ingress writes ``data: <event>\\r\\n\\r\\n``).
    """

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        self._model = ""
        self._response_id = ""

    def feed(self, chunk: ChatCompletionChunk) -> list[bytes]:
        """The events ``chunk`` completes (none, or one)."""
        self._model, self._response_id = chunk.model, chunk.id.removeprefix("chatcmpl-")
        parts: list[Part] = []
        candidates: list[Candidate] = []
        for choice in chunk.choices[:1]:
            delta = choice.delta
            parts.extend(Part(text=text) for text in (delta.content, delta.refusal) if text)
            for piece in delta.tool_calls or []:
                call = self._calls.setdefault(piece.index, ["", "", ""])
                call[0] = piece.id or call[0]
                if piece.function is not None:
                    call[1] = piece.function.name or call[1]
                    call[2] += piece.function.arguments or ""
            if choice.finish_reason is not None:
                malformed = self._flush(parts)
                candidates.append(_candidate(parts, choice.finish_reason, malformed))
            elif parts:
                candidates.append(Candidate(content=Content(role="model", parts=parts), index=0))
        usage = _usage_to_native(chunk.usage) if chunk.usage is not None else None
        if not candidates and usage is None:
            return []
        return [self._event(candidates, usage)]

    def close(self) -> list[bytes]:
        """The events still owed when the stream ends without a finish reason (gathered calls)."""
        parts: list[Part] = []
        malformed = self._flush(parts)
        if not parts and malformed is None:
            return []
        candidate = _candidate(parts, None, malformed)
        return [self._event([candidate], None)]

    def _flush(self, parts: list[Part]) -> str | None:
        calls = [(c[0], c[1], c[2]) for _, c in sorted(self._calls.items())]
        self._calls.clear()
        return _add_calls(parts, calls)

    def _event(self, candidates: list[Candidate], usage: UsageMetadata | None) -> bytes:
        answer = GenerateContentResponse(
            candidates=candidates, usage_metadata=usage, model_version=self._model, response_id=self._response_id
        )
        return encoder.encode(answer)
