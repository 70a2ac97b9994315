"""OpenAI Chat Completions, and the base every OpenAI-format vendor subclasses.

API: https://platform.openai.com/docs/api-reference/chat . The wire format is
modelbus's own client format, so request mapping is a re-encode with the
upstream model substituted; the response is still decoded and validated, so a
malformed answer becomes a 502 instead of reaching the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import msgspec

from services.providers.base import EndpointConnection
from services.providers.http import Answer, status_error, transport_error, upstream_message
from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    StreamOptions,
    chunk_decoder,
    completion_decoder,
    encoder,
)
from shared.errors import BadUpstreamResponse, ProviderError

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class _MaybeError(msgspec.Struct):
    error: object | None = None


_maybe_error = msgspec.json.Decoder(_MaybeError)


class OpenAIAdapter:
    """OpenAI and OpenAI-compatible servers (``{base_url}/chat/completions``)."""

    gen_ai_provider: ClassVar[str] = "openai"
    provider_type: ClassVar[str] = "openai"
    default_base_url: ClassVar[str | None] = DEFAULT_BASE_URL

    def __init__(self, connection: EndpointConnection) -> None:
        self.connection = connection
        self.endpoint = connection.endpoint
        base = self.endpoint.base_url or self.default_base_url
        if not base:
            raise BadUpstreamResponse(f"endpoint {self.endpoint.name!r} needs a base_url", retryable=False)
        self.url = f"{base.rstrip('/')}/chat/completions"

    # ------------------------------------------------------------ mapping

    async def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        key = await self.connection.credential()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _url(self, model: str) -> str:
        """Where a call for ``model`` goes; Azure puts the deployment in the path."""
        return self.url

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        if request.stream:
            # Always ask for usage so spans and budgets see it; the worker only
            # forwards the usage chunk when the client asked for it.
            request = msgspec.structs.replace(request, model=model, stream_options=StreamOptions(include_usage=True))
        else:
            request = msgspec.structs.replace(request, model=model)
        return encoder.encode(request)

    def _map_response(self, body: bytes) -> ChatCompletion:
        try:
            return completion_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            raise self._map_error_body(body, f"malformed completion: {exc}") from exc

    def _map_stream_event(self, data: bytes) -> ChatCompletionChunk:
        try:
            return chunk_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise self._map_error_body(data, f"malformed stream chunk: {exc}") from exc

    def _map_error_body(self, body: bytes, fallback: str) -> ProviderError:
        """A 200 answer that is an error object or not a valid answer is a 502."""
        try:
            has_error = _maybe_error.decode(body).error is not None
        except msgspec.MsgspecError:
            has_error = False
        reason = f"upstream error in a 200 answer: {upstream_message(body, 200)}" if has_error else fallback
        return BadUpstreamResponse(f"{self.endpoint.name}: {reason}", provider=self.provider_type, model=None)

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        return status_error(response, body, provider=self.provider_type, model=model)

    # ------------------------------------------------------------ adapter API

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """POST the request and return the validated completion."""
        body = self._map_request(request, model)
        headers = await self._headers()
        url = self._url(model)
        try:
            response = await self.connection.http.post(url, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        if response.status_code != 200:
            raise self._map_error(response, response.content, model)
        return self._map_response(response.content)

    async def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Parse the SSE stream line by line as it arrives; never buffer it whole."""
        body = self._map_request(request, model)
        headers = await self._headers()
        headers["accept"] = "text/event-stream"
        try:
            async with self.connection.http.stream(
                "POST", self._url(model), content=body, headers=headers, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise self._map_error(response, await response.aread(), model)
                finished = False
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # SSE comments, event names and blank separators
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    if data:
                        chunk = self._map_stream_event(data.encode())
                        finished = finished or any(c.finish_reason for c in chunk.choices)
                        yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model) from None
        if finished:
            return  # some compatible servers omit [DONE] after the finish chunk
        raise BadUpstreamResponse(
            f"{self.endpoint.name}: stream ended before a finish reason or [DONE]",
            provider=self.provider_type,
            model=model,
        )


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Any server speaking OpenAI's format at its own ``base_url`` (required)."""

    gen_ai_provider: ClassVar[str] = "openai"
    provider_type: ClassVar[str] = "openai-compatible"
    default_base_url: ClassVar[str | None] = None
