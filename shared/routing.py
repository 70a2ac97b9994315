"""The compiled routing configuration that the config service publishes.

The config service turns whatever documents it was given (native, Orloj, Aegis,
environment) into one :class:`RoutingConfig` and stores it in JetStream KV. The
router never parses documents: it reads this struct and builds its immutable
routing table from it. Credentials appear only as references, never as values.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

PROVIDER_TYPES: tuple[str, ...] = (
    "mock",
    "openai",
    "openai-compatible",
    "azure-openai",
    "anthropic",
    "bedrock",
    "ollama",
    "gemini",
)
"""Provider types the contract knows; each has its own subject and worker adapter."""
LOCAL_PROVIDER_TYPES: frozenset[str] = frozenset({"mock", "ollama"})
"""Types whose data never leaves the host, whatever their URL."""

Strategy = Literal["failover", "round-robin", "prefer-local", "weighted", "least-latency", "least-busy"]
Locality = Literal["local", "remote"]


class Endpoint(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A concrete provider endpoint: where to send, how to authenticate."""

    name: str
    """Unique name, ``name`` or ``namespace/name``."""
    provider: str
    """Provider type: ``mock``, ``openai``, ``openai-compatible``, ``anthropic``, ..."""
    base_url: str | None = None
    """Root URL of the provider's API; ``None`` for the provider's public default."""
    default_model: str | None = None
    """Model used when a request names the endpoint alone."""
    auth_ref: str | None = None
    """Credential reference for the secrets service: ``env:VAR`` or ``secret:path``."""
    options: dict[str, Any] = {}
    """Provider-specific options (``api_version``, ``latency_ms`` for mock, ...)."""
    allow_private: bool = False
    """Allow connections to loopback and private addresses (SSRF guard off)."""
    timeout_ms: int = 60_000
    """Upstream timeout for one attempt."""
    locality: Locality = "remote"
    """Whether data stays on the host (``local``) or leaves it (``remote``)."""


class Target(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One place an alias may send a request."""

    endpoint: str
    """Endpoint name."""
    model: str
    """Upstream model name at that endpoint."""
    weight: float = 1.0
    """Relative weight for the ``weighted`` strategy."""


class Alias(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A model name clients ask for, mapped to one or more targets."""

    name: str
    """The alias: ``default``, ``fast``, ``smart``, or any custom name."""
    targets: list[Target]
    """Targets in preference order."""
    strategy: Strategy | None = None
    """Selection strategy; ``None`` uses the routing defaults."""


class RoutingDefaults(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Global routing settings (Aegis ``llm_selection`` maps here)."""

    strategy: Strategy = "failover"
    """Strategy for aliases that set none."""
    default_provider: str | None = None
    """Endpoint tried first by ``failover``."""
    max_retries: int = 2
    """Retries per request, across targets."""
    retry_delay_ms: int = 200
    """Base delay of the exponential backoff."""
    timeout_ms: int = 60_000
    """Overall deadline when the request sets no ``Modelbus-Timeout-Ms``."""
    max_request_bytes: int = 4 * 1024 * 1024
    """Requests larger than this get a 413."""


class RoutingConfig(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Everything a router needs, at one revision."""

    revision: int
    """Monotonically increasing config revision."""
    endpoints: dict[str, Endpoint]
    """Endpoints by name."""
    aliases: dict[str, Alias]
    """Aliases by name."""
    defaults: RoutingDefaults = RoutingDefaults()
    """Global settings."""


routing_encoder = msgspec.json.Encoder()
routing_decoder = msgspec.json.Decoder(RoutingConfig)
endpoint_decoder = msgspec.json.Decoder(Endpoint)
