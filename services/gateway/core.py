"""What every endpoint of the gateway shares: the NATS side, the keys, the configuration, the limits."""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.asgi import Headers, nats_headers, timeout_ms_of, trace_headers
from services.gateway.config_follower import ConfigFollower
from services.gateway.keys import KeyRing
from services.gateway.upstream import Upstream
from shared.errors import AuthenticationError
from shared.routing import RoutingDefaults
from shared.telemetry import propagate_headers

DEFAULT_TIMEOUT_MS = RoutingDefaults().timeout_ms
"""The deadline of a request that sets none, while no configuration is known (the router's default)."""


def bearer_key(headers: Headers) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (the scheme in any case), or ``None``."""
    raw = headers.get(b"authorization")
    if raw is None:
        return None
    scheme, _, value = raw.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return value.strip().decode("latin-1") or None


def anthropic_key(headers: Headers) -> str | None:
    """The key of ``x-api-key`` (Anthropic's header), else of ``Authorization: Bearer``."""
    raw = headers.get(b"x-api-key")
    if raw:
        return raw.strip().decode("latin-1") or None
    return bearer_key(headers)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid key allows: its name (for logs and spans) and what it is bound to."""

    key: str
    """The key's name, never its value."""
    agent: str | None = None
    """The agent every request of this key routes as (``x-modelbus-agent`` is then not needed)."""


@dataclass(slots=True)
class Core:
    """The gateway's long-lived parts; one per process."""

    upstream: Upstream
    follower: ConfigFollower
    keys: KeyRing
    max_body: int
    """Largest request body accepted, in bytes."""

    def authorize(self, key: str | None, how: str) -> Grant:
        """What the caller's key allows; :class:`AuthenticationError` (401) when it has none or a
        wrong one. ``how`` tells the caller where the key goes. The key never appears in the error."""
        if key is None:
            raise AuthenticationError(f"no API key: send it as {how}", code="missing_api_key")
        name = self.keys.check(key)
        if name is None:
            raise AuthenticationError("the API key is not valid", code="invalid_api_key")
        return Grant(key=name)

    def nats_headers(self, headers: Headers, request_id: str, grant: Grant) -> tuple[dict[str, str], float]:
        """A request's NATS headers and the time it may take, in seconds: ``x-modelbus-timeout-ms``,
        else the configuration's default deadline. ``grant`` is what :meth:`authorize` allowed."""
        routing = self.follower.routing
        default_ms = routing.defaults.timeout_ms if routing is not None else DEFAULT_TIMEOUT_MS
        timeout_ms = timeout_ms_of(headers, default_ms)
        out = nats_headers(headers, request_id, timeout_ms)
        propagate_headers(out, trace_headers(headers))
        return out, timeout_ms / 1000
