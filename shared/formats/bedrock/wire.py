"""Bedrock Converse / ConverseStream wire structs, as the API reference draws them.

References: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
and https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html .
Content blocks are unions keyed by member name (``{"text": ...}``, ``{"toolUse": ...}``), so each
is a struct with one optional field per member, exactly one of them set.

*Request* structs are strict when decoded (``forbid_unknown_fields``): an HTTP edge accepting
Converse must not silently ignore a field it does not know. Members modelbus knows but cannot
honour (``document``, ``guardrailConfig``, ...) are declared, so the translation can reject them
by name. *Response* and *stream event* structs are lenient: AWS adds fields (``trace``, the
padding ``p`` of stream events, reasoning blocks) that a client of the API must ignore.

JSON blobs (image bytes) are base64 strings, as in every AWS REST-JSON API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
"""``temperature`` and ``topP``: 0 to 1 in Converse (OpenAI's temperature goes to 2)."""

# ---------------------------------------------------------------- request


class Empty(Struct, frozen=True, forbid_unknown_fields=True):
    """``{}``: the value of the ``auto`` and ``any`` tool-choice members."""


class ImageSource(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """Where an image's bytes are: inline (base64) or in S3."""

    data: str | None = msgspec.field(default=None, name="bytes")
    s3_location: Any = None


class Image(Struct, frozen=True, forbid_unknown_fields=True):
    """An ``image`` block: ``png``, ``jpeg``, ``gif`` or ``webp``."""

    format: str
    source: ImageSource


class ToolUse(Struct, frozen=True, rename="camel"):
    """A tool call the model made (``toolUse``), in a response or in the history sent back."""

    tool_use_id: str
    name: str
    input: Any = None
    """A JSON document, an object for every tool modelbus offers."""


class ToolResultContent(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """One block of a tool result: ``text``, ``json`` or media."""

    text: str | None = None
    json_: Any | UnsetType = msgspec.field(default=UNSET, name="json")
    image: Image | None = None
    document: Any = None
    video: Any = None


class ToolResult(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """A ``toolResult`` block: what a tool call returned."""

    tool_use_id: str
    content: list[ToolResultContent]
    status: str | None = None
    """``success`` or ``error``."""


class ContentBlock(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """One block of a request message; exactly one member is set."""

    text: str | None = None
    image: Image | None = None
    tool_use: ToolUse | None = None
    tool_result: ToolResult | None = None
    document: Any = None
    video: Any = None
    guard_content: Any = None
    cache_point: Any = None
    reasoning_content: Any = None
    citations_content: Any = None


class Message(Struct, frozen=True, forbid_unknown_fields=True):
    """One turn; Converse wants turns to alternate between the two roles."""

    role: Literal["user", "assistant"]
    content: list[ContentBlock]


class SystemBlock(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """One ``system`` block."""

    text: str | None = None
    guard_content: Any = None
    cache_point: Any = None


class InferenceConfig(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """The sampling parameters every Converse model takes."""

    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Unit | None = None
    top_p: Unit | None = None
    stop_sequences: list[str] | None = None


class InputSchema(Struct, frozen=True, forbid_unknown_fields=True):
    """A tool's JSON Schema, one level down (``inputSchema.json``)."""

    json: dict[str, Any]


class ToolSpec(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """A tool the model may call."""

    name: str
    input_schema: InputSchema
    description: str | None = None


class Tool(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """An entry of ``toolConfig.tools``: a tool, or a prompt-cache checkpoint."""

    tool_spec: ToolSpec | None = None
    cache_point: Any = None


class ToolName(Struct, frozen=True, forbid_unknown_fields=True):
    """Names the tool a ``tool`` choice forces."""

    name: str


class ToolChoice(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """``{"auto": {}}``, ``{"any": {}}`` or ``{"tool": {"name": ...}}``."""

    auto: Empty | None = None
    any_: Empty | None = msgspec.field(default=None, name="any")
    tool: ToolName | None = None


class ToolConfig(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """The tools offered and how the model must choose among them."""

    tools: list[Tool]
    tool_choice: ToolChoice | None = None


class ConverseRequest(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, rename="camel"):
    """The body of ``POST /model/{modelId}/converse`` (and ``/converse-stream``)."""

    messages: list[Message]
    system: list[SystemBlock] | None = None
    inference_config: InferenceConfig | None = None
    tool_config: ToolConfig | None = None
    request_metadata: dict[str, str] | None = None
    additional_model_request_fields: Any = None
    additional_model_response_field_paths: Any = None
    guardrail_config: Any = None
    prompt_variables: Any = None
    performance_config: Any = None
    service_tier: Any = None


# ---------------------------------------------------------------- response


class TokenUsage(Struct, frozen=True, rename="camel"):
    """Token counts; cache reads and writes are counted apart from ``inputTokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int | UnsetType = UNSET
    cache_read_input_tokens: int | UnsetType = UNSET
    cache_write_input_tokens: int | UnsetType = UNSET


class Metrics(Struct, frozen=True, rename="camel"):
    """How long the call took (an integer in Converse, a float in the stream example)."""

    latency_ms: float | UnsetType = UNSET


class OutputContent(Struct, frozen=True, omit_defaults=True, rename="camel"):
    """A response content block; reasoning and other block kinds are ignored."""

    text: str | None = None
    tool_use: ToolUse | None = None


class OutputMessage(Struct, frozen=True):
    """The message the model generated."""

    content: list[OutputContent]
    role: str = "assistant"


class Output(Struct, frozen=True):
    """``output``: a union with one member, ``message``."""

    message: OutputMessage


class ConverseResponse(Struct, frozen=True, rename="camel"):
    """A ``Converse`` answer."""

    output: Output
    stop_reason: str
    usage: TokenUsage | UnsetType | None = UNSET
    metrics: Metrics | UnsetType = UNSET


class ErrorShape(Struct, frozen=True):
    """AWS error bodies and exception payloads: ``{"message"}`` (sometimes ``Message``), maybe ``__type``."""

    message: str | None = None
    Message: str | None = None
    type: str | None = msgspec.field(default=None, name="__type")


# ---------------------------------------------------------------- stream events (ConverseStreamOutput members)


class MessageStart(Struct, frozen=True):
    """``messageStart``: the answer begins."""

    role: str = "assistant"


class ToolUseStart(Struct, frozen=True, rename="camel"):
    """The call a tool-use block makes."""

    tool_use_id: str
    name: str


class BlockStart(Struct, frozen=True, omit_defaults=True, rename="camel"):
    """What a block starts with; only tool-use blocks start with an event."""

    tool_use: ToolUseStart | None = None


class ContentBlockStart(Struct, frozen=True, rename="camel"):
    """``contentBlockStart``: a tool-use block begins."""

    start: BlockStart
    content_block_index: int = 0


class ToolUseDelta(Struct, frozen=True):
    """The next fragment of a tool call's JSON input."""

    input: str = ""


class BlockDelta(Struct, frozen=True, omit_defaults=True, rename="camel"):
    """A piece of text or of tool input; reasoning deltas are ignored."""

    text: str | None = None
    tool_use: ToolUseDelta | None = None


class ContentBlockDelta(Struct, frozen=True, rename="camel"):
    """``contentBlockDelta``."""

    delta: BlockDelta
    content_block_index: int = 0


class ContentBlockStop(Struct, frozen=True, rename="camel"):
    """``contentBlockStop``."""

    content_block_index: int = 0


class MessageStop(Struct, frozen=True, rename="camel"):
    """``messageStop``: generation ended, and why."""

    stop_reason: str


class Metadata(Struct, frozen=True):
    """``metadata``: usage and metrics, the last event of a stream."""

    usage: TokenUsage | UnsetType | None = UNSET
    metrics: Metrics | UnsetType = UNSET


StreamEventBody = MessageStart | ContentBlockStart | ContentBlockDelta | ContentBlockStop | MessageStop | Metadata

EVENT_TYPES: dict[str, type[StreamEventBody]] = {
    "messageStart": MessageStart,
    "contentBlockStart": ContentBlockStart,
    "contentBlockDelta": ContentBlockDelta,
    "contentBlockStop": ContentBlockStop,
    "messageStop": MessageStop,
    "metadata": Metadata,
}
"""Event type (the ``:event-type`` header) -> payload struct."""

# ---------------------------------------------------------------- codecs

encoder = msgspec.json.Encoder()
request_decoder = msgspec.json.Decoder(ConverseRequest)
response_decoder = msgspec.json.Decoder(ConverseResponse)
error_decoder = msgspec.json.Decoder(ErrorShape)
event_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(kind) for name, kind in EVENT_TYPES.items()
}
