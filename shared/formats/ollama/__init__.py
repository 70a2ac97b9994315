"""Ollama's native chat API (``POST /api/chat``), in both directions.

API: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion .
Three modules: :mod:`~shared.formats.ollama.wire` (the structs: :class:`ChatRequest`,
:class:`Message`, :class:`ToolCall`, :class:`ChatResponse`, also each NDJSON line
of a stream, and :class:`ErrorResponse`), :mod:`~shared.formats.ollama.upstream`
(towards Ollama) and :mod:`~shared.formats.ollama.ingress` (from Ollama's format).

**Towards Ollama** (the provider adapter): :func:`request_to_native`,
:func:`completion_from_native`, :func:`response_from_native` and
:func:`chunks_from_native`.

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
tool_choice               ``auto``: as is; ``none``: tools not sent
response_format           ``json_object`` → ``format: "json"``; ``json_schema``
                          → ``format: <schema>``; ``text`` → nothing
temperature, top_p, seed, ``options.temperature``/``top_p``/``seed``/
presence/frequency        ``presence_penalty``/``frequency_penalty``
max_(completion_)tokens   ``options.num_predict``
stop                      ``options.stop`` (always a list)
========================= ====================================================

What Ollama cannot honour is named by :func:`unsupported_parameter` (the
adapter turns it into a 400): ``tool_choice`` ``required``/named,
``parallel_tool_calls: false``, ``logit_bias``, ``logprobs: true``,
``top_logprobs``. Dropped (nothing a caller relies on changes): ``user``,
``metadata``, ``store``, ``service_tier``, ``reasoning_effort`` (the endpoint's
``think`` option decides), message ``name``, assistant ``refusal`` in history,
image ``detail``, ``stream_options`` (the final line always has the counts).

Answers: ``message.content`` → content (``null`` when the turn only calls
tools); ``message.tool_calls`` → tool calls with ``arguments`` re-encoded as a
JSON string and ids from Ollama or generated (``call_…``); ``message.thinking``
is dropped (the chat contract has no field for it); ``done_reason`` ``length``
→ ``length``, ``stop``/``load``/``unload``/absent → ``stop``, any tool call →
``tool_calls``; ``prompt_eval_count``/``eval_count`` → usage (absent
``prompt_eval_count``, a fully cached prompt, counts 0); durations are dropped.
``created`` is the time the answer arrived. A stream's tool call arrives whole,
so its one delta carries index, id, name and the whole arguments; the
``done: true`` line gives the finish chunk, then a usage chunk (``choices: []``).

**From Ollama's format** (an HTTP ingress): :func:`request_from_native`,
:func:`completion_to_native`, :class:`NativeStream` and :func:`error_to_native`.
A missing ``stream`` means ``true`` (Ollama's default) and a stream always asks
for usage (the ``done`` line carries the counts). Images become ``data:`` URIs,
the media type read from the payload's first bytes (PNG, JPEG, GIF, WebP, else
``application/octet-stream``). A tool result without ``tool_call_id`` answers
the earliest unanswered call of its ``tool_name``; calls without an ``id`` get
``call_<message>_<n>``. ``options.num_predict`` -1 or -2 (no limit) sets none.
Dropped: ``keep_alive`` and ``think`` (endpoint settings here), message
``thinking``, and the runtime options in :data:`RUNTIME_OPTIONS` (they tune the
server, not the answer). Any other option, images outside a user turn, a
``format`` other than ``"json"`` or a schema, and an unknown role are a 400
naming the field. Answers go out with ``done_reason`` ``length`` for
``length``, else ``stop`` (Ollama has no ``tool_calls`` or ``content_filter``
reason); a stream's tool calls go out whole, in one line before the ``done``
line, as Ollama sends them.

Errors: bad client input raises :class:`shared.errors.InvalidRequest` naming
the field; an upstream answer that cannot be used raises :class:`UnusableAnswer`
(the adapter makes it a 502).
"""

from __future__ import annotations

from shared.formats.ollama.ingress import NativeStream, completion_to_native, error_to_native, request_from_native
from shared.formats.ollama.upstream import (
    StreamCursor,
    chunks_from_native,
    completion_from_native,
    request_to_native,
    response_from_native,
    unsupported_parameter,
)
from shared.formats.ollama.wire import (
    RUNTIME_OPTIONS,
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    Function,
    Message,
    ToolCall,
    UnusableAnswer,
)

__all__ = [
    "RUNTIME_OPTIONS",
    "ChatRequest",
    "ChatResponse",
    "ErrorResponse",
    "Function",
    "Message",
    "NativeStream",
    "StreamCursor",
    "ToolCall",
    "UnusableAnswer",
    "chunks_from_native",
    "completion_from_native",
    "completion_to_native",
    "error_to_native",
    "request_from_native",
    "request_to_native",
    "response_from_native",
    "unsupported_parameter",
]
