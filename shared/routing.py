"""The compiled routing configuration that the config service publishes.

The config service turns whatever documents it was given (native, Orloj, Aegis,
environment) into one :class:`RoutingConfig` and appends it, inside each
revision's :class:`shared.admin.ConfigRecord`, to the JetStream stream
:data:`shared.subjects.CONFIG_STREAM`. The router never parses documents: it
reads this struct and builds its immutable routing table from it. Credentials
appear only as references, never as values.
"""

from __future__ import annotations

from decimal import Decimal
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
    "deepseek",
    "vllm",
)
"""Provider types the contract knows; each has its own subject and worker adapter."""
LOCAL_PROVIDER_TYPES: frozenset[str] = frozenset({"mock", "ollama"})
"""Types whose data never leaves the host, whatever their URL."""
COUNTING_PROVIDER_TYPES: frozenset[str] = frozenset({"anthropic"})
"""Provider types whose workers answer ``Modelbus-Operation: count_tokens`` with the upstream's own
count (Anthropic's ``/v1/messages/count_tokens``); routers send counts only to these."""

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
    rpm: int | None = None
    """The provider's quota in requests per minute; routers shape traffic to it (``services.router.quotas``)."""
    tpm: int | None = None
    """The provider's quota in tokens per minute; routers shape traffic to it."""


class Target(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One place an alias may send a request."""

    endpoint: str
    """Endpoint name."""
    model: str
    """Upstream model name at that endpoint."""
    weight: float = 1.0
    """Relative weight for the ``weighted`` strategy."""
    capabilities: list[str] = []
    """Tags such as ``code``, ``reasoning``, ``vision``, ``tools`` (Aegis ``capabilities``)."""
    context_window: int | None = None
    """Context window in tokens, when known."""
    max_output_tokens: int | None = None
    """Cap on output tokens to request from the provider."""


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
    run_pin_ttl_s: int = 3600
    """How long a ``Modelbus-Run-Id`` stays pinned to the revision of its first request."""
    max_retry_after_ms: int = 30_000
    """Cap on a provider's ``Retry-After`` hint between attempts."""
    breaker_failures: int = 5
    """Failures of one target (endpoint and model) within ``breaker_window_s`` that open its breaker."""
    breaker_window_s: float = 30.0
    """Window in which failures are counted."""
    breaker_cooldown_s: float = 30.0
    """How long an open breaker skips its target before letting one probe through."""
    stream_idle_timeout_ms: int = 60_000
    """Longest silence tolerated between two chunks of a stream."""
    byo_enabled: bool = True
    """Whether requests may bring their own endpoint (``Modelbus-Env``)."""
    default_prices: bool = True
    """Whether the shipped price table (``shared/data/prices.json``) prices models no ModelPrice covers."""


class Agent(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """An agent binding: what ``Modelbus-Agent: <name>`` routes to."""

    name: str
    """``name`` or ``namespace/name``."""
    model_ref: str
    """Endpoint, alias or ``endpoint/model`` tried first (resolved in the agent's namespace first)."""
    fallback_model_refs: list[str] = []
    """Tried in order after ``model_ref``, on retryable errors."""
    policies: list[str] = []
    """Names of the AgentPolicies that apply to it."""
    record_text: bool = False
    """Requests as this agent have their prompt and completion stored (``MODELBUS_USAGE_TEXT``)."""


class Policy(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """An AgentPolicy: limits on what an agent may use."""

    name: str
    allowed_models: list[str] | None = None
    """Models the agent may reach (checked on every target, fallbacks included)."""
    max_tokens_per_run: int | None = None
    """Token budget shared by all requests with the same ``Modelbus-Run-Id``."""
    blocked_tools: list[str] = []
    """Tool names a request under this policy may not offer."""


PriceOrigin = Literal["config", "default"]


class Price(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What requests to one endpoint and model, or to models matching a pattern, cost.

    Rates are in ``currency`` per million tokens of each kind (see :mod:`shared.pricing` for
    what each kind counts); the config service fills in every rate, so none is missing here.
    Exactly one of ``endpoint`` (with ``model``) or ``model_pattern`` is set.
    """

    name: str
    """The ModelPrice's full name, or ``default:<vendor>/<entry>`` for a shipped price."""
    input: Decimal
    """Prompt tokens neither read from nor written to the provider's cache."""
    output: Decimal
    """Completion tokens other than reasoning."""
    cache_read: Decimal
    """Prompt tokens read from the provider's cache."""
    cache_write: Decimal
    """Prompt tokens written to the provider's cache."""
    reasoning: Decimal
    """Completion tokens spent on reasoning."""
    per_request: Decimal = Decimal(0)
    """A flat charge per answered request."""
    currency: str = "USD"
    """ISO 4217 code of every rate."""
    endpoint: str | None = None
    """Endpoint name, for a price of one endpoint and model."""
    model: str | None = None
    """Upstream model name at ``endpoint``."""
    model_pattern: str | None = None
    """Case-sensitive glob (``fnmatch``: ``*``, ``?``, ``[seq]``) over upstream model names."""
    provider: str | None = None
    """Provider type the pattern is limited to; ``None`` for every provider."""
    origin: PriceOrigin = "config"
    """``config`` for a ModelPrice, ``default`` for the shipped table."""
    source: str | None = None
    """Where the figures come from (the vendor's pricing page, for shipped prices)."""
    as_of: str | None = None
    """Date the figures were read (``YYYY-MM-DD``), for shipped prices."""


RateLimitScope = Literal["key", "agent", "namespace"]


class RateLimit(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Requests and/or tokens per minute for one caller key, agent or namespace (``services.router.ratelimits``)."""

    name: str
    """The RateLimit's full name."""
    scope: RateLimitScope
    """What is counted: the gateway key (or broker identity), the agent, or the agent's namespace."""
    match: str | None = None
    """The one value limited; ``None``: every value of the scope gets its own count."""
    rpm: int | None = None
    """Requests admitted per minute."""
    tpm: int | None = None
    """Tokens admitted per minute (estimate reserved at admission, corrected to actual usage)."""


BudgetScope = Literal["key", "agent", "namespace", "run"]
BudgetPeriod = Literal["run", "day", "month"]
UnknownPrice = Literal["refuse", "count_tokens"]


class Budget(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A cap on tokens and/or cost per key, agent, namespace or run, over a period
    (``services.router.budgets``; the state lives in :mod:`shared.budgets`)."""

    name: str
    """The Budget's full name, or ``<policy>:max_tokens_per_run`` for an AgentPolicy's."""
    scope: BudgetScope
    """What is counted: the gateway key (or broker identity), the agent, its namespace, or the run."""
    period: BudgetPeriod
    """``run`` (scope run only), or the UTC ``day`` or ``month``."""
    match: str | None = None
    """The one value budgeted; ``None``: every value of the scope gets its own budget."""
    max_tokens: int | None = None
    """Tokens (input plus output) per period; refused at ``>=``."""
    max_cost: Decimal | None = None
    """Cost in USD per period, priced by the answering target's price; refused at ``>=``."""
    estimate_tokens: int = 0
    """Output tokens reserved for a request that sets no ``max_tokens``."""
    unknown_price: UnknownPrice = "refuse"
    """With ``max_cost``: a request that may reach an unpriced target is refused (``refuse``), or
    counted in tokens only (``count_tokens``)."""
    policy: str | None = None
    """Only requests under this AgentPolicy (set for a policy's ``max_tokens_per_run``)."""


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
    agents: dict[str, Agent] = {}
    """Agents by full name."""
    policies: dict[str, Policy] = {}
    """Policies by full name."""
    prices: list[Price] = []
    """Every price routers may apply: the ModelPrices, then (unless ``defaults.default_prices`` is
    off) the shipped table; :class:`shared.pricing.PriceTable` decides which one applies."""
    budgets: list[Budget] = []
    """Every Budget, and one per AgentPolicy ``max_tokens_per_run``, by name."""
    rate_limits: list[RateLimit] = []
    """Every RateLimit, by name."""


routing_encoder = msgspec.json.Encoder()
routing_decoder = msgspec.json.Decoder(RoutingConfig)
endpoint_decoder = msgspec.json.Decoder(Endpoint)
