"""Ollama's native chat API: ``POST {base_url}/api/chat``.

API: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion .
``base_url`` is the server root (default ``http://127.0.0.1:11434``); a URL
ending in ``/v1`` is Ollama's OpenAI-compatible API and belongs to provider
``openai-compatible``, so it is refused with a 400 ``config_error``. Ollama
needs no auth; when the endpoint has a credential it is sent as
``Authorization: Bearer`` for proxies in front of Ollama.

Request mapping (OpenAI → Ollama):

========================= ====================================================
system / developer        ``role: system``
user                      text parts joined with ``\\n``; image parts go to
                          ``images`` as base64 (the ``data:`` prefix removed);
                          an ``http(s)`` image URL is a 400 naming the field
assistant                 ``content`` (``""`` when null); ``tool_calls`` with
                          ``arguments`` parsed from the JSON string to an
                          object (a non-object is a 400 naming the field)
tool                      ``role: tool`` with ``tool_name`` (looked up from the
                          assistant call it answers) and ``tool_call_id``
tools                     passed through in OpenAI's function format
                          (``strict`` dropped)
tool_choice               ``auto``: as is; ``none``: tools not sent;
                          ``required`` or a named function: 400 (no equivalent)
response_format           ``json_object`` → ``format: "json"``; ``json_schema``
                          → ``format: <schema>``; ``text`` → nothing
temperature, top_p, seed, ``options.temperature``/``top_p``/``seed``/
presence/frequency        ``presence_penalty``/``frequency_penalty``
max_(completion_)tokens   ``options.num_predict``
stop                      ``options.stop`` (always a list)
========================= ====================================================

Rejected with a 400 naming the param: ``tool_choice`` ``required``/named,
``parallel_tool_calls: false``, ``logit_bias``, ``logprobs: true``,
``top_logprobs``. Dropped (no Ollama equivalent, nothing a caller relies on
changes): ``user``, ``metadata``, ``store``, ``service_tier``,
``reasoning_effort`` (use the ``think`` option), message ``name``, assistant
``refusal`` in history, image ``detail``, ``stream_options`` (usage is always
read from the final line and sent when the client asked for it).

Response mapping: ``message.content`` → content (``null`` when the turn only
calls tools); ``message.tool_calls`` → OpenAI tool calls with ``arguments``
re-encoded as a JSON string and ids from Ollama or generated (``call_…``);
``message.thinking`` is dropped (OpenAI's chat format has no field for it);
``done_reason`` ``length`` → ``length``, ``stop``/``load``/``unload``/absent →
``stop``, and any tool call → ``tool_calls``; ``prompt_eval_count`` /
``eval_count`` → usage (Ollama reports no cached or reasoning split).
``created`` is the time the answer arrived.

Streaming (``stream: true``) is NDJSON: each line is mapped as it arrives by
the same helpers; a tool call arrives whole, so its one delta carries index,
id, name and the full arguments. The ``done: true`` line gives the finish
chunk, then a usage chunk (``choices: []``). An ``{"error": ...}`` line, or a
stream that ends without ``done: true``, is a 502.

Errors: non-2xx answers go through the shared status mapping (Ollama's
``{"error": "..."}`` text is kept; 404 is a missing model, not retryable);
a 200 with an error body or a malformed body is a 502.

Options (``endpoint.options``; strings are accepted):

============== ===================================================================
``num_ctx``    context window in tokens (Ollama's default is small and truncates
               silently), sent as ``options.num_ctx``
``keep_alive`` how long the model stays loaded: ``"5m"``, ``"1h"``, ``-1``, or seconds
``think``      ``true``/``false``, or ``low``/``medium``/``high`` for models that
               take a level; sent as ``think`` (thinking text itself is dropped)
============== ===================================================================
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, NoReturn, assert_never

import httpx
import msgspec
from msgspec import Struct

from services.providers.base import EndpointConnection
from services.providers.http import Answer, status_error, transport_error
from services.providers.images import parse_data_uri
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
from shared.errors import BadUpstreamResponse, ConfigError, InvalidRequest, ProviderError

DEFAULT_BASE_URL = "http://127.0.0.1:11434"

# ---------------------------------------------------------------- native wire shapes


class _OutFunction(Struct, kw_only=True, frozen=True):
    name: str
    arguments: dict[str, Any]


class _OutToolCall(Struct, kw_only=True, frozen=True, omit_defaults=True):
    function: _OutFunction
    id: str | None = None


class _OutMessage(Struct, kw_only=True, frozen=True, omit_defaults=True):
    role: str
    content: str
    images: list[str] | None = None
    tool_calls: list[_OutToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _OutRequest(Struct, kw_only=True, frozen=True, omit_defaults=True):
    model: str
    messages: list[_OutMessage]
    stream: bool
    tools: list[Tool] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | int | None = None
    think: bool | str | None = None


class _InFunction(Struct, kw_only=True, frozen=True):
    name: str
    arguments: dict[str, Any] = {}


class _InToolCall(Struct, kw_only=True, frozen=True):
    function: _InFunction
    id: str | None = None


class _InMessage(Struct, kw_only=True, frozen=True):
    content: str | None = None
    tool_calls: list[_InToolCall] | None = None


class _InResponse(Struct, kw_only=True, frozen=True):
    model: str = ""
    message: _InMessage | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: str | None = None


_encoder = msgspec.json.Encoder()
_response_decoder = msgspec.json.Decoder(_InResponse)
_arguments_decoder = msgspec.json.Decoder(dict[str, Any])


class _StreamState:
    """What one stream remembers between lines."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.started = False
        self.tool_calls = 0
        self.done = False


class OllamaAdapter:
    """A local or remote Ollama server (``{base_url}/api/chat``)."""

    gen_ai_provider: ClassVar[str] = "ollama"
    provider_type: ClassVar[str] = "ollama"

    def __init__(self, connection: EndpointConnection) -> None:
        self.connection = connection
        self.endpoint = connection.endpoint
        base = (self.endpoint.base_url or DEFAULT_BASE_URL).rstrip("/")
        if base.endswith("/v1"):
            raise ConfigError(
                f"endpoint {self.endpoint.name!r}: provider ollama takes the server root "
                f"(e.g. {DEFAULT_BASE_URL}), but base_url ends with /v1, Ollama's OpenAI-compatible API; "
                "drop /v1, or use provider openai-compatible for that URL"
            )
        self.url = f"{base}/api/chat"
        self._num_ctx, self._keep_alive, self._think = _endpoint_options(self.endpoint.name, self.endpoint.options)

    # ------------------------------------------------------------ request mapping

    async def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = await self.connection.credential()
        if key:
            headers["authorization"] = f"Bearer {key}"  # for an authenticating proxy in front of Ollama
        return headers

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        _reject_unsupported(request)
        tools = _map_tools(request)
        options: dict[str, Any] = {}
        if self._num_ctx is not None:
            options["num_ctx"] = self._num_ctx
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
        return _encoder.encode(
            _OutRequest(
                model=model,
                messages=_map_messages(request),
                stream=request.stream,
                tools=tools,
                format=_map_format(request),
                options=options or None,
                keep_alive=self._keep_alive,
                think=self._think,
            )
        )

    # ------------------------------------------------------------ response mapping

    def _decode(self, body: bytes, model: str) -> _InResponse:
        try:
            parsed = _response_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            raise self._bad(f"malformed answer: {exc}", model) from exc
        if parsed.error is not None:
            raise self._bad(f"upstream error in a 200 answer: {parsed.error}", model)
        return parsed

    def _map_response(self, body: bytes, model: str) -> ChatCompletion:
        parsed = self._decode(body, model)
        if not parsed.done or parsed.message is None:
            raise self._bad("malformed answer: no message with done: true", model)
        calls = _map_tool_calls(parsed.message.tool_calls)
        text = parsed.message.content
        content = (text or None) if calls else (text or "")  # OpenAI: null only beside tool calls
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=parsed.model or model,
            choices=[
                Choice(
                    index=0,
                    message=ResponseMessage(content=content, tool_calls=calls or None),
                    finish_reason=_map_finish_reason(parsed.done_reason, tool_calls=bool(calls)),
                )
            ],
            usage=_map_usage(parsed),
        )

    def _map_stream_event(self, line: bytes, state: _StreamState) -> list[ChatCompletionChunk]:
        """One NDJSON line to the chunks it stands for (none, one, or finish plus usage)."""
        parsed = self._decode(line, state.model)
        state.model = parsed.model or state.model
        chunks: list[ChatCompletionChunk] = []
        message = parsed.message
        calls = _map_tool_calls(message.tool_calls if message else None)
        deltas = [
            ToolCallDelta(
                index=state.tool_calls + i,
                id=call.id,
                type="function",
                function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
            )
            for i, call in enumerate(calls)
        ]
        state.tool_calls += len(calls)
        content = message.content if message and message.content else None
        if content or deltas or not state.started:
            delta = Delta(role=None if state.started else "assistant", content=content, tool_calls=deltas or None)
            state.started = True
            chunks.append(self._chunk(state, [ChunkChoice(index=0, delta=delta)]))
        if parsed.done:
            state.done = True
            finish = _map_finish_reason(parsed.done_reason, tool_calls=state.tool_calls > 0)
            chunks.append(self._chunk(state, [ChunkChoice(index=0, delta=Delta(), finish_reason=finish)]))
            usage = _map_usage(parsed)
            if usage is not None:
                chunks.append(self._chunk(state, [], usage))
        return chunks

    def _chunk(
        self, state: _StreamState, choices: list[ChunkChoice], usage: Usage | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=state.id, created=state.created, model=state.model, choices=choices, usage=usage)

    def _bad(self, reason: str, model: str) -> ProviderError:
        return BadUpstreamResponse(f"{self.endpoint.name}: {reason}", provider=self.provider_type, model=model)

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        return status_error(response, body, provider=self.provider_type, model=model)

    # ------------------------------------------------------------ adapter API

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """POST with ``stream: false`` and map the single answer."""
        body = self._map_request(msgspec.structs.replace(request, stream=False), model)
        headers = await self._headers()
        try:
            response = await self.connection.http.post(self.url, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        if response.status_code != 200:
            raise self._map_error(response, response.content, model)
        return self._map_response(response.content, model)

    async def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Map NDJSON lines as they arrive; never buffer the stream whole."""
        body = self._map_request(msgspec.structs.replace(request, stream=True), model)
        headers = await self._headers()
        headers["accept"] = "application/x-ndjson"
        state = _StreamState(model)
        try:
            async with self.connection.http.stream(
                "POST", self.url, content=body, headers=headers, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise self._map_error(response, await response.aread(), model)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    for chunk in self._map_stream_event(line.encode(), state):
                        yield chunk
                    if state.done:
                        return
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        raise self._bad("stream ended before the done: true line", model)


# ---------------------------------------------------------------- request helpers


def _reject_unsupported(request: ChatCompletionRequest) -> None:
    """Parameters Ollama cannot honour, as a 400 naming the param."""
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction) or choice == "required":
        _unsupported("tool_choice", "forcing a tool call (Ollama has no tool_choice; use auto or none)")
    if request.parallel_tool_calls is False:
        _unsupported("parallel_tool_calls", "parallel_tool_calls: false (the model decides how many tools to call)")
    if request.logit_bias:
        _unsupported("logit_bias", "logit_bias")
    if request.logprobs:
        _unsupported("logprobs", "logprobs")
    if request.top_logprobs is not None:
        _unsupported("top_logprobs", "top_logprobs")


def _unsupported(param: str, what: str) -> NoReturn:
    raise InvalidRequest(
        f"{param}: the ollama provider does not support {what}", code="unsupported_parameter", param=param
    )


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def _map_messages(request: ChatCompletionRequest) -> list[_OutMessage]:
    out: list[_OutMessage] = []
    tool_names: dict[str, str] = {}
    for i, message in enumerate(request.messages):
        match message:
            case SystemMessage() | DeveloperMessage():
                out.append(_OutMessage(role="system", content=_text(message.content)))
            case UserMessage():
                out.append(_map_user(message, f"messages[{i}]"))
            case AssistantMessage():
                calls: list[_OutToolCall] = []
                for k, call in enumerate(message.tool_calls or []):
                    tool_names[call.id] = call.function.name
                    arguments = _parse_arguments(call.function.arguments, f"messages[{i}].tool_calls[{k}].function")
                    calls.append(
                        _OutToolCall(id=call.id, function=_OutFunction(name=call.function.name, arguments=arguments))
                    )
                content = _text(message.content) if message.content is not None else ""
                out.append(_OutMessage(role="assistant", content=content, tool_calls=calls or None))
            case ToolMessage():
                out.append(
                    _OutMessage(
                        role="tool",
                        content=_text(message.content),
                        tool_name=tool_names.get(message.tool_call_id),
                        tool_call_id=message.tool_call_id,
                    )
                )
            case _:
                assert_never(message)
    return out


def _map_user(message: UserMessage, path: str) -> _OutMessage:
    if isinstance(message.content, str):
        return _OutMessage(role="user", content=message.content)
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
    return _OutMessage(role="user", content="\n".join(texts), images=images or None)


def _image_base64(url: str, param: str) -> str:
    """The base64 payload of a ``data:`` URI; Ollama takes nothing else."""
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
        return _arguments_decoder.decode(raw)
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


def _map_format(request: ChatCompletionRequest) -> str | dict[str, Any] | None:
    match request.response_format:
        case None | TextFormat():
            return None
        case JsonObjectFormat():
            return "json"
        case JsonSchemaResponseFormat():
            schema = request.response_format.json_schema.schema
            return schema if schema is not None else "json"
        case _:
            assert_never(request.response_format)


def _endpoint_options(name: str, options: Mapping[str, Any]) -> tuple[int | None, str | int | None, bool | str | None]:
    """``num_ctx``, ``keep_alive`` and ``think`` from endpoint options, strings accepted."""
    num_ctx = options.get("num_ctx")
    if num_ctx is not None:
        try:
            num_ctx = int(num_ctx)
        except (TypeError, ValueError):
            raise ConfigError(f"endpoint {name!r}: options.num_ctx must be a whole number") from None
        if num_ctx < 1:
            raise ConfigError(f"endpoint {name!r}: options.num_ctx must be positive")
    keep_alive = options.get("keep_alive")
    if isinstance(keep_alive, str) and keep_alive.strip().lstrip("-").isdigit():
        keep_alive = int(keep_alive)  # Ollama reads a bare number as seconds, a string as a duration
    elif keep_alive is not None and not isinstance(keep_alive, str | int):
        raise ConfigError(f"endpoint {name!r}: options.keep_alive must be a duration such as 5m, or seconds")
    think = options.get("think")
    if isinstance(think, str):
        lowered = think.strip().lower()
        think = {"true": True, "false": False}.get(lowered, lowered)
        if think not in (True, False, "low", "medium", "high"):
            raise ConfigError(f"endpoint {name!r}: options.think must be true, false, low, medium or high")
    elif think is not None and not isinstance(think, bool):
        raise ConfigError(f"endpoint {name!r}: options.think must be true, false, low, medium or high")
    return num_ctx, keep_alive, think


# ---------------------------------------------------------------- response helpers


def _map_tool_calls(calls: list[_InToolCall] | None) -> list[ToolCall]:
    return [
        ToolCall(
            id=call.id or f"call_{uuid.uuid4().hex[:24]}",
            function=FunctionCall(name=call.function.name, arguments=_encoder.encode(call.function.arguments).decode()),
        )
        for call in calls or []
    ]


def _map_finish_reason(done_reason: str | None, *, tool_calls: bool) -> FinishReason:
    """Ollama says ``stop`` even when the model called tools; OpenAI says ``tool_calls``."""
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"  # stop, load, unload, or absent


def _map_usage(parsed: _InResponse) -> Usage | None:
    if not parsed.done or (parsed.prompt_eval_count is None and parsed.eval_count is None):
        return None
    # Ollama omits prompt_eval_count when the whole prompt came from its cache.
    prompt, completion = parsed.prompt_eval_count or 0, parsed.eval_count or 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
