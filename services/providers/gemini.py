"""Google Gemini ``generateContent``: the Gemini API (AI Studio) and Vertex AI.

APIs: https://ai.google.dev/api/generate-content (AI Studio) and
https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/projects.locations.publishers.models/generateContent
(Vertex AI). Both take the same body; they differ in URL and auth, chosen per
endpoint by its ``options``:

================== ==============================================================
``vertex``         ``"true"``: Vertex AI; ``"false"``: AI Studio. Unset: Vertex AI
                   when both ``project`` and ``location`` are set, else AI Studio
``project``        Vertex AI project id (required for Vertex AI)
``location``       Vertex AI region, e.g. ``us-central1`` (default ``global``)
``api_version``    path version: ``v1beta`` (AI Studio) / ``v1`` (Vertex) by default
``credential``     AI Studio only: ``api_key`` (default, sent as ``x-goog-api-key``)
                   or ``access_token`` (an OAuth token, sent as ``Authorization: Bearer``)
``safety_threshold`` ``BLOCK_NONE``, ``BLOCK_ONLY_HIGH``, ``BLOCK_MEDIUM_AND_ABOVE``,
                   ``BLOCK_LOW_AND_ABOVE`` or ``OFF``, for the four harm categories
================== ==============================================================

Vertex AI always sends ``Authorization: Bearer <credential>`` (an OAuth access
token kept fresh in the secrets store). No credential ever goes in a URL. With
no ``base_url`` the public hosts are used (``generativelanguage.googleapis.com``;
``{location}-aiplatform.googleapis.com``, or ``aiplatform.googleapis.com`` for
``global``); a ``base_url`` replaces only the scheme and host part.

Request mapping:

============================ ====================================================
system / developer           ``systemInstruction.parts`` (in order, wherever they are)
user / assistant             ``contents`` with role ``user`` / ``model``
assistant ``tool_calls``     ``functionCall`` parts (arguments parsed to an object)
tool                         ``functionResponse`` (name found from the earlier call;
                             consecutive results share one turn; a JSON-object result
                             is sent as is, anything else as ``{"output": text}``)
image ``data:`` URI          ``inlineData {mimeType, data}`` (base64 only)
image ``https://``/``gs://`` ``fileData {fileUri, mimeType}``; Gemini fetches it (mime
                             guessed from the extension, omitted when unknown); other
                             schemes are rejected (400)
tools                        ``functionDeclarations``; schemas keep Gemini's OpenAPI
                             subset (local ``$ref`` inlined, ``oneOf`` → ``anyOf``,
                             type lists → ``nullable``, enum values as strings, string
                             formats other than ``enum``/``date-time`` dropped, every
                             other key such as ``additionalProperties``/``$schema``
                             dropped); an object with no properties sends no schema
tool_choice                  ``toolConfig.functionCallingConfig`` ``AUTO``/``NONE``/
                             ``ANY``, a named function adds ``allowedFunctionNames``
response_format              ``json_object`` → ``responseMimeType: application/json``;
                             ``json_schema`` also ``responseSchema`` (same subset)
temperature, top_p, seed,    ``temperature``, ``topP``, ``seed``, ``stopSequences``,
stop, max tokens, penalties  ``maxOutputTokens``, ``presencePenalty``, ``frequencyPenalty``
reasoning_effort             ``thinkingConfig.thinkingBudget``: minimal/low 1024,
                             medium 8192, high 24576 (Google's own OpenAI mapping)
============================ ====================================================

Rejected with a 400: ``logprobs: true``, a non-empty ``logit_bias``, a forced
tool choice without (or naming no) tool, unresolvable or recursive ``$ref``.
Dropped, documented: ``user``, ``metadata``, ``store``, ``service_tier``,
message ``name``, assistant ``refusal``, ``strict``, ``parallel_tool_calls``
(Gemini has no switch). Gemini's function calls carry no usable id, so ids are
``call_`` + a hash of response id, index, name and arguments; a Gemini 3
``thoughtSignature`` rides in the id after ``_ts_`` and is sent back with the
call. Finish reasons: ``STOP`` → ``stop`` (``tool_calls`` when calls came),
``MAX_TOKENS`` → ``length``, safety/recitation/blocklist family →
``content_filter``, malformed-call family → 502, anything else → ``stop``.
Usage: prompt = ``promptTokenCount`` + ``toolUsePromptTokenCount``, completion =
``candidatesTokenCount`` + ``thoughtsTokenCount`` (reported as reasoning tokens),
``cachedContentTokenCount`` as cached tokens.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, assert_never
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from services.providers.base import EndpointConnection
from services.providers.http import Answer, parse_retry_after, transport_error, upstream_message
from services.providers.images import parse_data_uri
from services.providers.sse import sse_events
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
from shared.errors import BadUpstreamResponse, ConfigError, InvalidRequest, ProviderError, error_from_status

AI_STUDIO_BASE_URL = "https://generativelanguage.googleapis.com"

# ---------------------------------------------------------------- native response shapes


class _Status(msgspec.Struct):
    """``google.rpc.Status``, the body of every Google API error."""

    code: int | None = None
    message: str = ""
    status: str | None = None
    details: list[dict[str, Any]] = []


class _ErrorBody(msgspec.Struct):
    error: _Status | None = None


class _FunctionCall(msgspec.Struct):
    name: str
    args: dict[str, Any] | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False
    function_call: _FunctionCall | None = None
    thought_signature: str | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None
    finish_message: str | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int | None = None
    cached_content_token_count: int | None = None
    thoughts_token_count: int | None = None
    tool_use_prompt_token_count: int | None = None


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Response(msgspec.Struct, rename="camel"):
    """A ``GenerateContentResponse``: the whole answer, or one streamed chunk."""

    candidates: list[_Candidate] = []
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: _UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: _Status | None = None


_response_decoder = msgspec.json.Decoder(_Response)
_json_stream_decoder = msgspec.json.Decoder(list[_Response] | _Response)
_error_decoder = msgspec.json.Decoder(list[_ErrorBody] | _ErrorBody)

# ---------------------------------------------------------------- request mapping

_SCHEMA_KEYS = frozenset(
    "type format title description nullable enum items minItems maxItems properties required minProperties "
    "maxProperties minLength maxLength pattern example anyOf propertyOrdering default minimum maximum".split()
)
_SCHEMA_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})
_SAFETY_CATEGORIES = (
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)
_SAFETY_THRESHOLDS = frozenset(
    {"BLOCK_NONE", "BLOCK_ONLY_HIGH", "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_LOW_AND_ABOVE", "OFF"}
)
# https://ai.google.dev/gemini-api/docs/openai#thinking
_THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_SIGNED_ID = re.compile(r"call_[0-9a-f]{24}_ts_([A-Za-z0-9_-]+)")


def _texts(content: str | list[TextPart] | None) -> list[str]:
    if content is None:
        return []
    return [content] if isinstance(content, str) else [part.text for part in content]


def _image_part(url: str, param: str) -> dict[str, Any]:
    """``data:`` URIs inline; ``https``/``gs`` URLs by reference (Gemini fetches them:
    https://blog.google/innovation-and-ai/technology/developers-tools/gemini-api-new-file-limits)."""
    parsed = parse_data_uri(url, param)
    if parsed is not None:
        if not parsed.mime:
            raise InvalidRequest(f"{param}: the data: URI must name its image type", param=param, code="invalid_image")
        return {"inlineData": {"mimeType": parsed.mime, "data": parsed.data}}
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("https", "gs"):
        raise InvalidRequest(f"{param}: Gemini takes images as data:, https:// or gs:// URIs", param=param)
    file_data = {"fileUri": url}
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    if guessed:
        file_data["mimeType"] = guessed
    return {"fileData": file_data}


def _user_parts(content: str | list[ContentPart], index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        match part:
            case TextPart():
                parts.append({"text": part.text})
            case ImagePart():
                parts.append(_image_part(part.image_url.url, f"messages[{index}].content[{j}].image_url.url"))
            case _:
                assert_never(part)
    return parts


def _function_call_part(call: ToolCall, param: str) -> dict[str, Any]:
    try:
        args = msgspec.json.decode(call.function.arguments or "{}")
    except msgspec.DecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(f"{param}: arguments must be a JSON object", param=param)
    part: dict[str, Any] = {"functionCall": {"name": call.function.name, "args": args}}
    signed = _SIGNED_ID.fullmatch(call.id)
    if signed is not None:  # the Gemini 3 thought signature this call came with
        token = signed.group(1).replace("-", "+").replace("_", "/")
        part["thoughtSignature"] = token + "=" * (-len(token) % 4)
    return part


def _tool_result(content: str | list[TextPart]) -> dict[str, Any]:
    text = "".join(_texts(content))
    try:
        parsed = msgspec.json.decode(text)
    except msgspec.DecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"output": text}


def _map_messages(messages: Sequence[Message]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(systemInstruction, contents)`` for a conversation."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for i, message in enumerate(messages):
        match message:
            case SystemMessage() | DeveloperMessage():
                system.extend({"text": text} for text in _texts(message.content))
            case UserMessage():
                contents.append({"role": "user", "parts": _user_parts(message.content, i)})
            case AssistantMessage():
                parts: list[dict[str, Any]] = [{"text": text} for text in _texts(message.content) if text]
                for j, call in enumerate(message.tool_calls or []):
                    names[call.id] = call.function.name
                    parts.append(_function_call_part(call, f"messages[{i}].tool_calls[{j}].function.arguments"))
                if parts:
                    contents.append({"role": "model", "parts": parts})
            case ToolMessage():
                name = names.get(message.tool_call_id)
                if name is None:
                    param = f"messages[{i}].tool_call_id"
                    raise InvalidRequest(
                        f"{param}: no earlier assistant tool call has id {message.tool_call_id!r}; "
                        "Gemini needs the function name of every tool result",
                        param=param,
                    )
                part = {"functionResponse": {"name": name, "response": _tool_result(message.content)}}
                last = contents[-1] if contents else None
                if last is not None and last["role"] == "user" and "functionResponse" in last["parts"][-1]:
                    last["parts"].append(part)  # parallel results answer in one turn
                else:
                    contents.append({"role": "user", "parts": [part]})
            case _:
                assert_never(message)
    if not contents:
        raise InvalidRequest("messages: Gemini needs at least one user or assistant message", param="messages")
    return ({"parts": system} if system else None), contents


def _clean_schema(schema: Any, defs: dict[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """JSON Schema → the OpenAPI subset Gemini's ``Schema`` accepts."""
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
            raise ValueError(f"cannot resolve $ref {ref!r}")
        if name in seen:
            raise ValueError(f"recursive $ref {ref!r} is not supported by Gemini")
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _clean_schema({**defs[name], **rest}, defs, seen | {name})
    out: dict[str, Any] = {}
    for key, value in schema.items():
        key = "anyOf" if key == "oneOf" else key
        if key not in _SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {prop: _clean_schema(sub, defs, seen) for prop, sub in value.items()}
        elif key == "items":
            out[key] = _clean_schema(value, defs, seen)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [_clean_schema(sub, defs, seen) for sub in value]
        elif key == "type" and isinstance(value, list):
            kinds = [kind for kind in value if kind != "null"]
            if len(kinds) < len(value):
                out["nullable"] = True
            if len(kinds) == 1:
                out["type"] = kinds[0]
            elif kinds:
                out["anyOf"] = [{"type": kind} for kind in kinds]
        elif key == "enum" and isinstance(value, list):
            out[key] = [v if isinstance(v, str) else msgspec.json.encode(v).decode() for v in value if v is not None]
        elif key == "format" and value not in _SCHEMA_FORMATS:
            continue
        else:
            out[key] = value
    if "const" in schema and "enum" not in out:
        const = schema["const"]
        out["enum"] = [const if isinstance(const, str) else msgspec.json.encode(const).decode()]
    return out


def _schema(schema: dict[str, Any], param: str) -> dict[str, Any]:
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    try:
        cleaned: dict[str, Any] = _clean_schema(schema, defs)
    except ValueError as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param) from None
    return cleaned


def _map_tools(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    declarations: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        declaration: dict[str, Any] = {"name": tool.function.name}
        if tool.function.description:
            declaration["description"] = tool.function.description
        if tool.function.parameters is not None:
            params = _schema(tool.function.parameters, f"tools[{i}].function.parameters")
            # Gemini rejects an OBJECT schema with no properties; a function without arguments sends none.
            if params.get("properties") or str(params.get("type", "object")).lower() != "object":
                declaration["parameters"] = params
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}]


def _map_tool_choice(choice: ToolChoice | None, tools: list[Tool] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    names = {tool.function.name for tool in tools or []}
    match choice:
        case "none" | "auto":
            return {"functionCallingConfig": {"mode": choice.upper()}} if names else None
        case "required":
            if not names:
                raise InvalidRequest("tool_choice: 'required' needs tools", param="tool_choice")
            return {"functionCallingConfig": {"mode": "ANY"}}
        case ToolChoiceFunction():
            name = choice.function.name
            if name not in names:
                param = "tool_choice.function.name"
                raise InvalidRequest(f"{param}: no tool named {name!r}", param=param)
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
        case _:
            assert_never(choice)


def _map_generation_config(request: ChatCompletionRequest) -> dict[str, Any]:
    if request.logprobs:
        raise InvalidRequest("logprobs: not supported by the gemini adapter", param="logprobs")
    if request.logit_bias:
        raise InvalidRequest("logit_bias: Gemini has no logit bias", param="logit_bias")
    config: dict[str, Any] = {}
    for field, value in (
        ("temperature", request.temperature),
        ("topP", request.top_p),
        ("maxOutputTokens", request.output_token_limit),
        ("seed", request.seed),
        ("presencePenalty", request.presence_penalty),
        ("frequencyPenalty", request.frequency_penalty),
    ):
        if value is not None:
            config[field] = value
    if request.stop is not None:
        config["stopSequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.reasoning_effort is not None:
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGET[request.reasoning_effort]}
    match request.response_format:
        case None | TextFormat():
            pass
        case JsonObjectFormat():
            config["responseMimeType"] = "application/json"
        case JsonSchemaResponseFormat():
            config["responseMimeType"] = "application/json"
            if request.response_format.json_schema.schema is not None:
                schema = request.response_format.json_schema.schema
                config["responseSchema"] = _schema(schema, "response_format.json_schema.schema")
        case _:
            assert_never(request.response_format)
    return config


# ---------------------------------------------------------------- response mapping

_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        "SAFETY RECITATION LANGUAGE BLOCKLIST PROHIBITED_CONTENT SPII IMAGE_SAFETY IMAGE_PROHIBITED_CONTENT "
        "IMAGE_RECITATION MODEL_ARMOR".split(),
        "content_filter",
    ),
}
_FAILED_CALLS = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})
_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


def _map_usage(meta: _UsageMetadata) -> Usage:
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


def _call_id(response_id: str | None, index: int, name: str, arguments: str, signature: str | None) -> str:
    """Stable: the same answer maps to the same ids, streamed or not."""
    digest = hashlib.sha256(f"{response_id or ''}\0{index}\0{name}\0{arguments}".encode()).hexdigest()[:24]
    if not signature:
        return f"call_{digest}"
    return f"call_{digest}_ts_{signature.replace('+', '-').replace('/', '_').rstrip('=')}"


def _map_parts(candidate: _Candidate, first_index: int, response_id: str | None) -> tuple[str, list[ToolCall]]:
    """The visible text and the function calls of one candidate (or chunk of it); thoughts are skipped."""
    text: list[str] = []
    calls: list[ToolCall] = []
    for part in candidate.content.parts if candidate.content else []:
        if part.function_call is not None:
            call = part.function_call
            arguments = encoder.encode(call.args or {}).decode()
            call_id = _call_id(response_id, first_index + len(calls), call.name, arguments, part.thought_signature)
            calls.append(ToolCall(id=call_id, function=FunctionCall(name=call.name, arguments=arguments)))
        elif part.text and not part.thought:
            text.append(part.text)
    return "".join(text), calls


class _StreamState:
    """What one stream has seen so far."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.response_id: str | None = None
        self.model = model
        self.created = int(time.time())
        self.started = False
        self.tool_calls = 0
        self.finished = False
        self.usage: Usage | None = None


def _is_json(response: Answer) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";")[0].strip() == "application/json"


# ---------------------------------------------------------------- the adapter


def _option(options: dict[str, Any], name: str) -> str | None:
    value = options.get(name)
    text = str(value).strip() if value is not None else ""
    return text or None


def _wants_vertex(options: dict[str, Any]) -> bool:
    flag = _option(options, "vertex")
    if flag is None:
        return _option(options, "project") is not None and _option(options, "location") is not None
    if flag.lower() in ("true", "1", "yes"):
        return True
    if flag.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"options.vertex: expected true or false, got {flag!r}", param="options.vertex")


class GeminiAdapter:
    """Gemini by API key or token on AI Studio; builds a :class:`VertexGeminiAdapter` when the
    endpoint's options ask for Vertex AI, so one registry entry serves both and each keeps its
    own ``gen_ai_provider``."""

    gen_ai_provider: ClassVar[str] = "gcp.gemini"
    provider_type: ClassVar[str] = "gemini"
    vertex: ClassVar[bool] = False

    def __new__(cls, connection: EndpointConnection) -> GeminiAdapter:
        if cls is GeminiAdapter and _wants_vertex(connection.endpoint.options):
            return super().__new__(VertexGeminiAdapter)
        return super().__new__(cls)

    def __init__(self, connection: EndpointConnection) -> None:
        self.connection = connection
        self.endpoint = endpoint = connection.endpoint
        options = endpoint.options
        version = _option(options, "api_version") or ("v1" if self.vertex else "v1beta")
        if not re.fullmatch(r"v\d+\w*", version):
            raise ConfigError(f"options.api_version: not an API version: {version!r}", param="options.api_version")
        if self.vertex:
            project, location = _option(options, "project"), _option(options, "location") or "global"
            if project is None or not re.fullmatch(r"[A-Za-z0-9.:_-]+", project):
                raise ConfigError("options.project: Vertex AI needs a project id", param="options.project")
            if not re.fullmatch(r"[a-z0-9-]+", location):
                raise ConfigError(f"options.location: not a region: {location!r}", param="options.location")
            host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
            base = endpoint.base_url or f"https://{host}"
            self.prefix = f"{base.rstrip('/')}/{version}/projects/{project}/locations/{location}/publishers/google"
            self.key_header = "authorization"
        else:
            credential = _option(options, "credential") or "api_key"
            if credential not in ("api_key", "access_token"):
                param = "options.credential"
                raise ConfigError(f"{param}: expected api_key or access_token, got {credential!r}", param=param)
            self.prefix = f"{(endpoint.base_url or AI_STUDIO_BASE_URL).rstrip('/')}/{version}"
            self.key_header = "x-goog-api-key" if credential == "api_key" else "authorization"
        threshold = _option(options, "safety_threshold")
        if threshold is not None and threshold not in _SAFETY_THRESHOLDS:
            param = "options.safety_threshold"
            raise ConfigError(f"{param}: one of {', '.join(sorted(_SAFETY_THRESHOLDS))}", param=param)
        self.safety = [{"category": c, "threshold": threshold} for c in _SAFETY_CATEGORIES] if threshold else None

    # ------------------------------------------------------------ mapping

    def _url(self, model: str, *, stream: bool) -> str:
        name = quote(model.removeprefix("models/"), safe="-._~@")
        return f"{self.prefix}/models/{name}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")

    async def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        key = await self.connection.credential()
        if key:
            headers[self.key_header] = f"Bearer {key}" if self.key_header == "authorization" else key
        return headers

    def _map_request(self, request: ChatCompletionRequest) -> bytes:
        system, contents = _map_messages(request.messages)
        body: dict[str, Any] = {"contents": contents}
        if system is not None:
            body["systemInstruction"] = system
        tools = _map_tools(request.tools)
        if tools is not None:
            body["tools"] = tools
        tool_config = _map_tool_choice(request.tool_choice, request.tools)
        if tool_config is not None:
            body["toolConfig"] = tool_config
        generation = _map_generation_config(request)
        if generation:
            body["generationConfig"] = generation
        if self.safety is not None:
            body["safetySettings"] = self.safety
        return encoder.encode(body)

    def _bad(self, reason: str, model: str | None) -> BadUpstreamResponse:
        return BadUpstreamResponse(f"{self.endpoint.name}: {reason}", provider=self.provider_type, model=model)

    def _decode(self, body: bytes, what: str, model: str, *, in_stream: bool = False) -> _Response:
        """One ``GenerateContentResponse``; an error object or a malformed body raises."""
        try:
            response = _response_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            status = _google_status(body)
            if status is None:
                raise self._bad(f"malformed {what}: {exc}", model) from None
            response = _Response(error=status)
        return self._checked(response, model, in_stream=in_stream)

    def _checked(self, response: _Response, model: str, *, in_stream: bool) -> _Response:
        """A 200 answer that is an error object is a 502; inside a stream, Gemini reports a
        failure mid-way this way, so an error there keeps its own status (503 stays retryable)."""
        error = response.error
        if error is None:
            return response
        message = error.message or "no message"
        if in_stream and error.code is not None and 400 <= error.code < 600:
            reason = f"{self.provider_type} failed mid-stream with {error.code} {error.status or ''}".rstrip()
            provider, code = self.provider_type, error.code
            raise error_from_status(code, f"{reason}: {message}", provider=provider, model=model)
        raise self._bad(f"upstream error in a 200 answer: {message}", model)

    def _map_finish_reason(self, candidate: _Candidate, has_tool_calls: bool, model: str) -> FinishReason | None:
        reason = candidate.finish_reason
        if reason is None:
            return None
        if reason in _FAILED_CALLS:
            raise self._bad(f"Gemini finished with {reason}: {candidate.finish_message or 'no message'}", model)
        finish = _FINISH.get(reason, "stop")
        return "tool_calls" if finish == "stop" and has_tool_calls else finish

    def _map_response(self, body: bytes, model: str) -> ChatCompletion:
        response = self._decode(body, "completion", model)
        finish: FinishReason | None
        if response.candidates:
            candidate = response.candidates[0]
            text, calls = _map_parts(candidate, 0, response.response_id)
            finish = self._map_finish_reason(candidate, bool(calls), model)
        elif response.prompt_feedback is not None and response.prompt_feedback.block_reason:
            text, calls, finish = "", [], "content_filter"
        else:
            raise self._bad("answer has no candidates", model)
        message = ResponseMessage(content=text or (None if calls else ""), tool_calls=calls or None)
        return ChatCompletion(
            id=f"chatcmpl-{response.response_id or uuid.uuid4().hex}",
            created=int(time.time()),
            model=response.model_version or model,
            choices=[Choice(index=0, message=message, finish_reason=finish)],
            usage=_map_usage(response.usage_metadata) if response.usage_metadata else None,
        )

    def _map_stream_event(self, response: _Response, state: _StreamState, model: str) -> ChatCompletionChunk | None:
        """One native chunk → one ``chat.completion.chunk`` (``None`` when it adds nothing)."""
        if state.response_id is None and response.response_id:
            state.response_id = response.response_id
            state.id = f"chatcmpl-{response.response_id}"
        state.model = response.model_version or state.model
        if response.usage_metadata is not None:  # cumulative: the last one counts
            state.usage = _map_usage(response.usage_metadata)
        finish: FinishReason | None = None
        text, calls = "", list[ToolCall]()
        if response.candidates:
            candidate = response.candidates[0]
            text, calls = _map_parts(candidate, state.tool_calls, state.response_id)
            state.tool_calls += len(calls)
            finish = self._map_finish_reason(candidate, state.tool_calls > 0, model)
        elif response.prompt_feedback is not None and response.prompt_feedback.block_reason:
            finish = "content_filter"
        if not text and not calls and finish is None:
            return None
        state.finished = state.finished or finish is not None
        deltas = [
            ToolCallDelta(
                index=state.tool_calls - len(calls) + i,
                id=call.id,
                type="function",
                function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
            )
            for i, call in enumerate(calls)
        ]
        delta = Delta(role=None if state.started else "assistant", content=text or None, tool_calls=deltas or None)
        state.started = True
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=state.id, created=state.created, model=state.model, choices=[choice])

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        """Google's error shape: ``RetryInfo`` in the body is Gemini's retry hint (it sends no
        ``Retry-After``), and AI Studio answers a bad key with 400 ``API_KEY_INVALID``."""
        code = response.status_code
        status = _google_status(body)
        message = status.message if status is not None and status.message else upstream_message(body, code)
        label = f"{code} {status.status}" if status is not None and status.status else str(code)
        retry_after = parse_retry_after(response.headers)
        if status is not None:
            if retry_after is None:
                retry_after = _retry_delay(status)
            if code == 400 and _error_reasons(status) & _BAD_KEY_REASONS:
                code = 401
        return error_from_status(
            code,
            f"{self.provider_type} returned {label}: {message}",
            provider=self.provider_type,
            model=model,
            retry_after=retry_after,
        )

    # ------------------------------------------------------------ adapter API

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """POST ``generateContent`` and map the answer."""
        body = self._map_request(request)
        headers = await self._headers()
        try:
            response = await self.connection.http.post(
                self._url(model, stream=False), content=body, headers=headers, timeout=timeout_s
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        if response.status_code != 200:
            raise self._map_error(response, response.content, model)
        return self._map_response(response.content, model)

    async def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """``streamGenerateContent?alt=sse``, mapped event by event as it arrives; usage last."""
        body = self._map_request(request)
        headers = await self._headers()
        headers["accept"] = "text/event-stream"
        state = _StreamState(model)
        try:
            async with self.connection.http.stream(
                "POST", self._url(model, stream=True), content=body, headers=headers, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise self._map_error(response, await response.aread(), model)
                if _is_json(response):
                    # A server that ignores alt=sse answers with the JSON array form of the stream.
                    raw = await response.aread()
                    try:
                        items = _json_stream_decoder.decode(raw)
                    except msgspec.MsgspecError:
                        items = self._decode(raw, "stream", model, in_stream=True)  # raises
                    for item in items if isinstance(items, list) else [items]:
                        chunk = self._map_stream_event(self._checked(item, model, in_stream=True), state, model)
                        if chunk is not None:
                            yield chunk
                else:
                    async for event in sse_events(response):
                        chunk = self._map_stream_event(
                            self._decode(event.data.encode(), "stream chunk", model, in_stream=True), state, model
                        )
                        if chunk is not None:
                            yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        if not state.finished:
            raise self._bad("stream ended before a finish reason", model)
        if state.usage is not None:
            yield ChatCompletionChunk(
                id=state.id, created=state.created, model=state.model, choices=[], usage=state.usage
            )


class VertexGeminiAdapter(GeminiAdapter):
    """Gemini on Vertex AI: project and location in the path, an OAuth bearer token."""

    gen_ai_provider: ClassVar[str] = "gcp.vertex_ai"
    vertex: ClassVar[bool] = True


# ---------------------------------------------------------------- error details


def _google_status(body: bytes) -> _Status | None:
    """The ``error`` object of a Google error body (also in the one-element array form)."""
    try:
        parsed: list[_ErrorBody] | _ErrorBody = _error_decoder.decode(body)
    except msgspec.MsgspecError:
        return None
    if isinstance(parsed, list):
        return parsed[0].error if parsed else None
    return parsed.error


def _error_reasons(status: _Status) -> set[str]:
    return {str(d.get("reason")) for d in status.details if str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")}


def _retry_delay(status: _Status) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``)."""
    for detail in status.details:
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") and isinstance(delay, str):
            try:
                return max(0.0, float(delay.removesuffix("s")))
            except ValueError:
                return None
    return None
