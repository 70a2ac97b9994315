"""Anthropic Messages (https://docs.anthropic.com/en/api/messages), in both directions.

- :mod:`~shared.formats.anthropic.wire`: the native structs (request, message, stream events);
- :mod:`~shared.formats.anthropic.upstream`: modelbus calling Anthropic (the provider adapter):
  :func:`request_to_native`, :func:`completion_from_native`, :class:`StreamReader`;
- :mod:`~shared.formats.anthropic.ingress`: clients calling modelbus in Anthropic's format:
  :func:`request_from_native`, :func:`completion_to_native`, :class:`StreamWriter`;
- :mod:`~shared.formats.anthropic.errors`: what that ingress writes besides answers: errors in
  Anthropic's shape (:func:`error_to_native`, :func:`error_event`) and the SSE framing of
  its streams (:func:`sse_event`, :data:`PING_EVENT`);
- :mod:`~shared.formats.anthropic.count_tokens`: ``POST /v1/messages/count_tokens``, with
  modelbus's tokenizer-free estimate (:func:`estimate_input_tokens`).

Internal request → Messages request
===================================

=============================== ================================================================
``system`` / ``developer``      top-level ``system`` text blocks, in order, wherever they appear
``user``                        ``user`` turn of ``text`` and ``image`` blocks
image ``data:`` URI             ``image`` block, ``base64`` source (jpeg, png, gif, webp only)
image ``https://`` URL          ``image`` block, ``url`` source (Anthropic fetches it)
``assistant``                   ``assistant`` turn: ``text`` (or ``refusal``), one ``tool_use`` per call
``tool``                        ``tool_result`` block in a ``user`` turn
consecutive same-role turns     merged into one turn (several tool results go back together)
``tools``                       ``tools`` (``parameters`` → ``input_schema``, ``strict`` kept)
``tool_choice``                 none/auto/required/named → ``{type: none|auto|any|tool}``
``parallel_tool_calls: false``  ``tool_choice.disable_parallel_tool_use: true``
``stop``                        ``stop_sequences``
``max_completion_tokens``       ``max_tokens`` (else ``max_tokens``, else the adapter's default)
``temperature`` / ``top_p``     as is; ``temperature`` above 1 is rejected (Anthropic's range is 0-1)
``response_format`` json_schema ``output_config.format`` ``{type: json_schema, schema}``
``user``                        ``metadata.user_id``
=============================== ================================================================

Dropped, because they change nothing a caller can rely on: ``seed`` (Anthropic has
no seeded sampling), ``n`` (always 1), ``metadata``, ``store`` and ``service_tier``
(OpenAI account features), message ``name`` and image ``detail``, penalties and
``logit_bias`` when zero/empty, ``logprobs: false``, ``top_logprobs: 0``.

Rejected with a 400 naming the parameter: ``response_format: json_object`` (Anthropic
has no schema-less JSON mode; send ``json_schema``), ``reasoning_effort`` (extended
thinking returns blocks the OpenAI shape cannot carry back), non-zero penalties,
a non-empty ``logit_bias``, ``logprobs: true``, ``top_logprobs`` above 0,
``temperature`` above 1, images that are neither ``data:`` nor ``https://``,
tool-call ``arguments`` that are not a JSON object, and ``tool_choice``
``required``/named without ``tools``.

Messages answer → internal answer
=================================

``text`` blocks join into ``content``; ``tool_use`` blocks become ``tool_calls``
with ``input`` as the JSON ``arguments`` string; thinking and other block types
are left out. ``stop_reason`` end_turn, stop_sequence, pause_turn (and reasons
added later) → ``stop``; max_tokens, model_context_window_exceeded → ``length``;
tool_use → ``tool_calls``; refusal → ``content_filter``. Usage: ``prompt_tokens``
= input + cache_creation_input + cache_read_input tokens (all are prompt tokens;
Anthropic's ``input_tokens`` excludes both cache counts), ``cached_tokens`` =
cache_read_input_tokens; ``completion_tokens`` = output tokens. Streams: text and
``input_json_delta`` deltas become chunk deltas (the first ``tool_use`` delta
carries the id and name), ``message_delta`` the finish chunk, ``message_stop`` the
usage chunk; ``ping``, thinking, signature and citation deltas, and event types
added later yield nothing; an ``error`` event raises :class:`StreamError`.

Messages request → internal request (ingress)
=============================================

``system`` (a string or text blocks) becomes one system message; a ``user`` turn's
``tool_result`` blocks become ``tool`` messages (their text content as is), its
``text`` and ``image`` blocks one user message (a ``base64`` source as a ``data:``
URI, a ``url`` source as the URL); an ``assistant`` turn's ``text`` blocks become
its content and its ``tool_use`` blocks its tool calls (``input`` as the JSON
string), text first. ``tools`` (``input_schema`` → ``parameters``), ``tool_choice``
(any → required, ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``),
``stop_sequences``, ``temperature``, ``top_p``, ``max_tokens``, ``metadata.user_id``
→ ``user``, ``stream`` (with usage asked for: Anthropic's streams always report it),
``output_config.format`` → ``response_format`` json_schema (named ``response``) and
``output_config.effort`` low/medium/high → ``reasoning_effort``.

The rule for native fields with no internal counterpart:

- **dropped** when leaving them out cannot change the answer a client relies on:
  ``cache_control`` everywhere (a cost hint), ``citations`` on text blocks,
  ``thinking`` and ``redacted_thinking`` blocks of earlier assistant turns (Anthropic
  itself ignores them when thinking is off), ``thinking: {type: disabled}``,
  ``thinking: {type: adaptive}`` (adaptive thinking lets the model choose not to
  think, which is what an upstream without thinking does; ``output_config.effort``
  still maps to ``reasoning_effort``), ``context_management`` (its edits clear
  earlier thinking blocks, which translation drops anyway), ``service_tier``, and
  ``is_error`` on a tool result (its text still reaches the model);
- **kept in place**: a ``system`` turn between the others (Claude Code sends the
  environment that way) becomes a system message at that position; it may hold
  text blocks only;
- **refused** with a 400 naming the field otherwise: ``top_k``, ``thinking``
  enabled (a thinking budget is a promise), ``container``, ``inference_geo``, another ``effort``,
  ``document`` blocks, ``file`` image sources, images or documents inside a
  tool result, a block in the wrong turn, and (by the decoder) any top-level
  field or block type not modelled in :mod:`~shared.formats.anthropic.wire`.

Internal answer → Messages answer (ingress)
===========================================

``content`` (or ``refusal``) becomes one ``text`` block, each tool call a
``tool_use`` block; finish reasons map back (stop → end_turn, length →
max_tokens, tool_calls → tool_use, content_filter → refusal). Usage: cached
prompt tokens become ``cache_read_input_tokens`` and the rest ``input_tokens``
(cache writes are not told apart). :class:`StreamWriter` turns chunks into the
native event sequence and sends stop reason and usage in the closing
``message_delta``.

Errors: a client's request raises :class:`~shared.errors.InvalidRequest`; an
upstream answer that is not a message raises ``msgspec.MsgspecError``; one that
breaks the protocol, or an internal answer with no native form, raises
:class:`InvalidAnswer`; adapters turn both into a 502.
"""

from __future__ import annotations

from shared.formats.anthropic.count_tokens import (
    CountTokensRequest,
    count_tokens_request_from_native,
    estimate_input_tokens,
    token_count_from_native,
    token_count_to_native,
)
from shared.formats.anthropic.errors import (
    ERROR_TYPES,
    PING_EVENT,
    error_event,
    error_to_native,
    error_type,
    sse_event,
    sse_events,
)
from shared.formats.anthropic.ingress import (
    NativeEvent,
    StreamWriter,
    completion_to_native,
    request_from_native,
    usage_to_native,
)
from shared.formats.anthropic.upstream import (
    IMAGE_TYPES,
    StreamReader,
    completion_from_native,
    error_in,
    map_finish_reason,
    map_usage,
    request_to_native,
)
from shared.formats.anthropic.wire import ERROR_STATUS, STREAM_EVENTS, InvalidAnswer, StreamError

__all__ = [
    "ERROR_STATUS",
    "ERROR_TYPES",
    "IMAGE_TYPES",
    "PING_EVENT",
    "STREAM_EVENTS",
    "CountTokensRequest",
    "InvalidAnswer",
    "NativeEvent",
    "StreamError",
    "StreamReader",
    "StreamWriter",
    "completion_from_native",
    "completion_to_native",
    "count_tokens_request_from_native",
    "error_event",
    "error_in",
    "error_to_native",
    "error_type",
    "estimate_input_tokens",
    "map_finish_reason",
    "map_usage",
    "request_from_native",
    "request_to_native",
    "sse_event",
    "sse_events",
    "token_count_from_native",
    "token_count_to_native",
    "usage_to_native",
]
