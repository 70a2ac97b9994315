"""What every provider adapter satisfies, and the connection it is given.

The *connection* (:class:`EndpointConnection`) owns how to reach an endpoint:
base URL, the pooled HTTP client (:class:`UpstreamClient`) and credentials fetched from the
secrets service. The *adapter* owns translation only: request, response,
stream and error mapping, with the same private helper names in every module
(``_map_messages``, ``_map_tools``, ``_map_response``, ``_map_stream_event``,
``_map_usage``, ``_map_finish_reason``, ``_map_error``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import ClassVar, Protocol

from services.providers.http import UpstreamClient
from services.providers.scrub import CredentialScrubber
from services.providers.ssrf import Resolver, SsrfGuard, system_resolver
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from shared.routing import Endpoint

call_credential: ContextVar[str | None] = ContextVar("call_credential", default=None)
"""A credential that came with the current call (BYO); set by the worker for one call only."""
call_secrets: ContextVar[set[str] | None] = ContextVar("call_secrets", default=None)
"""Every credential value the current call has sent upstream; the worker scrubs its errors of them
(:mod:`services.providers.scrub`). Set by the worker per call, filled by :meth:`EndpointConnection.sent`."""

CredentialGetter = Callable[[str, str], Awaitable[str]]
"""``(ref, endpoint_name) -> secret value``; raises a ProviderError when unavailable."""


class EndpointConnection:
    """One endpoint's connection state, shared by all requests to it."""

    def __init__(
        self, endpoint: Endpoint, get_credential: CredentialGetter, *, resolver: Resolver = system_resolver
    ) -> None:
        self.endpoint = endpoint
        self._get_credential = get_credential
        self._http: UpstreamClient | None = None
        self.guard = SsrfGuard(endpoint.name, allow_private=endpoint.allow_private, resolver=resolver)
        self.secrets_used: set[str] = set()
        """The endpoint's own credential values this connection has sent (never a BYO call's:
        those belong to one call, see :data:`call_secrets`); scrubbed from every error."""
        self._scrubber: CredentialScrubber | None = None
        self._scrubber_size = -1

    @property
    def http(self) -> UpstreamClient:
        """The endpoint's pooled HTTP client, created on first use and reused after.

        Every connection it opens passes the SSRF guard at the address it
        connects to (see :mod:`services.providers.ssrf`); redirects are never followed.
        """
        if self._http is None:
            self._http = UpstreamClient(timeout_s=self.endpoint.timeout_ms / 1000, guard=self.guard)
        return self._http

    async def credential(self) -> str | None:
        """The call's own credential (BYO), else the endpoint's secret, else ``None``."""
        inline = call_credential.get()
        if inline is not None:
            self.sent(inline)
            return inline
        if not self.endpoint.auth_ref:
            return None
        value = await self._get_credential(self.endpoint.auth_ref, self.endpoint.name)
        self.sent(value)
        return value

    def sent(self, *values: str | None) -> None:
        """Record credential values the current call sends (adapters that derive several
        from one secret, such as AWS keys, record each), so its errors are scrubbed of them.

        During a BYO call (:data:`call_credential` set) every value derives from the
        call's own credential and is recorded for the call only: kept on the shared
        connection it would outlive the call and pile up, one per tenant.
        """
        used = call_secrets.get()
        byo = call_credential.get() is not None
        for value in values:
            if value:
                if used is not None:
                    used.add(value)
                if not byo:
                    self.secrets_used.add(value)

    def scrubber(self, call_values: set[str]) -> CredentialScrubber:
        """A scrubber of a call's credential values and the endpoint's own.

        Built once per set of endpoint values and reused (a 429 storm must not
        rebuild it per error); a call that sent values of its own (BYO) gets a
        fresh one, so nothing derived from them outlives the call.
        """
        if not call_values <= self.secrets_used:
            return CredentialScrubber(call_values | self.secrets_used)
        if self._scrubber is None or self._scrubber_size != len(self.secrets_used):
            # secrets_used only grows (a rotated key adds its new value), so its size tells changes apart.
            self._scrubber = CredentialScrubber(self.secrets_used)
            self._scrubber_size = len(self.secrets_used)
        return self._scrubber

    async def aclose(self) -> None:
        """Close pooled connections."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None


class ChatAdapter(Protocol):
    """Translate one OpenAI-shaped chat call to a provider and back."""

    gen_ai_provider: ClassVar[str]
    """``gen_ai.provider.name`` for spans (OpenTelemetry GenAI conventions)."""
    connection: EndpointConnection
    """How the endpoint is reached; shared by every call to it."""

    def __init__(self, connection: EndpointConnection) -> None: ...

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """One non-streamed completion; raises a ProviderError subclass on failure."""
        ...

    def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks as they arrive; the usage chunk (no choices) last when known."""
        ...
