"""OpenAI Chat Completions, and the base every OpenAI-format vendor subclasses.

API: https://platform.openai.com/docs/api-reference/chat . The wire format is
modelbus's own client format, so request mapping is a re-encode with the
upstream model substituted; the response is still decoded and validated, so a
malformed answer becomes a 502 instead of reaching the client.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import msgspec

from services.providers.adapter import HttpChatAdapter, StreamState, config_error
from services.providers.base import EndpointConnection
from services.providers.framing import StreamEvent
from services.providers.http import Answer, upstream_message
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from shared.errors import BadUpstreamResponse
from shared.formats import openai as native
from shared.formats import passthrough

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIStreamState(StreamState):
    """Whether a choice has finished: some compatible servers omit ``[DONE]`` after it."""

    __slots__ = ("finished",)

    def __init__(self) -> None:
        super().__init__()
        self.finished = False


class OpenAIAdapter(HttpChatAdapter[OpenAIStreamState]):
    """OpenAI and OpenAI-compatible servers (``{base_url}/chat/completions``)."""

    gen_ai_provider: ClassVar[str] = "openai"
    provider_type: ClassVar[str] = "openai"
    default_base_url: ClassVar[str | None] = DEFAULT_BASE_URL
    native_format: ClassVar[str | None] = "openai"
    """Azure and the OpenAI-compatible family too: a client's own Chat Completions body goes on as it came."""

    def __init__(self, connection: EndpointConnection) -> None:
        super().__init__(connection)
        base = self.endpoint.base_url or self.default_base_url
        if not base:
            raise config_error(self.endpoint.name, "base_url", f"{self.provider_type} endpoints need one")
        self.url = f"{base.rstrip('/')}/chat/completions"

    # ------------------------------------------------------------ hooks

    def _url(self, model: str, *, stream: bool) -> str:
        return self.url

    async def _headers(self, url: str, body: bytes, *, stream: bool) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        key = await self.connection.credential()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        return native.request_to_native(request, model)

    def _native_request(self, body: bytes, model: str, *, stream: bool) -> bytes:
        if stream:  # usage is always asked for, as request_to_native does
            return passthrough.with_usage_on_stream(body, model)[0]
        return passthrough.with_model(body, model)

    def _native_event(self, event: StreamEvent) -> bytes | None:
        data = event.data.strip()
        return None if not data or data == native.DONE else data  # the gateway writes its own [DONE]

    def _map_response(self, response: Answer, body: bytes, model: str) -> ChatCompletion:
        try:
            return native.completion_from_native(body)
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(body, f"malformed completion: {exc}", model) from exc

    def _stream_state(self, response: Answer, model: str) -> OpenAIStreamState:
        return OpenAIStreamState()

    def _map_stream_event(
        self, event: StreamEvent, state: OpenAIStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        data = event.data.strip()
        if data == native.DONE:
            state.done = True
            return ()
        if not data:
            return ()
        try:
            chunk = native.chunk_from_native(data)
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(data, f"malformed stream chunk: {exc}", model) from exc
        state.finished = state.finished or any(c.finish_reason for c in chunk.choices)
        return (chunk,)

    def _end_stream(self, state: OpenAIStreamState, model: str) -> Iterable[ChatCompletionChunk]:
        if state.finished:
            return ()  # some compatible servers omit [DONE] after the finish chunk
        raise self._bad("stream ended before a finish reason or [DONE]", model)

    # ------------------------------------------------------------ errors

    def _bad_answer(self, body: bytes, fallback: str, model: str) -> BadUpstreamResponse:
        """A 200 answer that is an error object or not a valid answer is a 502."""
        if native.is_error_object(body):
            return self._bad(f"upstream error in a 200 answer: {upstream_message(body, 200)}", model)
        return self._bad(fallback, model)


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Any server speaking OpenAI's format at its own ``base_url`` (required)."""

    gen_ai_provider: ClassVar[str] = "openai"
    provider_type: ClassVar[str] = "openai-compatible"
    default_base_url: ClassVar[str | None] = None
