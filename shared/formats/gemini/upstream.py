"""Calling Gemini: an internal request as a ``generateContent`` body, and Gemini's answers back.

What a provider adapter uses: :func:`request_to_native` for the body,
:func:`completion_from_native` for a whole answer and :class:`ChunkReader` for a
stream. The rules are in the package docstring (:mod:`shared.formats.gemini`).

Upstream answers that cannot be used raise: ``msgspec.MsgspecError`` when the
body is not an answer, :class:`ErrorInAnswer` when it is Google's error object,
:class:`UnusableAnswer` when it decodes but says nothing usable. The adapter
turns each into the right :class:`~shared.errors.ProviderError`.
"""

from __future__ import annotations

import mimetypes
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal, assert_never
from urllib.parse import urlsplit

import msgspec

from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionTokensDetails,
    ContentPart,
    Delta,
    DeveloperMessage,
    FinishReason,
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
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceFunction,
    ToolMessage,
    Usage,
    UserMessage,
    encoder,
)
from shared.chat import FunctionCall as InternalFunctionCall
from shared.errors import InvalidRequest
from shared.formats.gemini.schema import schema_to_native
from shared.formats.gemini.wire import (
    SAFETY_CATEGORIES,
    Blob,
    Candidate,
    Content,
    ErrorInAnswer,
    FileData,
    FunctionCall,
    FunctionCallingConfig,
    FunctionDeclaration,
    FunctionResponse,
    GenerateContentRequest,
    GenerateContentResponse,
    GenerationConfig,
    Part,
    SafetySetting,
    ThinkingConfig,
    ToolConfig,
    UnusableAnswer,
    UsageMetadata,
    call_id,
    error_status,
    response_decoder,
    signature_from_id,
    stream_array_decoder,
)
from shared.formats.gemini.wire import Tool as NativeTool
from shared.formats.images import parse_data_uri

THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
"""``reasoning_effort`` → ``thinkingBudget``, Google's own OpenAI mapping
(https://ai.google.dev/gemini-api/docs/openai#thinking)."""
FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        "SAFETY RECITATION LANGUAGE BLOCKLIST PROHIBITED_CONTENT SPII IMAGE_SAFETY IMAGE_PROHIBITED_CONTENT "
        "IMAGE_RECITATION MODEL_ARMOR".split(),
        "content_filter",
    ),
}
"""Gemini finish reasons with an OpenAI counterpart; any other (``OTHER``, ...) is ``stop``."""
FAILED_CALLS = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})
"""Finish reasons meaning the model's call failed: nothing usable came back."""


# ---------------------------------------------------------------- request


def request_to_native(request: ChatCompletionRequest, *, safety_threshold: str | None = None) -> bytes:
    """The ``generateContent`` body for ``request``; ``safety_threshold`` (one of
    :data:`~shared.formats.gemini.wire.SAFETY_THRESHOLDS`) applies to all four harm categories.

    Raises :class:`~shared.errors.InvalidRequest` naming the field Gemini cannot honour.
    """
    system, contents = _map_messages(request.messages)
    generation = _map_generation_config(request)
    body = GenerateContentRequest(
        contents=contents,
        system_instruction=system,
        tools=_map_tools(request.tools),
        tool_config=_map_tool_choice(request.tool_choice, request.tools),
        generation_config=generation if generation != GenerationConfig() else None,
        safety_settings=[SafetySetting(category=c, threshold=safety_threshold) for c in SAFETY_CATEGORIES]
        if safety_threshold
        else None,
    )
    return encoder.encode(body)


def _texts(content: str | list[TextPart] | None) -> list[str]:
    if content is None:
        return []
    return [content] if isinstance(content, str) else [part.text for part in content]


def _data_uri(url: str, param: str) -> Blob | None:
    """A base64 ``data:`` URI (RFC 2397) as inline data; ``None`` for any other URL."""
    parsed = parse_data_uri(url, param)
    if parsed is None:
        return None
    if not parsed.mime:
        raise InvalidRequest(f"{param}: the data: URI must name its image type", param=param, code="invalid_image")
    return Blob(mime_type=parsed.mime, data=parsed.data)


def _image_part(url: str, param: str) -> Part:
    """``data:`` URIs inline; ``https``/``gs`` URLs by reference (Gemini fetches them:
    https://blog.google/innovation-and-ai/technology/developers-tools/gemini-api-new-file-limits)."""
    inline = _data_uri(url, param)
    if inline is not None:
        return Part(inline_data=inline)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("https", "gs"):
        raise InvalidRequest(f"{param}: Gemini takes images as data:, https:// or gs:// URIs", param=param)
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return Part(file_data=FileData(file_uri=url, mime_type=guessed))


def _user_parts(content: str | list[ContentPart], index: int) -> list[Part]:
    if isinstance(content, str):
        return [Part(text=content)]
    parts: list[Part] = []
    for j, part in enumerate(content):
        match part:
            case TextPart():
                parts.append(Part(text=part.text))
            case ImagePart():
                parts.append(_image_part(part.image_url.url, f"messages[{index}].content[{j}].image_url.url"))
            case _:
                assert_never(part)
    return parts


def _function_call_part(call: ToolCall, param: str) -> Part:
    try:
        args = msgspec.json.decode(call.function.arguments or "{}")
    except msgspec.DecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(f"{param}: arguments must be a JSON object", param=param)
    return Part(
        function_call=FunctionCall(name=call.function.name, args=args), thought_signature=signature_from_id(call.id)
    )


def _tool_result(content: str | list[TextPart]) -> dict[str, Any]:
    text = "".join(_texts(content))
    try:
        parsed = msgspec.json.decode(text)
    except msgspec.DecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"output": text}


def _map_messages(messages: Sequence[Message]) -> tuple[Content | None, list[Content]]:
    """``(systemInstruction, contents)`` for a conversation."""
    system: list[Part] = []
    contents: list[Content] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for i, message in enumerate(messages):
        match message:
            case SystemMessage() | DeveloperMessage():
                system.extend(Part(text=text) for text in _texts(message.content))
            case UserMessage():
                contents.append(Content(role="user", parts=_user_parts(message.content, i)))
            case AssistantMessage():
                parts = [Part(text=text) for text in _texts(message.content) if text]
                for j, call in enumerate(message.tool_calls or []):
                    names[call.id] = call.function.name
                    parts.append(_function_call_part(call, f"messages[{i}].tool_calls[{j}].function.arguments"))
                if parts:
                    contents.append(Content(role="model", parts=parts))
            case ToolMessage():
                name = names.get(message.tool_call_id)
                if name is None:
                    param = f"messages[{i}].tool_call_id"
                    raise InvalidRequest(
                        f"{param}: no earlier assistant tool call has id {message.tool_call_id!r}; "
                        "Gemini needs the function name of every tool result",
                        param=param,
                    )
                part = Part(function_response=FunctionResponse(name=name, response=_tool_result(message.content)))
                last = contents[-1] if contents else None
                if last is not None and last.role == "user" and last.parts[-1].function_response is not None:
                    last.parts.append(part)  # parallel results answer in one turn
                else:
                    contents.append(Content(role="user", parts=[part]))
            case _:
                assert_never(message)
    if not contents:
        raise InvalidRequest("messages: Gemini needs at least one user or assistant message", param="messages")
    return (Content(parts=system) if system else None), contents


def _map_tools(tools: list[Tool] | None) -> list[NativeTool] | None:
    if not tools:
        return None
    declarations: list[FunctionDeclaration] = []
    for i, tool in enumerate(tools):
        params = None
        if tool.function.parameters is not None:
            params = schema_to_native(tool.function.parameters, f"tools[{i}].function.parameters")
            # Gemini rejects an OBJECT schema with no properties; a function without arguments sends none.
            if not params.get("properties") and str(params.get("type", "object")).lower() == "object":
                params = None
        declarations.append(
            FunctionDeclaration(
                name=tool.function.name, description=tool.function.description or None, parameters=params
            )
        )
    return [NativeTool(function_declarations=declarations)]


def _map_tool_choice(choice: ToolChoice | None, tools: list[Tool] | None) -> ToolConfig | None:
    if choice is None:
        return None
    names = {tool.function.name for tool in tools or []}
    match choice:
        case "none" | "auto":
            mode: Literal["NONE", "AUTO"] = "NONE" if choice == "none" else "AUTO"
            return ToolConfig(function_calling_config=FunctionCallingConfig(mode=mode)) if names else None
        case "required":
            if not names:
                raise InvalidRequest("tool_choice: 'required' needs tools", param="tool_choice")
            return ToolConfig(function_calling_config=FunctionCallingConfig(mode="ANY"))
        case ToolChoiceFunction():
            name = choice.function.name
            if name not in names:
                param = "tool_choice.function.name"
                raise InvalidRequest(f"{param}: no tool named {name!r}", param=param)
            config = FunctionCallingConfig(mode="ANY", allowed_function_names=[name])
            return ToolConfig(function_calling_config=config)
        case _:
            assert_never(choice)


def _map_generation_config(request: ChatCompletionRequest) -> GenerationConfig:
    if request.logprobs:
        raise InvalidRequest("logprobs: not supported by the gemini adapter", param="logprobs")
    if request.logit_bias:
        raise InvalidRequest("logit_bias: Gemini has no logit bias", param="logit_bias")
    mime: str | None = None
    schema: dict[str, Any] | None = None
    match request.response_format:
        case None | TextFormat():
            pass
        case JsonObjectFormat():
            mime = "application/json"
        case JsonSchemaResponseFormat():
            mime = "application/json"
            if request.response_format.json_schema.schema is not None:
                schema = schema_to_native(
                    request.response_format.json_schema.schema, "response_format.json_schema.schema"
                )
        case _:
            assert_never(request.response_format)
    effort = request.reasoning_effort
    return GenerationConfig(
        temperature=request.temperature,
        top_p=request.top_p,
        max_output_tokens=request.output_token_limit,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        stop_sequences=[request.stop] if isinstance(request.stop, str) else request.stop,
        thinking_config=ThinkingConfig(thinking_budget=THINKING_BUDGET[effort]) if effort is not None else None,
        response_mime_type=mime,
        response_schema=schema,
    )


# ---------------------------------------------------------------- answers


def decode_answer(body: bytes) -> GenerateContentResponse:
    """One answer or stream event; raises :class:`ErrorInAnswer` for Google's error object
    (also in its one-element array form) and ``msgspec.MsgspecError`` for anything else."""
    try:
        answer = response_decoder.decode(body)
    except msgspec.MsgspecError:
        status = error_status(body)
        if status is None:
            raise
        raise ErrorInAnswer(status) from None
    if answer.error is not None:
        raise ErrorInAnswer(answer.error)
    return answer


def stream_from_native_array(body: bytes) -> list[GenerateContentResponse]:
    """The events of a stream sent whole as a JSON array (a server that ignores ``alt=sse``);
    a single object counts as a one-event stream. Items are not checked for errors:
    :meth:`ChunkReader.feed_answer` does that in order."""
    try:
        items = stream_array_decoder.decode(body)
    except msgspec.MsgspecError:
        decode_answer(body)  # raises ErrorInAnswer for an error body, else the decode error
        raise
    return items if isinstance(items, list) else [items]


def completion_from_native(body: bytes, model: str) -> ChatCompletion:
    """A ``generateContent`` answer as a ``chat.completion`` (``model`` when Gemini names none)."""
    answer = decode_answer(body)
    finish: FinishReason | None
    if answer.candidates:
        candidate = answer.candidates[0]
        text, calls = _map_parts(candidate, 0, answer.response_id)
        finish = _map_finish_reason(candidate, bool(calls))
    elif answer.prompt_feedback is not None and answer.prompt_feedback.block_reason:
        text, calls, finish = "", [], "content_filter"
    else:
        raise UnusableAnswer("answer has no candidates")
    message = ResponseMessage(content=text or (None if calls else ""), tool_calls=calls or None)
    return ChatCompletion(
        id=f"chatcmpl-{answer.response_id or uuid.uuid4().hex}",
        created=int(time.time()),
        model=answer.model_version or model,
        choices=[Choice(index=0, message=message, finish_reason=finish)],
        usage=_map_usage(answer.usage_metadata) if answer.usage_metadata else None,
    )


def _map_finish_reason(candidate: Candidate, has_tool_calls: bool) -> FinishReason | None:
    reason = candidate.finish_reason
    if reason is None:
        return None
    if reason in FAILED_CALLS:
        raise UnusableAnswer(f"Gemini finished with {reason}: {candidate.finish_message or 'no message'}")
    finish = FINISH.get(reason, "stop")
    return "tool_calls" if finish == "stop" and has_tool_calls else finish


def _map_usage(meta: UsageMetadata) -> Usage:
    prompt = meta.prompt_token_count + (meta.tool_use_prompt_token_count or 0)
    completion = meta.candidates_token_count + (meta.thoughts_token_count or 0)
    cached, thoughts = meta.cached_content_token_count, meta.thoughts_token_count
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=meta.total_token_count if meta.total_token_count is not None else prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached) if cached is not None else None,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=thoughts) if thoughts is not None else None,
    )


def _map_parts(candidate: Candidate, first_index: int, response_id: str | None) -> tuple[str, list[ToolCall]]:
    """The visible text and the function calls of one candidate (or chunk of it); thoughts are skipped."""
    text: list[str] = []
    calls: list[ToolCall] = []
    for part in candidate.content.parts if candidate.content else []:
        if part.function_call is not None:
            call = part.function_call
            arguments = encoder.encode(call.args or {}).decode()
            tool_call_id = call_id(response_id, first_index + len(calls), call.name, arguments, part.thought_signature)
            calls.append(ToolCall(id=tool_call_id, function=InternalFunctionCall(name=call.name, arguments=arguments)))
        elif part.text and not part.thought:
            text.append(part.text)
    return "".join(text), calls


class ChunkReader:
    """Gemini's stream events as ``chat.completion.chunk`` objects, for one stream.

    Each event becomes at most one chunk (a call arrives whole, as one delta);
    :attr:`finished` tells whether a finish reason came, and :meth:`usage_chunk`
    gives the usage chunk owed at the end (Gemini's counts are cumulative, so the
    last one counts).
    """

    __slots__ = ("created", "finished", "id", "model", "response_id", "started", "tool_calls", "usage")

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.response_id: str | None = None
        self.model = model
        self.created = int(time.time())
        self.started = False
        self.tool_calls = 0
        self.finished = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> ChatCompletionChunk | None:
        """One SSE event's data; raises like :func:`decode_answer`."""
        return self.feed_answer(decode_answer(data))

    def feed_answer(self, answer: GenerateContentResponse) -> ChatCompletionChunk | None:
        """One decoded event → one chunk (``None`` when it adds nothing)."""
        if answer.error is not None:
            raise ErrorInAnswer(answer.error)
        if self.response_id is None and answer.response_id:
            self.response_id = answer.response_id
            self.id = f"chatcmpl-{answer.response_id}"
        self.model = answer.model_version or self.model
        if answer.usage_metadata is not None:
            self.usage = _map_usage(answer.usage_metadata)
        finish: FinishReason | None = None
        text, calls = "", list[ToolCall]()
        if answer.candidates:
            candidate = answer.candidates[0]
            text, calls = _map_parts(candidate, self.tool_calls, self.response_id)
            self.tool_calls += len(calls)
            finish = _map_finish_reason(candidate, self.tool_calls > 0)
        elif answer.prompt_feedback is not None and answer.prompt_feedback.block_reason:
            finish = "content_filter"
        if not text and not calls and finish is None:
            return None
        self.finished = self.finished or finish is not None
        deltas = [
            ToolCallDelta(
                index=self.tool_calls - len(calls) + i,
                id=call.id,
                type="function",
                function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
            )
            for i, call in enumerate(calls)
        ]
        delta = Delta(role=None if self.started else "assistant", content=text or None, tool_calls=deltas or None)
        self.started = True
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

    def usage_chunk(self) -> ChatCompletionChunk | None:
        """The usage chunk (no choices) owed at the end of the stream, when Gemini sent counts."""
        if self.usage is None:
            return None
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[], usage=self.usage)
