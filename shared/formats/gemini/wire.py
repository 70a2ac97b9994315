"""Gemini ``generateContent`` wire structs: the request, the answer and the error status.

Field names are the camelCase JSON names of Google's REST reference
(https://ai.google.dev/api/generate-content). Structs only the *request* has
(``GenerateContentRequest``, ``GenerationConfig``, ``Tool``, ...) reject unknown
fields, so a client's field with no internal counterpart is a 400 naming it
instead of being silently dropped. Structs an *answer* contains (``Content``,
``Part``, ``Candidate``, ...) accept unknown fields: Google adds answer fields
(``safetyRatings``, ``avgLogprobs``, ``citationMetadata``, ...) all the time, and
an upstream answer must not fail on one.

Every struct encodes with ``omit_defaults``, in field order, so an encoded
request is exactly what the adapter has always sent.

Also here, since both directions need them: Google's error body read
(:func:`error_status`, :func:`retry_delay`, :func:`error_reasons`) and written
(:func:`error_to_native`); the exceptions for answers that cannot be used
(:class:`UnusableAnswer`, :class:`ErrorInAnswer`); and how a Gemini call, which
has no usable id, gets one that carries its ``thoughtSignature`` (:func:`call_id`,
:func:`signature_from_id`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from shared.chat import encoder

# ---------------------------------------------------------------- content


class Blob(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """``inlineData``: bytes sent in the request, base64-encoded."""

    mime_type: str
    """IANA media type, e.g. ``image/png``."""
    data: str
    """The base64 payload."""


class FileData(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """``fileData``: a file Gemini fetches itself (``https://`` or ``gs://``)."""

    file_uri: str
    """Where the file is."""
    mime_type: str | None = None
    """IANA media type; Gemini guesses when it is absent."""


class FunctionCall(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A call the model asks for; ``args`` is a JSON object, not a string."""

    name: str
    """Function name."""
    args: dict[str, Any] | None = None
    """The arguments."""
    id: str | None = None
    """Call id (Vertex AI and the Live API set it; ``generateContent`` usually not)."""


class FunctionResponse(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The result of a call, sent back in a ``user`` turn."""

    name: str
    """The function that was called."""
    response: dict[str, Any]
    """The result as a JSON object."""
    id: str | None = None
    """The ``FunctionCall.id`` this answers, when the call had one."""


class Part(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """One part of a turn; exactly one of the data fields is set."""

    text: str | None = None
    """Text."""
    thought: bool = False
    """The text is the model's reasoning, not its answer."""
    inline_data: Blob | None = None
    """Inline bytes (an image)."""
    file_data: FileData | None = None
    """A file by URI."""
    function_call: FunctionCall | None = None
    """A call the model makes."""
    function_response: FunctionResponse | None = None
    """A call's result."""
    thought_signature: str | None = None
    """Opaque reasoning state (Gemini 3) that must come back with the part it was on."""


class Content(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A turn: ``user`` or ``model`` (the system instruction has no role)."""

    role: str | None = None
    """``user``, ``model`` (``function`` in older examples, meaning ``user``)."""
    parts: list[Part] = []
    """The turn's parts, in order."""


# ---------------------------------------------------------------- tools and configuration


class FunctionDeclaration(
    Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True
):
    """A function the model may call."""

    name: str
    """Function name."""
    description: str | None = None
    """What it does, for the model."""
    parameters: dict[str, Any] | None = None
    """Gemini's OpenAPI ``Schema`` subset of the arguments."""
    parameters_json_schema: dict[str, Any] | None = None
    """The arguments as JSON Schema (an alternative to ``parameters``)."""


class Tool(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """Tools the model may use; modelbus speaks only function declarations."""

    function_declarations: list[FunctionDeclaration] = []
    """The functions."""


class FunctionCallingConfig(
    Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True
):
    """When the model must, may or must not call a function."""

    mode: Literal["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE"] | None = None
    """``AUTO`` (may), ``ANY`` (must), ``NONE`` (must not)."""
    allowed_function_names: list[str] | None = None
    """With ``ANY``: the functions it may pick from."""


class ToolConfig(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """Tool configuration."""

    function_calling_config: FunctionCallingConfig | None = None
    """Function calling mode."""


class ThinkingConfig(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True):
    """How much the model reasons before it answers."""

    thinking_budget: int | None = None
    """Reasoning tokens (Gemini 2.5); ``0`` off, ``-1`` the model decides."""
    include_thoughts: bool | None = None
    """Return the reasoning as ``thought`` parts."""
    thinking_level: Literal["minimal", "low", "medium", "high"] | None = None
    """Reasoning level (Gemini 3)."""


class GenerationConfig(
    Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True
):
    """Sampling, limits and output format."""

    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    """Sampling temperature."""
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    """Nucleus sampling."""
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    """Cap on generated tokens."""
    seed: int | None = None
    """Best-effort deterministic sampling."""
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    """Presence penalty."""
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    """Frequency penalty."""
    stop_sequences: list[str] | None = None
    """Stop sequences."""
    thinking_config: ThinkingConfig | None = None
    """Reasoning."""
    response_mime_type: str | None = None
    """``text/plain`` (default) or ``application/json``."""
    response_schema: dict[str, Any] | None = None
    """Gemini ``Schema`` the JSON answer follows."""
    response_json_schema: dict[str, Any] | None = None
    """The same as JSON Schema (an alternative to ``responseSchema``)."""
    candidate_count: Annotated[int, Meta(ge=1, le=1)] | None = None
    """Number of candidates; modelbus serves exactly one."""


class SafetySetting(Struct, kw_only=True, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A blocking threshold for one harm category."""

    category: str
    """``HARM_CATEGORY_*``."""
    threshold: str
    """One of :data:`SAFETY_THRESHOLDS`."""


SAFETY_CATEGORIES = (
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)
"""The four harm categories every Gemini model applies."""
SAFETY_THRESHOLDS = frozenset({"BLOCK_NONE", "BLOCK_ONLY_HIGH", "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_LOW_AND_ABOVE", "OFF"})
"""The thresholds a :class:`SafetySetting` takes."""


class GenerateContentRequest(
    Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel", forbid_unknown_fields=True
):
    """The body of ``generateContent`` and ``streamGenerateContent`` (the model is in the URL)."""

    contents: list[Content] = []
    """The conversation."""
    system_instruction: Content | None = None
    """System instructions (text parts)."""
    tools: list[Tool] | None = None
    """Tools the model may call."""
    tool_config: ToolConfig | None = None
    """Function calling mode."""
    generation_config: GenerationConfig | None = None
    """Sampling, limits and output format."""
    safety_settings: list[SafetySetting] | None = None
    """Blocking thresholds."""
    model: str | None = None
    """``models/{model}``; only batch requests carry it in the body."""


# ---------------------------------------------------------------- the answer


class Candidate(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """One generated answer."""

    content: Content | None = None
    """The ``model`` turn (absent when nothing was generated)."""
    finish_reason: str | None = None
    """``STOP``, ``MAX_TOKENS``, ``SAFETY``, ...; absent until the last chunk."""
    finish_message: str | None = None
    """Why, for the malformed-call family."""
    index: int | None = None
    """The candidate's index (always 0 here)."""


class UsageMetadata(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """Token counts; in a stream, cumulative (the last one counts)."""

    prompt_token_count: int = 0
    """Prompt tokens."""
    candidates_token_count: int = 0
    """Answer tokens, reasoning excluded."""
    total_token_count: int | None = None
    """Everything."""
    cached_content_token_count: int | None = None
    """Prompt tokens served from the cache."""
    thoughts_token_count: int | None = None
    """Reasoning tokens."""
    tool_use_prompt_token_count: int | None = None
    """Prompt tokens of tool-use results."""


class PromptFeedback(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """Why the prompt was blocked, when it was."""

    block_reason: str | None = None
    """``SAFETY``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ..."""


class Status(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """``google.rpc.Status``: the body of every Google API error."""

    code: int | None = None
    """The HTTP status."""
    message: str = ""
    """What went wrong."""
    status: str | None = None
    """The canonical code name: ``RESOURCE_EXHAUSTED``, ``INVALID_ARGUMENT``, ..."""
    details: list[dict[str, Any]] = []
    """Typed details (``@type``): ``RetryInfo``, ``ErrorInfo``, ``Help``, ..."""


class GenerateContentResponse(Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """The whole answer of ``generateContent``, or one event of a stream."""

    candidates: list[Candidate] = []
    """One candidate (none when the prompt was blocked)."""
    prompt_feedback: PromptFeedback | None = None
    """Set when the prompt was blocked."""
    usage_metadata: UsageMetadata | None = None
    """Token counts."""
    model_version: str | None = None
    """The model that answered."""
    response_id: str | None = None
    """The answer's id, the same on every event of a stream."""
    error: Status | None = None
    """An error in place of an answer (Gemini reports a failure mid-stream this way)."""


class ErrorBody(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A Google error body: ``{"error": Status}``."""

    error: Status | None = None
    """The error."""


# ---------------------------------------------------------------- codecs

request_decoder = msgspec.json.Decoder(GenerateContentRequest)
"""Decodes a client's ``generateContent`` body."""
response_decoder = msgspec.json.Decoder(GenerateContentResponse)
"""Decodes one answer or stream event."""
stream_array_decoder = msgspec.json.Decoder(list[GenerateContentResponse] | GenerateContentResponse)
"""Decodes a whole stream in its JSON array form (``streamGenerateContent`` without ``alt=sse``)."""
_error_decoder = msgspec.json.Decoder(list[ErrorBody] | ErrorBody)

RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
"""``@type`` of the detail carrying a retry hint (``retryDelay``)."""


def error_status(body: bytes) -> Status | None:
    """The ``error`` of a Google error body (also in the one-element array form); ``None`` if it is not one."""
    try:
        parsed: list[ErrorBody] | ErrorBody = _error_decoder.decode(body)
    except msgspec.MsgspecError:
        return None
    if isinstance(parsed, list):
        return parsed[0].error if parsed else None
    return parsed.error


def error_reasons(status: Status) -> set[str]:
    """The ``reason`` of every ``google.rpc.ErrorInfo`` detail (``API_KEY_INVALID``, ...)."""
    return {str(d.get("reason")) for d in status.details if str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")}


def retry_delay(status: Status) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``): Gemini's retry hint,
    since it sends no ``Retry-After``."""
    for detail in status.details:
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") and isinstance(delay, str):
            try:
                return max(0.0, float(delay.removesuffix("s")))
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------- errors, both ways

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""HTTP status → ``google.rpc.Code`` name (https://cloud.google.com/apis/design/errors#handling_errors)."""


def error_to_native(http_status: int, message: str, *, retry_after: float | None = None) -> bytes:
    """An error as Google's body: ``{"error": {code, message, status, details}}``, a retry hint
    as a ``google.rpc.RetryInfo`` detail (which is where Gemini clients look for it)."""
    details: list[dict[str, Any]] = []
    if retry_after is not None:
        details.append({"@type": RETRY_INFO, "retryDelay": f"{max(0.0, retry_after):g}s"})
    status = Status(
        code=http_status, message=message, status=_STATUS_NAMES.get(http_status, "UNKNOWN"), details=details
    )
    return encoder.encode(ErrorBody(error=status))


# ---------------------------------------------------------------- answers that cannot be used


class UnusableAnswer(Exception):
    """A Gemini answer that decodes but cannot be used (no candidates, a failed call)."""


class ErrorInAnswer(Exception):
    """An answer, or a stream event, that is Google's error object instead."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.message or "no message")
        self.status = status


# ---------------------------------------------------------------- tool call ids

_SIGNED_ID = re.compile(r"call_[0-9a-f]{24}_ts_([A-Za-z0-9_-]+)")


def call_id(response_id: str | None, index: int, name: str, arguments: str, signature: str | None) -> str:
    """An OpenAI tool call id for a Gemini call, which has none: a hash of the answer's id, the
    call's index, name and arguments (so the same answer gets the same ids, streamed or not),
    plus the Gemini 3 ``thoughtSignature`` in URL-safe base64 after ``_ts_``, so it comes back."""
    digest = hashlib.sha256(f"{response_id or ''}\0{index}\0{name}\0{arguments}".encode()).hexdigest()[:24]
    if not signature:
        return f"call_{digest}"
    return f"call_{digest}_ts_{signature.replace('+', '-').replace('/', '_').rstrip('=')}"


def signature_from_id(tool_call_id: str) -> str | None:
    """The ``thoughtSignature`` a :func:`call_id` carries, in standard base64; ``None`` if none."""
    signed = _SIGNED_ID.fullmatch(tool_call_id)
    if signed is None:
        return None
    token = signed.group(1).replace("-", "+").replace("_", "/")
    return token + "=" * (-len(token) % 4)
