"""Anthropic Messages API (``POST {base_url}/messages``).

API: https://docs.anthropic.com/en/api/messages ; streaming events:
https://docs.anthropic.com/en/docs/build-with-claude/streaming . The wire
structs and the translation, with every mapping, drop and refusal, are in
:mod:`shared.formats.anthropic`; this adapter keeps the URL, the headers, the
options and the error mapping.

Errors: HTTP status through the shared mapping, 529 (overloaded) as a retryable
503; an ``error`` event mid-stream maps by its ``error.type`` the same way (one
helper, :meth:`AnthropicAdapter._status_error`). The retry hint is
``retry-after-ms``/``retry-after``, else the latest of Anthropic's
``anthropic-ratelimit-*-reset`` times
(https://docs.anthropic.com/en/api/rate-limits#response-headers).

Endpoint options
================

===================== ============== ==================================================
option                default        effect
===================== ============== ==================================================
``anthropic_version`` ``2023-06-01`` ``anthropic-version`` header
``max_tokens``        ``4096``       ``max_tokens`` when the request sets no limit
                                     (a string such as ``"1024"`` or a number)
``anthropic_beta``    (none)         ``anthropic-beta`` header: comma-separated names
                                     (a string, or a list joined with commas)
===================== ============== ==================================================
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import msgspec

from services.providers.adapter import HttpChatAdapter, StreamState, config_error
from services.providers.base import EndpointConnection
from services.providers.framing import StreamEvent
from services.providers.http import Answer, parse_retry_after, upstream_message
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from shared.errors import BadUpstreamResponse, ProviderError, error_from_status
from shared.formats import anthropic as native
from shared.formats import passthrough

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
RATE_LIMIT_RESETS = (
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
)
"""Anthropic's rate-limit reset headers: RFC 3339 times when each limit is replenished."""


class AnthropicStreamState(StreamState):
    """The native stream reader: ids, tool-call numbering, usage and the finish reason so far."""

    __slots__ = ("reader",)

    def __init__(self) -> None:
        super().__init__()
        self.reader = native.StreamReader()


class AnthropicAdapter(HttpChatAdapter[AnthropicStreamState]):
    """Anthropic's Messages API at ``{base_url}/messages`` with ``x-api-key`` auth."""

    gen_ai_provider: ClassVar[str] = "anthropic"
    provider_type: ClassVar[str] = "anthropic"
    framing = "sse"
    stream_content_type: ClassVar[str | None] = "text/event-stream"
    native_format: ClassVar[str | None] = "anthropic"

    def __init__(self, connection: EndpointConnection) -> None:
        super().__init__(connection)
        base = self.endpoint.base_url or DEFAULT_BASE_URL
        self.url = f"{base.rstrip('/')}/messages"
        options = self.endpoint.options
        self.default_max_tokens = _positive_int(self.endpoint.name, options, "max_tokens", DEFAULT_MAX_TOKENS)
        self._static_headers = {
            "content-type": "application/json",
            "anthropic-version": str(options.get("anthropic_version") or DEFAULT_VERSION),
        }
        beta = options.get("anthropic_beta")
        if beta:
            self._static_headers["anthropic-beta"] = ",".join(beta) if isinstance(beta, list) else str(beta)

    # ------------------------------------------------------------ hooks

    def _url(self, model: str, *, stream: bool) -> str:
        return self.url

    async def _headers(self, url: str, body: bytes, *, stream: bool) -> dict[str, str]:
        headers = dict(self._static_headers)
        headers["accept"] = "text/event-stream" if stream else "application/json"
        key = await self.connection.credential()
        if key:
            headers["x-api-key"] = key
        return headers

    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        return native.request_to_native(request, model, default_max_tokens=self.default_max_tokens)

    async def count_tokens_native(self, body: bytes, model: str, *, timeout_s: float) -> bytes:
        """Anthropic's own count of a ``count_tokens`` body (``model`` set): ``{"input_tokens": N}``,
        as it came; a 502 when the answer is not one."""
        _, answer = await self._send(f"{self.url}/count_tokens", passthrough.with_model(body, model), model, timeout_s)
        try:
            native.token_count_from_native(answer)
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(answer, f"malformed token count: {exc}", model) from exc
        return answer

    def _native_event(self, event: StreamEvent) -> bytes | None:
        """The whole event (its name and data), as an Anthropic client reads it."""
        return b"event: %s\ndata: %s\n\n" % (event.name.encode(), event.data.replace(b"\n", b"\ndata: "))

    def _map_response(self, response: Answer, body: bytes, model: str) -> ChatCompletion:
        try:
            return native.completion_from_native(body)
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(body, f"malformed message: {exc}", model) from exc

    def _stream_state(self, response: Answer, model: str) -> AnthropicStreamState:
        return AnthropicStreamState()

    def _map_stream_event(
        self, event: StreamEvent, state: AnthropicStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        try:
            chunks = state.reader.read(event.name, event.data)
        except native.StreamError as exc:
            status = native.ERROR_STATUS.get(exc.type, 500)
            raise self._status_error(status, f"{exc.type}: {exc.message} (mid-stream)", model, None) from None
        except native.InvalidAnswer as exc:
            raise self._bad(str(exc), model) from None
        except msgspec.MsgspecError as exc:
            raise self._bad_answer(event.data, f"malformed {event.name} event: {exc}", model) from exc
        state.done = state.reader.stopped
        return chunks

    def _end_stream(self, state: AnthropicStreamState, model: str) -> Iterable[ChatCompletionChunk]:
        if state.reader.finish_reason is not None:  # complete answer, only message_stop missing
            return (state.reader.usage_chunk(),)
        raise self._bad("stream ended before message_stop", model)

    def _map_whole_stream(
        self, response: Answer, body: bytes, state: AnthropicStreamState, model: str
    ) -> Iterable[ChatCompletionChunk]:
        content_type = response.headers.get("content-type", "")
        raise self._bad_answer(body, f"expected an event stream, got {content_type!r}", model)

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        status = response.status_code
        retry_after = parse_retry_after(response.headers)
        if retry_after is None:
            retry_after = _rate_limit_reset(response.headers)
        return self._status_error(status, upstream_message(body, status), model, retry_after)

    # ------------------------------------------------------------ errors

    def _status_error(self, status: int, message: str, model: str, retry_after: float | None) -> ProviderError:
        """The one status mapping of HTTP errors and ``error`` events; 529 is Anthropic's
        "overloaded", a retryable 503."""
        return error_from_status(
            503 if status == 529 else status,
            f"{self.provider_type} returned {status}: {message}",
            provider=self.provider_type,
            model=model,
            retry_after=retry_after,
        )

    def _bad_answer(self, body: bytes, fallback: str, model: str) -> BadUpstreamResponse:
        """A 200 that carries an error object or no valid answer is a 502."""
        error = native.error_in(body)
        reason = f"upstream error in a 200 answer: {error.type}: {error.message}" if error else fallback
        return self._bad(reason, model)


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """Seconds until the latest ``anthropic-ratelimit-*-reset`` time, or ``None`` without one."""
    resets = [_rfc3339_in(headers.get(name)) for name in RATE_LIMIT_RESETS]
    known = [r for r in resets if r is not None]
    return max(known) if known else None


def _rfc3339_in(value: str | None) -> float | None:
    """Seconds from now until an RFC 3339 time (never negative); ``None`` for absent or unreadable."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _positive_int(endpoint: str, options: dict[str, Any], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise config_error(endpoint, f"options.{name}", f"expected a positive whole number, got {raw!r}")
    return value
