"""The one base of every HTTP provider adapter: ``complete`` and ``stream`` written once.

An adapter is a subclass that implements the same hooks with the same
signatures in every module:

=================================================  ===========================================
hook                                               what it does
=================================================  ===========================================
``_url(model, *, stream)``                          where the call goes
``await _headers(url, body, *, stream)``            request headers: auth, version, a signature
``_map_request(request, model)``                    the internal request as the native body
``_map_response(response, body, model)``            a native answer as a :class:`ChatCompletion`
``_stream_state(response, model)``                  fresh per-stream state (a :class:`StreamState`)
``_map_stream_event(event, state, model)``          one framed event to zero or more chunks
``_end_stream(state, model)``                       the upstream closed before ``state.done``
``_map_whole_stream(response, body, state, model)`` a stream answer that is not framed as one
``_map_error(response, body, model)``               a non-200 answer as a :class:`ProviderError`
=================================================  ===========================================

The base does the rest: the POST, transport errors (:func:`transport_error`,
which never carries the URL), the status check and the stream framing chosen
by :attr:`HttpChatAdapter.framing` (server-sent events, NDJSON lines or AWS
event-stream frames, see :mod:`services.providers.framing`). The wire structs
and the translation itself live in :mod:`shared.formats`; an adapter keeps the
connection, auth and the calls into those modules.

Problems with an endpoint's configuration are a 400 :class:`ConfigError`
(:func:`config_error`) in every adapter, and a request parameter the provider
cannot honour is a 400 ``unsupported_parameter`` (:func:`unsupported`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from typing import ClassVar, Generic, Literal, NamedTuple, TypeVar

import httpx
import msgspec

from services.providers.base import EndpointConnection
from services.providers.framing import FramingError, StreamEvent, frames
from services.providers.http import Answer, status_error, transport_error
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from shared.errors import BadUpstreamResponse, ConfigError, ProviderError, unsupported
from shared.formats import passthrough

__all__ = [
    "Framing",
    "HttpChatAdapter",
    "NativePiece",
    "StreamState",
    "config_error",
    "unsupported",
]

Framing = Literal["sse", "ndjson", "aws-eventstream"]
"""How a streamed answer is framed on the wire."""


class StreamState:
    """What earlier events of one stream said; adapters subclass it with their own fields."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False
        """The stream is complete: the base stops reading and returns."""


S = TypeVar("S", bound=StreamState)


class NativePiece(NamedTuple):
    """One event of a stream answered in the client's own format."""

    data: bytes | None
    """The event as the client gets it; ``None``: nothing to relay (a framing event, or what the
    adapter owed at an early close)."""
    chunks: list[ChatCompletionChunk]
    """What the event means in the internal contract (may be empty)."""


def config_error(endpoint: str, param: str, why: str) -> ConfigError:
    """A problem with an endpoint's configuration (400 ``config_error``); to raise."""
    return ConfigError(f"endpoint {endpoint!r}: {param}: {why}", param=param)


class HttpChatAdapter(ABC, Generic[S]):
    """Translate one OpenAI-shaped chat call to an HTTP provider and back."""

    gen_ai_provider: ClassVar[str]
    """``gen_ai.provider.name`` for spans (OpenTelemetry GenAI conventions)."""
    provider_type: ClassVar[str]
    """The routing type this adapter serves (``shared.routing.PROVIDER_TYPES``)."""
    framing: ClassVar[Framing] = "sse"
    stream_content_type: ClassVar[str | None] = None
    """When set, a stream answer of another content type goes to :meth:`_map_whole_stream`."""
    native_format: ClassVar[str | None] = None
    """The API format (``shared.headers.FORMAT_VALUES``) this upstream speaks, when a client's own
    body in it is sent on as it came (:meth:`complete_native`, :meth:`stream_native`); ``None``:
    a body in another format is translated to the internal request first."""

    def __init__(self, connection: EndpointConnection) -> None:
        self.connection = connection
        self.endpoint = connection.endpoint

    # ------------------------------------------------------------ hooks

    @abstractmethod
    def _url(self, model: str, *, stream: bool) -> str:
        """Where a call for ``model`` goes (``stream``: the streaming variant, where it differs)."""

    @abstractmethod
    async def _headers(self, url: str, body: bytes, *, stream: bool) -> dict[str, str]:
        """The request headers: content type, auth, versions; Bedrock signs ``url`` and ``body`` here."""

    @abstractmethod
    def _map_request(self, request: ChatCompletionRequest, model: str) -> bytes:
        """The internal request as the native request body, for the upstream ``model``."""

    @abstractmethod
    def _map_response(self, response: Answer, body: bytes, model: str) -> ChatCompletion:
        """A native 200 answer as a completion; a 502 (:meth:`_bad`) when it is not a valid one."""

    @abstractmethod
    def _stream_state(self, response: Answer, model: str) -> S:
        """Fresh state for one stream (``response``: its head, e.g. for an id the vendor sends there)."""

    @abstractmethod
    def _map_stream_event(self, event: StreamEvent, state: S, model: str) -> Iterable[ChatCompletionChunk]:
        """One framed event to zero or more chunks; sets ``state.done`` on the event that ends the stream."""

    def _end_stream(self, state: S, model: str) -> Iterable[ChatCompletionChunk]:
        """The upstream closed the stream before an event set ``state.done``.

        Yields what is still owed (a usage chunk) when the answer was complete, else raises.
        """
        raise self._bad("stream ended before it was complete", model)

    def _map_whole_stream(self, response: Answer, body: bytes, state: S, model: str) -> Iterable[ChatCompletionChunk]:
        """A stream answer whose content type is not :attr:`stream_content_type`."""
        content_type = response.headers.get("content-type", "")
        raise self._bad(f"expected {self.stream_content_type}, got {content_type!r}", model)

    def _map_error(self, response: Answer, body: bytes, model: str) -> ProviderError:
        return status_error(response, body, provider=self.provider_type, model=model)

    # ------------------------------------------------------------ shared helpers

    def _bad(self, reason: str, model: str | None) -> BadUpstreamResponse:
        """A 502: the upstream's answer cannot be used."""
        return BadUpstreamResponse(f"{self.endpoint.name}: {reason}", provider=self.provider_type, model=model)

    def _transport_error(self, exc: httpx.HTTPError, model: str) -> ProviderError:
        return transport_error(exc, endpoint=self.endpoint.name, provider=self.provider_type, model=model)

    # ------------------------------------------------------------ native bodies

    def _native_request(self, body: bytes, model: str, *, stream: bool) -> bytes:
        """A client's own body in :attr:`native_format` as the upstream gets it: ``model`` set, all
        else as it came (:mod:`shared.formats.passthrough`)."""
        return passthrough.with_model(body, model)

    def _native_event(self, event: StreamEvent) -> bytes | None:
        """One upstream stream event as a client of :attr:`native_format` gets it (its ``data``), or
        ``None`` for an event the client does not get (a framing event such as OpenAI's ``[DONE]``)."""
        return event.data

    # ------------------------------------------------------------ adapter API

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """POST the mapped request and map the answer back."""
        if request.stream:
            request = msgspec.structs.replace(request, stream=False)
        return (await self._post(self._map_request(request, model), model, timeout_s))[1]

    async def complete_native(self, body: bytes, model: str, *, timeout_s: float) -> tuple[bytes, ChatCompletion]:
        """POST a client's own body (:attr:`native_format`); the upstream's answer as it came, and
        what it says (checked as :meth:`complete` checks it: a 502 when it is not an answer)."""
        return await self._post(self._native_request(body, model, stream=False), model, timeout_s)

    async def _post(self, body: bytes, model: str, timeout_s: float) -> tuple[bytes, ChatCompletion]:
        response, content = await self._send(self._url(model, stream=False), body, model, timeout_s)
        return content, self._map_response(response, content, model)

    async def _send(self, url: str, body: bytes, model: str, timeout_s: float) -> tuple[Answer, bytes]:
        """POST ``body`` to ``url`` with :meth:`_headers`; a 200 answer and its body, else the mapped error."""
        headers = await self._headers(url, body, stream=False)
        try:
            response = await self.connection.http.post(url, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, model) from None
        if response.status_code != 200:
            raise self._map_error(response, response.content, model)
        return response, response.content

    async def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Map events to chunks as their frames arrive; never buffer the stream whole."""
        if not request.stream:
            request = msgspec.structs.replace(request, stream=True)
        async for _, chunks in self._events(self._map_request(request, model), model, timeout_s):
            for chunk in chunks:
                yield chunk

    async def stream_native(self, body: bytes, model: str, *, timeout_s: float) -> AsyncIterator[NativePiece]:
        """Stream a client's own body (:attr:`native_format`): each upstream event as the client gets
        it (:meth:`_native_event`), with the chunks it means (for commit, usage and checks); the
        chunks still owed when the upstream closed early come last, with no bytes."""
        async for event, chunks in self._events(self._native_request(body, model, stream=True), model, timeout_s):
            yield NativePiece(self._native_event(event) if event is not None else None, chunks)

    async def _events(
        self, body: bytes, model: str, timeout_s: float
    ) -> AsyncIterator[tuple[StreamEvent | None, list[ChatCompletionChunk]]]:
        url = self._url(model, stream=True)
        headers = await self._headers(url, body, stream=True)
        try:
            async with self.connection.http.stream(
                "POST", url, content=body, headers=headers, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise self._map_error(response, await response.aread(), model)
                state = self._stream_state(response, model)
                expected = self.stream_content_type
                if expected is not None and not response.headers.get("content-type", "").startswith(expected):
                    yield None, list(self._map_whole_stream(response, await response.aread(), state, model))
                    return
                async for event in frames(self.framing, response):
                    yield event, list(self._map_stream_event(event, state, model))
                    if state.done:
                        return
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, model) from None
        except FramingError as exc:
            raise self._bad(f"broken stream: {exc}", model) from None
        yield None, list(self._end_stream(state, model))
