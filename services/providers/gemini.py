"""Google Gemini ``generateContent``: the Gemini API (AI Studio) and Vertex AI.

APIs: https://ai.google.dev/api/generate-content (AI Studio) and
https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/projects.locations.publishers.models/generateContent
(Vertex AI). Both take the same body (translated by :mod:`shared.formats.gemini`);
they differ in URL and auth, so each has its adapter class, and the registry
builds the one :func:`gemini_class` picks from the endpoint's ``options``:

==================== ==============================================================
``vertex``           ``"true"``: Vertex AI; ``"false"``: AI Studio. Unset: Vertex AI
                     when both ``project`` and ``location`` are set, else AI Studio
``project``          Vertex AI project id (required for Vertex AI)
``location``         Vertex AI region, e.g. ``us-central1`` (default ``global``)
``api_version``      path version: ``v1beta`` (AI Studio) / ``v1`` (Vertex) by default
``credential``       AI Studio only: ``api_key`` (default, sent as ``x-goog-api-key``)
                     or ``access_token`` (an OAuth token, sent as ``Authorization: Bearer``)
``safety_threshold`` ``BLOCK_NONE``, ``BLOCK_ONLY_HIGH``, ``BLOCK_MEDIUM_AND_ABOVE``,
                     ``BLOCK_LOW_AND_ABOVE`` or ``OFF``, for the four harm categories
==================== ==============================================================

A bad option is a 400 ``config_error`` naming it. Vertex AI always sends
``Authorization: Bearer <credential>`` (an OAuth access token kept fresh in the
secrets store). No credential ever goes in a URL. With no ``base_url`` the
public hosts are used (``generativelanguage.googleapis.com``;
``{location}-aiplatform.googleapis.com``, or ``aiplatform.googleapis.com`` for
``global``); a ``base_url`` replaces only the scheme and host part.

Streams use ``streamGenerateContent?alt=sse``; a server that ignores ``alt=sse``
answers with the whole stream as a JSON array, which is mapped the same way.
Gemini ends a stream by closing it: one that closes before a finish reason is a
502. A 200 answer that is Google's error object is a 502, except mid-stream,
where Gemini reports a failure that way and it keeps its status (a 503 stays
retryable). Errors: Google's ``RetryInfo`` is the retry hint (Gemini sends no
``Retry-After``), and AI Studio's 400 ``API_KEY_INVALID`` is a 401.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec

from services.providers.adapter import HttpChatAdapter, StreamState, config_error
from services.providers.base import EndpointConnection
from services.providers.framing import StreamEvent
from services.providers.http import Answer, parse_retry_after, upstream_message
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from shared.errors import ProviderError, error_from_status
from shared.formats import gemini as native
from shared.routing import Endpoint

AI_STUDIO_BASE_URL = "https://generativelanguage.googleapis.com"
_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
_ANSWER_ERRORS = (msgspec.MsgspecError, native.ErrorInAnswer, native.UnusableAnswer)
"""What the format module raises for an upstream answer it cannot use."""


class GeminiStreamState(StreamState):
    """The stream's translation state (ids, call count, usage so far)."""

    __slots__ = ("reader",)

    def __init__(self, model: str) -> None:
        super().__init__()
        self.reader = native.ChunkReader(model)


class GeminiAdapter(HttpChatAdapter[GeminiStreamState]):
    """Gemini on AI Studio, by API key (``x-goog-api-key``) or OAuth token."""

    gen_ai_provider: ClassVar[str] = "gcp.gemini"
    provider_type: ClassVar[str] = "gemini"
    framing = "sse"
    stream_content_type = "text/event-stream"
    default_version: ClassVar[str] = "v1beta"

    def __init__(self, connection: EndpointConnection) -> None:
        super().__init__(connection)
        options = self.endpoint.options
        version = _option(options, "api_version") or self.default_version
        if not re.fullmatch(r"v\d+\w*", version):
            raise config_error(self.endpoint.name, "options.api_version", f"not an API version: {version!r}")
        self.prefix, self.key_header = self._root(options, version)
        threshold = _option(options, "safety_threshold")
        if threshold is not None and threshold not in native.SAFETY_THRESHOLDS:
            allowed = ", ".join(sorted(native.SAFETY_THRESHOLDS))
            raise config_error(self.endpoint.name, "options.safety_threshold", f"one of {allowed}")
        self.safety_threshold = threshold

    def _root(self, options: dict[str, Any], version: str) -> tuple[str, str]:
        """``(URL prefix up to /models, the credential's header)``."""
        credential = _option(options, "credential") or "api_key"
        if credential not in ("api_key", "access_token"):
            why = f"expected api_key or access_token, got {credential!r}"
            raise config_error(self.endpoint.name, "options.credential", why)
        prefix = f"{(self.endpoint.base_url or AI_STUDIO_BASE_URL).rstrip('/')}/{version}"
        return prefix, "x-goog-api-key" if credential == "api_key" else "authorization"

    # ------------------------------------------------------------ hooks

    def _url(self, model: str, *, stream: bool) -> str:
        name = _model_segment(model)
        return f"{self.prefix}/models/{name}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")

    async def _headers(self, url: str, body: bytes, *, stream: bool) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        key = await self.connection.credential()
        if key:
            headers[self.key_header] = f"Bearer {key}" if self.key_header == "authorization" else key
        return headers

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        return native.request_to_native(request, safety_threshold=self.safety_threshold)

    def _map_response(self, response: Answer, body: bytes, model: str) -> ChatCompletion:
        try:
            return native.completion_from_native(body, model)
        except _ANSWER_ERRORS as exc:
            raise self._unusable(exc, "completion", model, in_stream=False) from None

    def _stream_state(self, response: Answer, model: str) -> GeminiStreamState:
        return GeminiStreamState(model)

    def _map_stream_event(
        self, event: StreamEvent, state: GeminiStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        try:
            chunk = state.reader.feed(event.data)
        except _ANSWER_ERRORS as exc:
            raise self._unusable(exc, "stream chunk", model, in_stream=True) from None
        return () if chunk is None else (chunk,)

    def _end_stream(self, state: GeminiStreamState, model: str) -> Iterable[ChatCompletionChunk]:
        """Gemini ends a stream by closing it: complete once a finish reason came; usage last."""
        if not state.reader.finished:
            raise self._bad("stream ended before a finish reason", model)
        usage = state.reader.usage_chunk()
        return () if usage is None else (usage,)

    def _map_whole_stream(
        self, response: Answer, body: bytes, state: GeminiStreamState, model: str
    ) -> Iterator[ChatCompletionChunk]:
        """A server that ignores ``alt=sse`` answers with the JSON array form of the stream."""
        try:
            answers = native.stream_from_native_array(body)
        except _ANSWER_ERRORS as exc:
            raise self._unusable(exc, "stream", model, in_stream=True) from None
        for answer in answers:
            try:
                chunk = state.reader.feed_answer(answer)
            except _ANSWER_ERRORS as exc:
                raise self._unusable(exc, "stream", model, in_stream=True) from None
            if chunk is not None:
                yield chunk
        yield from self._end_stream(state, model)

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        """Google's error shape: ``RetryInfo`` in the body is Gemini's retry hint (it sends no
        ``Retry-After``), and AI Studio answers a bad key with 400 ``API_KEY_INVALID``."""
        code = response.status_code
        status = native.error_status(body)
        message = status.message if status is not None and status.message else upstream_message(body, code)
        label = f"{code} {status.status}" if status is not None and status.status else str(code)
        retry_after = parse_retry_after(response.headers)
        if status is not None:
            if retry_after is None:
                retry_after = native.retry_delay(status)
            if code == 400 and native.error_reasons(status) & _BAD_KEY_REASONS:
                code = 401
        return error_from_status(
            code,
            f"{self.provider_type} returned {label}: {message}",
            provider=self.provider_type,
            model=model,
            retry_after=retry_after,
        )

    # ------------------------------------------------------------ errors

    def _unusable(self, exc: Exception, what: str, model: str, *, in_stream: bool) -> ProviderError:
        """A 200 answer the format module could not use. An error object in it is a 502, but
        inside a stream Gemini reports a failure mid-way this way, so it keeps its own status."""
        if isinstance(exc, native.ErrorInAnswer):
            error = exc.status
            message = error.message or "no message"
            if in_stream and error.code is not None and 400 <= error.code < 600:
                reason = f"{self.provider_type} failed mid-stream with {error.code} {error.status or ''}".rstrip()
                return error_from_status(error.code, f"{reason}: {message}", provider=self.provider_type, model=model)
            return self._bad(f"upstream error in a 200 answer: {message}", model)
        if isinstance(exc, native.UnusableAnswer):
            return self._bad(str(exc), model)
        return self._bad(f"malformed {what}: {exc}", model)


class VertexGeminiAdapter(GeminiAdapter):
    """Gemini on Vertex AI: project and location in the path, an OAuth bearer token."""

    gen_ai_provider: ClassVar[str] = "gcp.vertex_ai"
    default_version: ClassVar[str] = "v1"

    def _root(self, options: dict[str, Any], version: str) -> tuple[str, str]:
        project, location = _option(options, "project"), _option(options, "location") or "global"
        if project is None or not re.fullmatch(r"[A-Za-z0-9.:_-]+", project):
            raise config_error(self.endpoint.name, "options.project", "Vertex AI needs a project id")
        if not re.fullmatch(r"[a-z0-9-]+", location):
            raise config_error(self.endpoint.name, "options.location", f"not a region: {location!r}")
        host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        base = (self.endpoint.base_url or f"https://{host}").rstrip("/")
        return f"{base}/{version}/projects/{project}/locations/{location}/publishers/google", "authorization"


def gemini_class(endpoint: Endpoint) -> type[GeminiAdapter]:
    """The adapter class an endpoint of type ``gemini`` needs: :class:`VertexGeminiAdapter`
    when its options ask for Vertex AI (see the module docstring), else :class:`GeminiAdapter`."""
    flag = _option(endpoint.options, "vertex")
    if flag is None:
        vertex = _option(endpoint.options, "project") is not None and _option(endpoint.options, "location") is not None
    elif flag.lower() in ("true", "1", "yes"):
        vertex = True
    elif flag.lower() in ("false", "0", "no"):
        vertex = False
    else:
        raise config_error(endpoint.name, "options.vertex", f"expected true or false, got {flag!r}")
    return VertexGeminiAdapter if vertex else GeminiAdapter


def _model_segment(model: str) -> str:
    """The model as a path segment: a ``models/`` prefix is not doubled, anything unsafe is escaped."""
    return quote(model.removeprefix("models/"), safe="-._~@")


def _option(options: dict[str, Any], name: str) -> str | None:
    value = options.get(name)
    text = str(value).strip() if value is not None else ""
    return text or None
