"""Ollama's native chat API: ``POST {base_url}/api/chat``, on :class:`HttpChatAdapter`.

API: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion .
The wire structs and the mapping rules (request, answer, NDJSON stream, what is
dropped and what is a 400) live in :mod:`shared.formats.ollama`; this module keeps
the connection, the endpoint's options and the hook glue.

``base_url`` is the server root (default ``http://127.0.0.1:11434``); a URL
ending in ``/v1`` is Ollama's OpenAI-compatible API and belongs to provider
``openai-compatible``, so it is a 400 ``config_error``. Ollama needs no auth;
when the endpoint has a credential it is sent as ``Authorization: Bearer`` for
proxies in front of Ollama.

Streams (``stream: true``) are NDJSON, mapped line by line as they arrive; the
``done: true`` line ends them. An ``{"error": ...}`` line, a malformed line, a
200 with an error body, or a stream that ends without ``done: true`` is a 502.
Non-2xx answers go through the shared status mapping (Ollama's
``{"error": "..."}`` text is kept; 404 is a missing model, not retryable).

Options (``endpoint.options``; strings are accepted):

============== ===================================================================
``num_ctx``    context window in tokens (Ollama's default is small and truncates
               silently), sent as ``options.num_ctx``
``keep_alive`` how long the model stays loaded: ``"5m"``, ``"1h"``, ``-1``, or seconds
``think``      ``true``/``false``, or ``low``/``medium``/``high`` for models that
               take a level; sent as ``think`` (thinking text itself is dropped)
============== ===================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from services.providers.adapter import HttpChatAdapter, StreamState, config_error, unsupported
from services.providers.base import EndpointConnection
from services.providers.framing import StreamEvent
from services.providers.http import Answer
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from shared.formats import ollama as native

DEFAULT_BASE_URL = "http://127.0.0.1:11434"
_THINK_LEVELS = (True, False, "low", "medium", "high")


class OllamaStreamState(StreamState):
    """The format's cursor (chunk id, model, tool calls so far) for one stream."""

    __slots__ = ("cursor",)

    def __init__(self, model: str) -> None:
        super().__init__()
        self.cursor = native.StreamCursor(model)


class OllamaAdapter(HttpChatAdapter[OllamaStreamState]):
    """A local or remote Ollama server (``{base_url}/api/chat``)."""

    gen_ai_provider: ClassVar[str] = "ollama"
    provider_type: ClassVar[str] = "ollama"
    framing = "ndjson"

    def __init__(self, connection: EndpointConnection) -> None:
        super().__init__(connection)
        base = (self.endpoint.base_url or DEFAULT_BASE_URL).rstrip("/")
        if base.endswith("/v1"):
            raise config_error(
                self.endpoint.name,
                "base_url",
                f"provider ollama takes the server root (e.g. {DEFAULT_BASE_URL}), but this one ends with /v1, "
                "Ollama's OpenAI-compatible API; drop /v1, or use provider openai-compatible for that URL",
            )
        self.url = f"{base}/api/chat"
        self._num_ctx, self._keep_alive, self._think = _endpoint_options(self.endpoint.name, self.endpoint.options)

    # ------------------------------------------------------------ hooks

    def _url(self, model: str, *, stream: bool) -> str:
        return self.url

    async def _headers(self, url: str, body: bytes, *, stream: bool) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if stream:
            headers["accept"] = "application/x-ndjson"
        key = await self.connection.credential()
        if key:
            headers["authorization"] = f"Bearer {key}"  # for an authenticating proxy in front of Ollama
        return headers

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        refused = native.unsupported_parameter(request)
        if refused is not None:
            param, what = refused
            raise unsupported(param, f"the ollama provider does not support {what}")
        return native.request_to_native(
            request, model, num_ctx=self._num_ctx, keep_alive=self._keep_alive, think=self._think
        )

    def _map_response(self, response: Answer, body: bytes, model: str) -> ChatCompletion:
        try:
            return native.completion_from_native(body, model)
        except native.UnusableAnswer as exc:
            raise self._bad(str(exc), model) from None

    def _stream_state(self, response: Answer, model: str) -> OllamaStreamState:
        return OllamaStreamState(model)

    def _map_stream_event(
        self, event: StreamEvent, state: OllamaStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        try:
            line = native.response_from_native(event.data)
        except native.UnusableAnswer as exc:
            raise self._bad(str(exc), model) from None
        state.done = line.done
        return native.chunks_from_native(line, state.cursor)

    def _end_stream(self, state: OllamaStreamState, model: str) -> Iterable[ChatCompletionChunk]:
        raise self._bad("stream ended before the done: true line", model)


def _endpoint_options(name: str, options: Mapping[str, Any]) -> tuple[int | None, str | int | None, bool | str | None]:
    """``num_ctx``, ``keep_alive`` and ``think`` from endpoint options, strings accepted."""
    num_ctx = options.get("num_ctx")
    if num_ctx is not None:
        try:
            num_ctx = int(num_ctx)
        except (TypeError, ValueError):
            raise config_error(name, "options.num_ctx", "must be a whole number") from None
        if num_ctx < 1:
            raise config_error(name, "options.num_ctx", "must be positive")
    keep_alive = options.get("keep_alive")
    if isinstance(keep_alive, str) and keep_alive.strip().lstrip("-").isdigit():
        keep_alive = int(keep_alive)  # Ollama reads a bare number as seconds, a string as a duration
    elif keep_alive is not None and not isinstance(keep_alive, str | int):
        raise config_error(name, "options.keep_alive", "must be a duration such as 5m, or seconds")
    think = options.get("think")
    if isinstance(think, str):
        lowered = think.strip().lower()
        think = {"true": True, "false": False}.get(lowered, lowered)
    if think is not None and (not isinstance(think, bool | str) or think not in _THINK_LEVELS):
        raise config_error(name, "options.think", "must be true, false, low, medium or high")
    return num_ctx, keep_alive, think
