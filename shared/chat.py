"""Client-facing messages: OpenAI Chat Completions requests, responses and chunks.

These are the bodies on :data:`shared.subjects.CHAT_COMPLETIONS`. They follow
OpenAI's published shapes (https://platform.openai.com/docs/api-reference/chat)
so any OpenAI client's JSON is accepted as-is. Content parts and messages are
tagged unions (on ``type`` and ``role``), so a wrong shape is rejected with the
path of the field at fault.

Decoding uses the reusable decoders at the bottom of the module; call
:func:`decode_request` on the hot path, never ``pydantic``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from shared.errors import InvalidRequest

# ---------------------------------------------------------------- content parts


class ImageURL(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """An image by URL or ``data:`` URI."""

    url: str
    """``https://...`` or ``data:image/png;base64,...``."""
    detail: Literal["auto", "low", "high"] | None = None
    """OpenAI's vision detail hint."""


class TextPart(Struct, kw_only=True, frozen=True, tag="text", tag_field="type"):
    """A text content part."""

    text: str
    """The text."""


class ImagePart(Struct, kw_only=True, frozen=True, tag="image_url", tag_field="type"):
    """An image content part."""

    image_url: ImageURL
    """Where the image is."""


ContentPart = TextPart | ImagePart
"""A user content part; other part types are rejected with a 400."""

# ---------------------------------------------------------------- tools


class FunctionCall(Struct, kw_only=True, frozen=True):
    """A function call made by the model; ``arguments`` is a JSON string."""

    name: str
    """Function name."""
    arguments: str
    """Arguments as a JSON-encoded string, exactly as OpenAI returns them."""


class ToolCall(Struct, kw_only=True, frozen=True):
    """One tool call in an assistant message."""

    id: str
    """Call id; tool results refer to it."""
    function: FunctionCall
    """What was called."""
    type: Literal["function"] = "function"
    """Always ``function``."""


class FunctionDefinition(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A function the model may call."""

    name: str
    """Function name."""
    description: str | None = None
    """What the function does, for the model."""
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments."""
    strict: bool | None = None
    """OpenAI structured-outputs strictness."""


class Tool(Struct, kw_only=True, frozen=True):
    """A tool offered to the model."""

    function: FunctionDefinition
    """The function."""
    type: Literal["function"] = "function"
    """Always ``function``."""


class ToolChoiceFunctionName(Struct, kw_only=True, frozen=True):
    """Names the function in a forced tool choice."""

    name: str
    """Function name."""


class ToolChoiceFunction(Struct, kw_only=True, frozen=True):
    """Force the model to call one named function."""

    function: ToolChoiceFunctionName
    """Which function."""
    type: Literal["function"] = "function"
    """Always ``function``."""


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction

# ---------------------------------------------------------------- messages


class SystemMessage(Struct, kw_only=True, frozen=True, omit_defaults=True, tag="system", tag_field="role"):
    """System instructions."""

    content: str | list[TextPart]
    """Text or text parts."""
    name: str | None = None
    """Optional participant name."""


class DeveloperMessage(Struct, kw_only=True, frozen=True, omit_defaults=True, tag="developer", tag_field="role"):
    """OpenAI's newer name for system instructions; treated like a system message."""

    content: str | list[TextPart]
    """Text or text parts."""
    name: str | None = None
    """Optional participant name."""


class UserMessage(Struct, kw_only=True, frozen=True, omit_defaults=True, tag="user", tag_field="role"):
    """A user turn; may carry images."""

    content: str | list[ContentPart]
    """Text, or text and image parts."""
    name: str | None = None
    """Optional participant name."""


class AssistantMessage(Struct, kw_only=True, frozen=True, omit_defaults=True, tag="assistant", tag_field="role"):
    """An earlier assistant turn, possibly with tool calls."""

    content: str | list[TextPart] | None = None
    """Text, or ``None`` when the turn only called tools."""
    tool_calls: list[ToolCall] | None = None
    """Tool calls the assistant made."""
    name: str | None = None
    """Optional participant name."""
    refusal: str | None = None
    """A refusal the model gave."""


class ToolMessage(Struct, kw_only=True, frozen=True, tag="tool", tag_field="role"):
    """The result of a tool call."""

    content: str | list[TextPart]
    """The tool's output."""
    tool_call_id: str
    """The ``ToolCall.id`` this answers."""


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage

# ---------------------------------------------------------------- request


class JsonSchemaFormat(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A JSON Schema the answer must follow."""

    name: str
    """Schema name."""
    schema: dict[str, Any] | None = None
    """The JSON Schema."""
    description: str | None = None
    """What the schema is for."""
    strict: bool | None = None
    """OpenAI structured-outputs strictness."""


class TextFormat(Struct, kw_only=True, frozen=True, tag="text", tag_field="type"):
    """Plain text answers (the default)."""


class JsonObjectFormat(Struct, kw_only=True, frozen=True, tag="json_object", tag_field="type"):
    """JSON mode: the answer is a JSON object."""


class JsonSchemaResponseFormat(Struct, kw_only=True, frozen=True, tag="json_schema", tag_field="type"):
    """Structured output following a JSON Schema."""

    json_schema: JsonSchemaFormat
    """The schema."""


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaResponseFormat


class StreamOptions(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Options for ``stream: true``."""

    include_usage: bool = False
    """Send a final chunk with token usage before the end of the stream."""


Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]


class ChatCompletionRequest(Struct, kw_only=True, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """An OpenAI Chat Completions request.

    Unknown top-level fields are rejected rather than silently dropped, so a
    caller never believes a parameter was honoured when it was not.
    """

    messages: Annotated[list[Message], Meta(min_length=1)]
    """The conversation; at least one message."""
    model: str | None = None
    """Alias, endpoint name, or ``endpoint/model``; empty means alias ``default``."""
    tools: list[Tool] | None = None
    """Tools the model may call."""
    tool_choice: ToolChoice | None = None
    """``none``, ``auto``, ``required`` or one forced function."""
    parallel_tool_calls: bool | None = None
    """Whether the model may call several tools in one turn."""
    temperature: Temperature | None = None
    """Sampling temperature, 0 to 2."""
    top_p: TopP | None = None
    """Nucleus sampling, 0 to 1."""
    max_tokens: PositiveInt | None = None
    """Upper bound on generated tokens (legacy name)."""
    max_completion_tokens: PositiveInt | None = None
    """Upper bound on generated tokens, reasoning included (current name)."""
    stop: str | list[str] | None = None
    """Stop sequence(s)."""
    response_format: ResponseFormat | None = None
    """Text, JSON mode, or a JSON Schema."""
    seed: int | None = None
    """Best-effort deterministic sampling."""
    user: str | None = None
    """End-user id for abuse monitoring."""
    stream: bool = False
    """Stream ``chat.completion.chunk`` messages instead of one reply."""
    stream_options: StreamOptions | None = None
    """Streaming options."""
    n: Annotated[int, Meta(ge=1, le=1)] | None = None
    """Number of choices; modelbus serves exactly one."""
    presence_penalty: Penalty | None = None
    """OpenAI presence penalty."""
    frequency_penalty: Penalty | None = None
    """OpenAI frequency penalty."""
    logit_bias: dict[str, float] | None = None
    """OpenAI logit bias."""
    logprobs: bool | None = None
    """Return log probabilities, where the provider supports it."""
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    """How many log probabilities per token."""
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    """Reasoning effort for reasoning models."""
    metadata: dict[str, str] | None = None
    """Free-form tags, passed to providers that store them."""
    store: bool | None = None
    """OpenAI's stored-completions flag."""
    service_tier: str | None = None
    """OpenAI service tier."""

    @property
    def output_token_limit(self) -> int | None:
        """The effective cap on generated tokens, whichever field set it."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer must end with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


# ---------------------------------------------------------------- responses


class PromptTokensDetails(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Breakdown of prompt tokens."""

    cached_tokens: int | None = None
    """Prompt tokens served from the provider's cache."""
    audio_tokens: int | None = None
    """Audio prompt tokens."""
    cache_write_tokens: int | None = None
    """Prompt tokens written to the provider's cache (Anthropic's ``cache_creation_input_tokens``);
    modelbus's own field, kept for the usage ledger: workers drop it from what OpenAI-shaped
    clients get (:func:`shared.usage.for_client`)."""


class CompletionTokensDetails(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Breakdown of completion tokens."""

    reasoning_tokens: int | None = None
    """Tokens spent on hidden reasoning."""
    audio_tokens: int | None = None
    """Audio completion tokens."""
    accepted_prediction_tokens: int | None = None
    """Predicted-output tokens that were used."""
    rejected_prediction_tokens: int | None = None
    """Predicted-output tokens that were discarded."""


class Usage(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Token usage of one completion."""

    prompt_tokens: int
    """Input tokens."""
    completion_tokens: int
    """Output tokens."""
    total_tokens: int
    """Sum of the two."""
    prompt_tokens_details: PromptTokensDetails | None = None
    """Cached and audio input tokens."""
    completion_tokens_details: CompletionTokensDetails | None = None
    """Reasoning and audio output tokens."""
    prompt_cache_hit_tokens: int | None = None
    """DeepSeek's count of prompt tokens read from its cache (https://api-docs.deepseek.com/guides/kv_cache),
    included in ``prompt_tokens``; read where ``prompt_tokens_details.cached_tokens`` is absent."""

    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens read from the provider's cache, however the provider reported them."""
        details = self.prompt_tokens_details
        if details is not None and details.cached_tokens is not None:
            return details.cached_tokens
        return self.prompt_cache_hit_tokens or 0


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ResponseMessage(Struct, kw_only=True, frozen=True):
    """The assistant message of a non-streamed answer."""

    content: str | None
    """The text; ``null`` when the model only called tools. Always present."""
    role: Literal["assistant"] = "assistant"
    """Always ``assistant``."""
    tool_calls: list[ToolCall] | None = None
    """Tool calls, with arguments as JSON strings."""
    refusal: str | None = None
    """A refusal, when the model declined."""


class Choice(Struct, kw_only=True, frozen=True):
    """One choice of a non-streamed answer."""

    index: int
    """Always 0: modelbus serves one choice."""
    message: ResponseMessage
    """The answer."""
    finish_reason: FinishReason | None
    """Why generation stopped, in OpenAI's terms."""
    logprobs: Any | None = None
    """Log probabilities when asked for and supported."""


class ChatCompletion(Struct, kw_only=True, frozen=True):
    """A ``chat.completion`` object: the success body of a non-streamed request."""

    id: str
    """Completion id."""
    created: int
    """Unix seconds."""
    model: str
    """The upstream model that answered."""
    choices: list[Choice]
    """Exactly one choice."""
    object: Literal["chat.completion"] = "chat.completion"
    """Always ``chat.completion``."""
    usage: Usage | None = None
    """Token usage, when the provider reports it."""
    system_fingerprint: str | None = None
    """OpenAI backend fingerprint."""
    service_tier: str | None = None
    """OpenAI service tier used."""


class FunctionCallDelta(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A piece of a streamed function call."""

    name: str | None = None
    """Function name, on the first delta of a call."""
    arguments: str | None = None
    """The next fragment of the JSON arguments string."""


class ToolCallDelta(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A piece of a streamed tool call; ``index`` ties fragments together."""

    index: int
    """Which tool call of the turn this fragment belongs to."""
    id: str | None = None
    """Call id, on the first delta of a call."""
    type: Literal["function"] | None = None
    """``function`` on the first delta of a call."""
    function: FunctionCallDelta | None = None
    """Name and argument fragments."""


class Delta(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What a chunk adds to the answer."""

    role: Literal["assistant"] | None = None
    """``assistant`` on the first chunk."""
    content: str | None = None
    """The next piece of text."""
    tool_calls: list[ToolCallDelta] | None = None
    """Tool-call fragments."""
    refusal: str | None = None
    """The next piece of a refusal."""


class ChunkChoice(Struct, kw_only=True, frozen=True):
    """One choice of a chunk."""

    index: int
    """Always 0."""
    delta: Delta
    """What this chunk adds."""
    finish_reason: FinishReason | None = None
    """Set on the last content chunk."""
    logprobs: Any | None = None
    """Log probabilities when asked for and supported."""


class ChatCompletionChunk(Struct, kw_only=True, frozen=True):
    """A ``chat.completion.chunk``: one message of a streamed answer."""

    id: str
    """Completion id, the same on every chunk of a stream."""
    created: int
    """Unix seconds."""
    model: str
    """The upstream model that answered."""
    choices: list[ChunkChoice]
    """One choice, or none on the usage chunk."""
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    """Always ``chat.completion.chunk``."""
    usage: Usage | None = None
    """Set only on the usage chunk (``stream_options.include_usage``)."""
    system_fingerprint: str | None = None
    """OpenAI backend fingerprint."""


# ---------------------------------------------------------------- codecs

encoder = msgspec.json.Encoder()
"""Shared JSON encoder; msgspec encoders are reusable and thread-safe."""
_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_decoder = msgspec.json.Decoder(ChatCompletion)
"""Decodes a ``chat.completion`` body."""
chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
"""Decodes a ``chat.completion.chunk`` body."""


T = TypeVar("T")


def decode_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a request body, or raise :class:`InvalidRequest`.

    The error names the field at fault (``param``) and the reason, e.g.
    ``messages[0].content: Expected `str | array`, got `int```.
    """
    return decode_client_body(_request_decoder, body)


def decode_client_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """A client's body decoded with ``decoder``, or the 400 every ingress gives: ``invalid_field``
    naming the field at fault (:func:`invalid_field`), ``invalid_json`` for a body that is not JSON."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise invalid_field(exc) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None


_FIELD_IN_REASON = re.compile(r"Object (?:contains unknown|missing required) field `([^`]+)`$")


def invalid_field(exc: msgspec.ValidationError, prefix: str = "") -> InvalidRequest:
    """A msgspec validation error as a 400 ``invalid_field`` naming the field at fault,
    under ``prefix`` when the decoded document sits inside a larger one."""
    message, path = split_msgspec_error(str(exc))
    path = ".".join(part for part in (prefix, path) if part)
    return InvalidRequest(f"{path}: {message}" if path else message, code="invalid_field", param=path or None)


def split_msgspec_error(text: str) -> tuple[str, str]:
    """Turn msgspec's ``"reason - at `$.a[0].b`"`` into ``("reason", "a[0].b")``."""
    reason, sep, where = text.rpartition(" - at `")
    if not sep:
        reason, where = text, "$"
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    # msgspec reports unknown and missing fields at the parent object's path.
    field = _FIELD_IN_REASON.search(reason)
    if field is not None:
        path = f"{path}.{field.group(1)}" if path else field.group(1)
    return reason, path
