"""What every endpoint of the gateway shares: the NATS side, the keys, the configuration, the limits.

A key's :class:`~services.gateway.keys.Grant` decides the request's agent
(:meth:`Core.nats_headers`): an unbound key passes ``x-modelbus-agent`` on as
sent; an agent-bound key routes as its agent, and naming another one is 403
``agent_not_allowed``; a namespace-bound key must name one of its namespace's
agents (``x-modelbus-agent: X`` means ``NS/X``), anything else is 403.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from services.gateway.asgi import AGENT, Headers, nats_headers, timeout_ms_of, trace_headers
from services.gateway.config_follower import ConfigFollower
from services.gateway.keys import Grant, KeyRing, StoreKeys
from services.gateway.upstream import Upstream
from shared import headers as H
from shared.errors import AuthenticationError, NoRouteAvailable, PolicyDenied
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


__all__ = ["Core", "Grant", "anthropic_key", "bearer_key"]


@dataclass(slots=True)
class Core:
    """The gateway's long-lived parts; one per process."""

    upstream: Upstream
    follower: ConfigFollower
    keys: KeyRing | None
    """The key file (``MODELBUS_GATEWAY_KEYS``), when one is set."""
    max_body: int
    """Largest request body accepted, in bytes."""
    store: StoreKeys | None = None
    """The JetStream key store (always, in the gateway process; ``None`` in unit tests of the file alone)."""

    def authorize(self, key: str | None, how: str) -> Grant:
        """What the caller's key allows; :class:`AuthenticationError` (401) when it has none or a
        wrong or expired one, :class:`NoRouteAvailable` (503) when the store's copy is not trusted
        and the file does not know the key. ``how`` tells the caller where the key goes. The key
        never appears in the error."""
        if key is None:
            raise AuthenticationError(f"no API key: send it as {how}", code="missing_api_key")
        digest = hashlib.sha256(key.encode()).hexdigest()  # once, for both sources
        store = self.store
        if store is not None and store.trusted:
            grant = store.grants.get(digest)
            if grant is not None:
                if grant.expires_at is not None and time.time() >= grant.expires_at:
                    raise AuthenticationError(f"the API key {grant.key!r} has expired", code="expired_api_key")
                return grant
            store = None  # judged: not in the store
        name = self.keys.check_digest(digest.encode()) if self.keys is not None else None
        if name is not None:
            return Grant(key=name)
        if store is not None:
            raise NoRouteAvailable(
                "the gateway cannot check API keys right now (its key store is not reachable); try again",
                code="key_store_unavailable",
            )
        raise AuthenticationError("the API key is not valid", code="invalid_api_key")

    def nats_headers(self, headers: Headers, request_id: str, grant: Grant) -> tuple[dict[str, str], float]:
        """A request's NATS headers and the time it may take, in seconds: ``x-modelbus-timeout-ms``,
        else the configuration's default deadline. ``grant`` is what :meth:`authorize` allowed;
        :class:`PolicyDenied` (403) when the request names an agent the key may not use."""
        routing = self.follower.routing
        default_ms = routing.defaults.timeout_ms if routing is not None else DEFAULT_TIMEOUT_MS
        timeout_ms = timeout_ms_of(headers, default_ms)
        out = nats_headers(headers, request_id, timeout_ms)
        out[H.KEY] = grant.key  # the key's name, for the usage ledger (routers trust it from the gateway only)
        if grant.agent is not None or grant.namespace is not None:
            out[H.AGENT] = agent_for(grant, out.get(H.AGENT))
        propagate_headers(out, trace_headers(headers))
        return out, timeout_ms / 1000


def agent_for(grant: Grant, asked: str | None) -> str:
    """The agent a bound key's request routes as; :class:`PolicyDenied` naming the header otherwise."""
    shown = AGENT.decode()
    if grant.agent is not None:
        if asked is not None and asked != grant.agent:
            raise PolicyDenied(
                f"this API key ({grant.key!r}) routes as agent {grant.agent!r}; {shown} may not name another",
                code="agent_not_allowed",
                param=shown,
            )
        return grant.agent
    namespace = grant.namespace
    if asked is None:
        raise PolicyDenied(
            f"this API key ({grant.key!r}) may use only agents of namespace {namespace!r}: name one in {shown}",
            code="agent_required",
            param=shown,
        )
    full = asked if "/" in asked else f"{namespace}/{asked}"
    if full.split("/", 1)[0] != namespace:
        raise PolicyDenied(
            f"this API key ({grant.key!r}) may use only agents of namespace {namespace!r}, not {asked[:100]!r}",
            code="agent_not_allowed",
            param=shown,
        )
    return full
