"""Google Gemini ``generateContent`` (https://ai.google.dev/api/generate-content), both ways.

The same body serves the Gemini API (AI Studio) and Vertex AI; only URLs and
auth differ, and those are the adapter's (:mod:`services.providers.gemini`).

=========================== ====================================================
module                      holds
=========================== ====================================================
:mod:`.wire`                the native structs (request, answer, error status), Google's
                            error body both ways, the tool call ids
:mod:`.schema`              JSON Schema ↔ Gemini's OpenAPI ``Schema`` subset
:mod:`.upstream`            calling Gemini: :func:`request_to_native`,
                            :func:`completion_from_native`, :class:`ChunkReader`
:mod:`.ingress`             serving Gemini's format: :func:`request_from_native`,
                            :func:`completion_to_native`, :class:`ChunkWriter`
=========================== ====================================================

**Towards Gemini** (an internal request as a ``generateContent`` body):

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
tools                        ``functionDeclarations``; schemas as :mod:`.schema` says;
                             an object with no properties sends no schema
tool_choice                  ``toolConfig.functionCallingConfig`` ``AUTO``/``NONE``/
                             ``ANY``, a named function adds ``allowedFunctionNames``
response_format              ``json_object`` → ``responseMimeType: application/json``;
                             ``json_schema`` also ``responseSchema``
temperature, top_p, seed,    ``temperature``, ``topP``, ``seed``, ``stopSequences``,
stop, max tokens, penalties  ``maxOutputTokens``, ``presencePenalty``, ``frequencyPenalty``
reasoning_effort             ``thinkingConfig.thinkingBudget``: minimal/low 1024,
                             medium 8192, high 24576 (Google's own OpenAI mapping)
============================ ====================================================

Rejected with a 400: ``logprobs: true``, a non-empty ``logit_bias``, a forced
tool choice without (or naming no) tool, unresolvable or recursive ``$ref``.
Dropped: ``user``, ``metadata``, ``store``, ``service_tier``, message ``name``,
assistant ``refusal``, ``strict``, ``parallel_tool_calls`` (Gemini has no switch).

**Gemini's answers back**: text parts joined (``thought`` parts skipped);
function calls carry no usable id, so ids are :func:`call_id` (``call_`` + a hash
of response id, index, name and arguments; a Gemini 3 ``thoughtSignature`` rides
in the id after ``_ts_`` and is sent back with the call). Finish reasons:
``STOP`` → ``stop`` (``tool_calls`` when calls came), ``MAX_TOKENS`` → ``length``,
the safety/recitation/blocklist family → ``content_filter``, the malformed-call
family → :class:`UnusableAnswer`, anything else → ``stop``; a blocked prompt is an
empty ``content_filter`` answer. Usage: prompt = ``promptTokenCount`` +
``toolUsePromptTokenCount``, completion = ``candidatesTokenCount`` +
``thoughtsTokenCount`` (reported as reasoning tokens), ``cachedContentTokenCount``
as cached tokens. A stream maps event by event, a call as one whole delta, and
ends with the usage chunk.

**From a client speaking Gemini's format** (:func:`request_from_native`): the
inverse of the table above. camelCase field names are read first; a body in the
other spellings proto JSON allows, and Google's own examples use, is read too:
snake_case (``system_instruction``, ``inline_data``; never inside arguments,
results or schemas) and a lone object for a list (``"parts": {"text": ...}``). Role ``function`` (older
examples) means ``user``. Function calls get :func:`call_id` ids (or their own
``id``), and each ``functionResponse`` answers the oldest unanswered call of its
name (or the one with its ``id``). A ``{"output": text}`` result is that text, any
other result object its JSON. ``inlineData``/``fileData`` must be images.
``thinkingLevel`` is the effort; a ``thinkingBudget`` the nearest effort (``0`` →
``minimal``, up to 1024 ``low``, up to 8192 ``medium``, more ``high``, ``-1``
unset). ``responseSchema`` (converted) or ``responseJsonSchema`` (as is) is a
``json_schema`` format named ``response``. A streamed request asks for usage
(Gemini's streams always carry it).

Dropped, by rule: ``safetySettings`` (the endpoint's ``safety_threshold`` option
governs what the upstream blocks), ``includeThoughts`` (answers never carry
thoughts), ``thought`` parts and ``thoughtSignature`` on text, model turns of
only thoughts, ``candidateCount: 1``, extra fields on a part (``videoMetadata``).
Rejected with a 400 naming the field: every other field (``topK``,
``cachedContent``, non-function tools such as ``googleSearch``, ...), parts that
are not text, images, calls or results, a ``functionResponse`` with no earlier
call, more than one ``allowedFunctionNames``, a response mime type other than
``text/plain``/``application/json``.

**Answers to that client**: :func:`completion_to_native` and :class:`ChunkWriter`
invert the answer rules (``tool_calls``/``stop`` → ``STOP``, ``length`` →
``MAX_TOKENS``, ``content_filter`` → ``SAFETY``; completion tokens minus reasoning
are ``candidatesTokenCount``); a call whose arguments are not a JSON object is
left out and the answer finishes ``MALFORMED_FUNCTION_CALL``, as Gemini does. A
stream's text goes out as it comes, calls whole with the finish reason, usage in
an event of its own. :func:`error_to_native` writes Google's error body, a retry
hint as ``RetryInfo``.

Format errors: client input raises :class:`~shared.errors.InvalidRequest`; an
upstream answer that is not one raises ``msgspec.MsgspecError``,
:class:`ErrorInAnswer` or :class:`UnusableAnswer` for the adapter to map.
"""

from __future__ import annotations

from shared.formats.gemini.ingress import ChunkWriter, completion_to_native, request_from_native
from shared.formats.gemini.schema import schema_from_native, schema_to_native
from shared.formats.gemini.upstream import (
    ChunkReader,
    completion_from_native,
    decode_answer,
    request_to_native,
    stream_from_native_array,
)
from shared.formats.gemini.wire import (
    SAFETY_THRESHOLDS,
    ErrorInAnswer,
    Status,
    UnusableAnswer,
    call_id,
    error_reasons,
    error_status,
    error_to_native,
    retry_delay,
    signature_from_id,
)

__all__ = [
    "SAFETY_THRESHOLDS",
    "ChunkReader",
    "ChunkWriter",
    "ErrorInAnswer",
    "Status",
    "UnusableAnswer",
    "call_id",
    "completion_from_native",
    "completion_to_native",
    "decode_answer",
    "error_reasons",
    "error_status",
    "error_to_native",
    "request_from_native",
    "request_to_native",
    "retry_delay",
    "schema_from_native",
    "schema_to_native",
    "signature_from_id",
    "stream_from_native_array",
]
