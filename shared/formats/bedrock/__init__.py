"""AWS Bedrock Converse and ConverseStream, in both directions.

API: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html and
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html .
The wire structs are in :mod:`~shared.formats.bedrock.wire`, requests in
:mod:`~shared.formats.bedrock.request`, answers, stream events and errors in
:mod:`~shared.formats.bedrock.response`. Nothing here frames event-stream bytes, signs or
sends: that is :mod:`services.providers.eventstream` and the Bedrock adapter's part.

**Internal to native** (what the adapter sends and reads back):

- system and developer messages, wherever they appear, become ``system`` text blocks;
  consecutive turns of one role merge into one message, so consecutive tool results become
  one user message with several ``toolResult`` blocks (Converse wants roles to alternate);
- images must be base64 ``data:`` URIs of png, jpeg, gif or webp and become
  ``image.source.bytes``; an https URL is a 400 (``unsupported_image_url``): Converse fetches nothing;
- assistant tool calls become ``toolUse`` blocks (arguments must be a JSON object); tools become
  ``toolConfig.tools[].toolSpec``; ``tool_choice`` auto/required/function become
  ``auto``/``any``/``tool``, and ``none`` omits ``toolConfig`` (Converse has no "none");
- ``max_tokens``/``max_completion_tokens`` (else the adapter's default), ``temperature``,
  ``top_p`` and ``stop`` go to ``inferenceConfig``; ``metadata`` becomes ``requestMetadata``;
- dropped, by rule: ``seed`` (best effort in OpenAI's contract; Converse has none), ``user``,
  ``store``, ``service_tier``, ``parallel_tool_calls``, message ``name``, image ``detail``,
  function ``strict``;
- rejected with a 400 naming the parameter: ``response_format`` other than ``text``,
  ``logprobs``/``top_logprobs``, ``logit_bias``, non-zero presence or frequency penalties,
  ``reasoning_effort`` (model-specific on Bedrock);
- answers: text blocks join into ``content``; ``toolUse`` blocks become tool calls with
  JSON-string arguments; reasoning blocks are dropped. ``stopReason`` end_turn/stop_sequence ->
  stop, max_tokens/model_context_window_exceeded -> length, tool_use -> tool_calls,
  guardrail_intervened/content_filtered -> content_filter, anything newer -> stop.
  ``prompt_tokens`` counts input, cache-read and cache-write tokens (Converse reports them
  apart, OpenAI counts them in) and ``cacheReadInputTokens`` is
  ``prompt_tokens_details.cached_tokens``. Stream events map one by one, with the same usage
  and stop-reason mapping; event types newer than this module are skipped.

**Native to internal** (for an HTTP edge that accepts Converse from clients):

- :func:`request_from_native` takes the body and the URL's ``modelId``. ``system`` text blocks
  become system messages; a user turn's ``toolResult`` blocks become tool messages in place
  (``json`` results as their JSON text; ``status`` is dropped: the internal contract has no
  error flag, the result's text still says what failed); image bytes become ``data:`` URIs;
  ``toolUse`` blocks become tool calls; ``inferenceConfig`` maps back field by field
  (``maxTokens`` to ``max_completion_tokens``); a ConverseStream request asks for usage,
  since ConverseStream always reports it.
- dropped, by rule: ``cachePoint`` blocks (a cost hint; modelbus sets no cache points) and
  ``reasoningContent`` in assistant turns (the internal contract carries no reasoning).
- rejected with a 400 naming the field: ``additionalModelRequestFields``,
  ``additionalModelResponseFieldPaths``, ``guardrailConfig``, ``promptVariables``,
  ``performanceConfig``, ``serviceTier``, ``document``/``video``/``guardContent``/
  ``citationsContent`` blocks, S3 image sources, media in tool results, and any field the
  API reference does not draw (the request structs forbid unknown fields).
- :func:`completion_to_native` writes a Converse answer (``metrics`` when the caller measured
  latency); :class:`StreamEncoder` writes a stream's chunks as ConverseStream events
  (``messageStart``, block deltas with ``contentBlockStart``/``contentBlockStop`` around tool
  calls, ``messageStop``, ``metadata``). Going back, stop reasons collapse (stop -> end_turn,
  length -> max_tokens) and cache-write tokens stay inside ``inputTokens``.

Errors: bad client input raises :class:`shared.errors.InvalidRequest`; a bad upstream answer
raises ``msgspec.MsgspecError`` or :class:`MalformedAnswer`, which the adapter maps to a 502.
"""

from shared.formats.bedrock.request import IMAGE_FORMATS, request_from_native, request_to_native
from shared.formats.bedrock.response import (
    EXCEPTION_STATUS,
    MalformedAnswer,
    NativeError,
    StreamDecoder,
    StreamEncoder,
    completion_from_native,
    completion_to_native,
    error_from_native,
    exception_status,
    short_type,
)

__all__ = [
    "EXCEPTION_STATUS",
    "IMAGE_FORMATS",
    "MalformedAnswer",
    "NativeError",
    "StreamDecoder",
    "StreamEncoder",
    "completion_from_native",
    "completion_to_native",
    "error_from_native",
    "exception_status",
    "request_from_native",
    "request_to_native",
    "short_type",
]
