"""Ollama's ``/api/chat`` wire structs, as its API reference writes them.

https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion .
One set of structs serves both directions: encoding leaves out what is unset
(``omit_defaults``), decoding is lenient where Ollama's own fields are optional.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from shared.chat import Penalty, Temperature, Tool, TopP


class Function(Struct, kw_only=True, frozen=True):
    """The function a tool call names; ``arguments`` is an object, not OpenAI's JSON string."""

    name: str
    arguments: dict[str, Any] = {}


class ToolCall(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One tool call of an assistant message."""

    function: Function
    id: str | None = None


class Message(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One chat message (request history, or the answer's ``message``)."""

    role: Literal["system", "user", "assistant", "tool"] | None = None
    content: str | None = None
    images: list[str] | None = None
    """Base64 images, without a ``data:`` prefix."""
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    """On a ``tool`` message: the tool whose result this is."""
    tool_call_id: str | None = None
    thinking: str | None = None
    """A thinking model's reasoning, apart from ``content``."""


class ChatRequest(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A ``POST /api/chat`` body."""

    model: str
    messages: list[Message]
    stream: bool | None = None
    """Absent means ``true``, Ollama's default."""
    tools: list[Tool] | None = None
    """OpenAI's function-tool format, as Ollama takes it."""
    format: str | dict[str, Any] | None = None
    """``"json"`` or a JSON Schema."""
    options: dict[str, Any] | None = None
    """Modelfile parameters: ``temperature``, ``num_predict``, ``num_ctx``, ..."""
    keep_alive: str | int | float | None = None
    """How long the model stays loaded: ``"5m"``, or seconds."""
    think: bool | str | None = None
    """Thinking on or off, or a level (``low``/``medium``/``high``)."""


class ChatResponse(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A whole answer, or one NDJSON line of a stream (the last has ``done: true`` and the counts)."""

    model: str = ""
    created_at: str | None = None
    message: Message | None = None
    done: bool
    done_reason: str | None = None
    """``stop``, ``length``, ``load`` or ``unload``."""
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    """Prompt tokens evaluated; absent when the whole prompt came from the cache."""
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    """Tokens generated."""
    eval_duration: int | None = None


class ErrorResponse(Struct, kw_only=True, frozen=True):
    """An error body, or an error line mid-stream (a runner died)."""

    error: str


class Sampling(Struct, kw_only=True, frozen=True):
    """The ``options`` the chat contract has a field for (its ranges, checked on decode)."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: int | None = None
    num_predict: int | None = None
    """Tokens to generate; -1 (or -2, fill the context) means no limit."""
    stop: list[str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None


RUNTIME_OPTIONS = frozenset(
    {"num_ctx", "num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "numa", "low_vram"}
    | {"vocab_only", "use_mmap", "use_mlock"}
)
"""Options that tune the server rather than the answer."""


class UnusableAnswer(ValueError):
    """An Ollama answer that cannot be used; the message says why (the adapter makes it a 502)."""


encoder = msgspec.json.Encoder()
request_decoder = msgspec.json.Decoder(ChatRequest)
response_decoder = msgspec.json.Decoder(ChatResponse)
error_decoder = msgspec.json.Decoder(ErrorResponse)
arguments_decoder = msgspec.json.Decoder(dict[str, Any])
