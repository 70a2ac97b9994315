"""Internal messages between services (not client-facing).

:class:`ProviderCall` is what a router sends to a provider worker. It embeds
the client's request bytes and the endpoint spec as :class:`msgspec.Raw`, so
the router forwards them without re-encoding, and a provider worker can key its
per-endpoint connection pool on the exact spec bytes.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct


class ProviderCall(Struct, kw_only=True, frozen=True):
    """Router → provider worker on ``modelbus.v1.provider.<type>.chat``.

    The answer goes to ``deliver_to`` (the client); the message's reply subject
    (the router) gets heartbeats while the call is in flight and exactly one
    outcome (see :mod:`shared.replies` and docs/contract.md).
    """

    endpoint: msgspec.Raw
    """JSON of a :class:`shared.routing.Endpoint` (no secret values, only references)."""
    model: str
    """Upstream model to call; replaces the request's ``model``."""
    request: msgspec.Raw
    """The client's request JSON, byte for byte: a ``ChatCompletionRequest``, or a body in
    :attr:`format`."""
    format: str | None = None
    """The API format of :attr:`request` when it is a client's own body (``Modelbus-Format``:
    ``openai`` or ``anthropic``); an adapter whose upstream speaks it sends the body on as it
    came (``model`` set), any other translates it. ``None``: the internal contract."""
    operation: str | None = None
    """``count_tokens``: answer the upstream's count of the request's input tokens
    (``{"input_tokens": N}``, Anthropic's shape) instead of a completion; ``None``: chat."""
    attempt: int = 1
    """Attempt number within the request, from 1."""
    credential: str | None = None
    """A credential that came with the request itself (a BYO endpoint's token).
    Used for this call only: never cached, logged or traced."""
    deliver_to: str | None = None
    """Direct delivery: the client's reply subject. The worker publishes the
    answer there (a completion with ``deliver_headers`` added, or a stream's
    chunks and terminator) and sends the message's own reply subject only
    heartbeats and the outcome (``Modelbus-Delivered: 1``); failures before
    anything reached the client go to the reply subject alone, so the router
    keeps every fallback decision. A worker that may already be taken for lost
    answers the router instead, which relays (see docs/architecture.md,
    "Exactly one answer")."""
    deliver_headers: dict[str, str] = {}
    """Headers the router would have put on the client's answer (endpoint,
    attempts, request id, revision, router id); the worker adds status,
    provider and model."""
    keepalive: bool = False
    """The client accepts keepalives (always true for streams)."""
    idle_timeout_ms: int | None = None
    """A stream that sends nothing for this long fails (the route's ``stream_idle_timeout_ms``)."""


class CredentialRequest(Struct, kw_only=True, frozen=True):
    """Provider worker → secrets service on ``modelbus.v1.secrets.get``."""

    ref: str
    """``env:VAR`` or ``secret:path``."""
    endpoint: str | None = None
    """Endpoint the credential is for; for audit and error messages."""


class Credential(Struct, kw_only=True, frozen=True):
    """The secrets service's success reply. Never logged, traced or persisted."""

    value: str
    """The secret value."""
    ttl_s: float = 300.0
    """How long the requester may cache it."""


class ConfigChanged(Struct, kw_only=True, frozen=True):
    """Published on ``modelbus.v1.config.events`` after every accepted change."""

    revision: int
    """The new revision."""
    op: Literal["upsert", "delete", "replace"] = "replace"
    """What happened."""
    kind: str | None = None
    """Resource kind changed, when one resource changed."""
    name: str | None = None
    """Resource name changed, when one resource changed."""


class SecretPut(Struct, kw_only=True, frozen=True):
    """Admin → secrets service on ``modelbus.v1.secrets.put``. The value is never logged."""

    name: str
    """Secret name, e.g. ``openai-api-key`` or ``llm-providers/openai``; ``secret:<name>`` refers to it."""
    value: str
    """The secret value."""
    actor: str = "unknown"
    """Who is setting it, for the audit log."""


class SecretDelete(Struct, kw_only=True, frozen=True):
    """Admin → secrets service on ``modelbus.v1.secrets.delete``."""

    name: str
    """Secret name."""
    actor: str = "unknown"
    """Who is deleting it."""


class SecretInfo(Struct, kw_only=True, frozen=True):
    """What the admin view shows of a secret: presence and provenance, never the value."""

    name: str
    """Secret name."""
    key_present: bool
    """Whether a value is available."""
    key_last4: str | None = None
    """Last four characters of the value (AuroraSOC's admin view), when present."""
    source: Literal["env", "store", "vault"] | None = None
    """Where the value comes from."""
    updated_at: str | None = None
    """RFC 3339 time of the last change, for stored secrets."""


class SecretList(Struct, kw_only=True, frozen=True):
    """Reply of ``modelbus.v1.secrets.list``."""

    items: list[SecretInfo]
    """Every known secret, sorted by name."""


class SecretsDescribe(Struct, kw_only=True, frozen=True):
    """Admin → secrets service on ``modelbus.v1.secrets.describe``."""

    refs: list[str]
    """References as endpoints hold them (``env:VAR``, ``secret:name``, bare names);
    each :class:`SecretInfo` in the reply has ``name`` set to the reference."""


class SecretChanged(Struct, kw_only=True, frozen=True):
    """Event on ``modelbus.v1.secrets.changed``; carries no value."""

    name: str
    """Secret name that changed."""
    op: Literal["set", "delete"]
    """What happened."""


provider_call_encoder = msgspec.json.Encoder()
provider_call_decoder = msgspec.json.Decoder(ProviderCall)
