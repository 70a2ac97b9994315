"""Anthropic Messages wire structs: the request, the message, the stream events.

Modelled on the API reference (https://docs.anthropic.com/en/api/messages) and
the streaming guide (https://docs.anthropic.com/en/docs/build-with-claude/streaming).
Fields with no internal counterpart (``cache_control``, ``citations``, thinking
blocks, ``top_k``, ...) are modelled too, so a passthrough or a later
translation can see them; what each translation does with them is written in
:mod:`shared.formats.anthropic`.

Request content blocks are a tagged union on ``type``: a block type not
modelled here fails to decode, and a client's request is told which field.
Answer blocks and deltas are one loose struct each (``type`` plus every
documented field, all optional), because Anthropic adds block types and an
answer carrying a new one must still decode.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# ---------------------------------------------------------------- errors of the translation


class InvalidAnswer(Exception):
    """An answer that breaks Anthropic's protocol (an event out of order), or an internal
    answer that has no Messages form (tool arguments that are not a JSON object)."""


class StreamError(Exception):
    """An ``error`` event in a stream: the upstream failed after it answered 200."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.type = error_type
        """Anthropic's error type, e.g. ``overloaded_error`` (see :data:`ERROR_STATUS`)."""
        self.message = message
        """Anthropic's message."""


# https://docs.anthropic.com/en/api/errors ; an ``error`` event carries a type but no HTTP status.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""The HTTP status each documented error type stands for."""


class _Wire(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Unset optional fields are left out of the JSON, as Anthropic's own clients do.

    Subclasses repeat ``frozen=True``: msgspec inherits it, mypy's reading of it does not.
    """


# ---------------------------------------------------------------- request content blocks


class CacheControl(_Wire, frozen=True):
    """A prompt-caching breakpoint (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class _Block(_Wire, tag_field="type", frozen=True):
    pass


class _Source(_Wire, tag_field="type", frozen=True):
    pass


class Base64Source(_Source, tag="base64", frozen=True):
    """Inline bytes of an image or a PDF."""

    media_type: str
    data: str


class UrlSource(_Source, tag="url", frozen=True):
    """An image or a PDF Anthropic fetches itself."""

    url: str


class FileSource(_Source, tag="file", frozen=True):
    """A file uploaded through the Files API."""

    file_id: str


class PlainTextSource(_Source, tag="text", frozen=True):
    """A document given as plain text."""

    media_type: Literal["text/plain"]
    data: str


class TextBlock(_Block, tag="text", frozen=True):
    """Text; in a request it may carry a cache breakpoint, in an answer citations."""

    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlock(_Block, tag="image", frozen=True):
    """An image (jpeg, png, gif, webp)."""

    source: Base64Source | UrlSource | FileSource
    cache_control: CacheControl | None = None


class ContentSource(_Source, tag="content", frozen=True):
    """A document given as content blocks."""

    content: str | list[TextBlock | ImageBlock]


class DocumentBlock(_Block, tag="document", frozen=True):
    """A PDF or text document (https://docs.anthropic.com/en/docs/build-with-claude/pdf-support)."""

    source: Base64Source | PlainTextSource | ContentSource | UrlSource | FileSource
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(_Block, tag="tool_use", frozen=True):
    """An earlier call of a client tool, in an assistant turn."""

    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Block, tag="tool_result", frozen=True):
    """The result of a client tool call, in a user turn."""

    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Block, tag="thinking", frozen=True):
    """Extended thinking of an earlier assistant turn, passed back with its signature."""

    thinking: str
    signature: str


class RedactedThinkingBlock(_Block, tag="redacted_thinking", frozen=True):
    """Thinking the safety systems encrypted, passed back as it came."""

    data: str


ContentBlockParam = (
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
)
"""A block of a request turn."""


class MessageParam(_Wire, frozen=True):
    """One turn of the conversation (Claude Code also sends ``system`` turns between them)."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockParam]


# ---------------------------------------------------------------- request


class Tool(_Wire, frozen=True):
    """A client tool (``type`` ``custom`` or absent); server tools are not modelled."""

    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None
    type: Literal["custom"] | None = None


class ToolChoice(_Wire, frozen=True):
    """How the model may use the tools."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Wire, frozen=True):
    """Request metadata; ``user_id`` is an opaque end-user id."""

    user_id: str | None = None


class ThinkingConfig(_Wire, frozen=True):
    """Extended thinking: ``enabled`` with a budget, ``adaptive`` or ``disabled``."""

    type: str
    budget_tokens: int | None = None
    display: str | None = None


class OutputFormat(_Wire, frozen=True):
    """Structured output (https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs)."""

    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(_Wire, frozen=True):
    """Output settings: a JSON schema format, the effort level."""

    format: OutputFormat | None = None
    effort: str | None = None


class MessagesRequest(_Wire, forbid_unknown_fields=True, frozen=True):
    """The body of ``POST /v1/messages``; an unknown top-level field is refused, not dropped."""

    model: str
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingConfig | None = None
    service_tier: str | None = None
    cache_control: CacheControl | None = None
    container: str | None = None
    inference_geo: str | None = None
    context_management: dict[str, Any] | None = None
    stream: bool = False


# ---------------------------------------------------------------- answer


class CacheCreation(_Wire, frozen=True):
    """Cache-write tokens by lifetime."""

    ephemeral_5m_input_tokens: int | None = None
    ephemeral_1h_input_tokens: int | None = None


class Usage(_Wire, frozen=True):
    """Token counts; ``input_tokens`` excludes both cache counts."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None
    server_tool_use: dict[str, Any] | None = None
    service_tier: str | None = None


class ContentBlock(_Wire, frozen=True):
    """Any block of an answer: ``text``, ``tool_use``, ``thinking``, ``redacted_thinking``,
    the server-tool blocks, and types added later (all fields optional but ``type``)."""

    type: str
    text: str | None = None
    citations: list[dict[str, Any]] | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    """The tool input as raw JSON (msgspec cannot make a ``Raw`` optional with ``None``)."""
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    tool_use_id: str | None = None
    content: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class Message(Struct, kw_only=True, frozen=True):
    """The answer of ``POST /v1/messages`` (``stop_reason`` and ``stop_sequence`` are sent as null)."""

    id: str
    type: Literal["message"]
    model: str
    content: list[ContentBlock]
    role: Literal["assistant"] = "assistant"
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


class ErrorDetail(Struct, kw_only=True, frozen=True):
    """What went wrong."""

    type: str = "api_error"
    message: str = ""


class ErrorResponse(Struct, kw_only=True, frozen=True):
    """An error body (``{"type": "error", "error": {...}}``), in an answer or an ``error`` event."""

    error: ErrorDetail | None = None


# ---------------------------------------------------------------- stream events


class _Event(_Wire, tag_field="type", frozen=True):
    pass


class BlockDelta(_Wire, frozen=True):
    """What a ``content_block_delta`` adds: ``text_delta``, ``input_json_delta``,
    ``thinking_delta``, ``signature_delta``, ``citations_delta``, or a type added later."""

    type: str
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    citation: dict[str, Any] | None = None


class MessageDeltaBody(Struct, kw_only=True, frozen=True):
    """The top-level changes a ``message_delta`` reports."""

    stop_reason: str | None = None
    stop_sequence: str | None = None


class MessageStart(_Event, tag="message_start", frozen=True):
    message: Message


class ContentBlockStart(_Event, tag="content_block_start", frozen=True):
    index: int
    content_block: ContentBlock


class ContentBlockDelta(_Event, tag="content_block_delta", frozen=True):
    index: int
    delta: BlockDelta


class ContentBlockStop(_Event, tag="content_block_stop", frozen=True):
    index: int


class MessageDelta(_Event, tag="message_delta", frozen=True):
    """``usage`` counts are cumulative and may restate the input counts."""

    delta: MessageDeltaBody
    usage: Usage = msgspec.field(default_factory=Usage)


class MessageStop(_Event, tag="message_stop", frozen=True):
    pass


class Ping(_Event, tag="ping", frozen=True):
    pass


class ErrorEvent(_Event, tag="error", frozen=True):
    error: ErrorDetail


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)
"""One server-sent event of a stream; its SSE name is its ``type``."""

STREAM_EVENTS = frozenset(
    {"message_start", "content_block_start", "content_block_delta", "content_block_stop"}
    | {"message_delta", "message_stop", "ping", "error"}
)
"""The event names modelled; Anthropic may add others, which a reader must ignore."""

# ---------------------------------------------------------------- codecs

encoder = msgspec.json.Encoder()
request_decoder = msgspec.json.Decoder(MessagesRequest)
message_decoder = msgspec.json.Decoder(Message)
event_decoder = msgspec.json.Decoder(StreamEvent)
error_decoder = msgspec.json.Decoder(ErrorResponse)
