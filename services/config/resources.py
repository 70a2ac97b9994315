"""Native ``modelbus.dev/v1`` resources: spec models and strict validation.

Every supported format is converted to these kinds before validation, so one
set of rules (unknown fields are errors; errors name the document, the field
path and the reason) covers them all.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from shared.routing import PROVIDER_TYPES, Strategy

API_VERSION = "modelbus.dev/v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Metadata(_Strict):
    """Resource identity."""

    name: str = Field(min_length=1)
    """Resource name."""
    namespace: str | None = None
    """Optional namespace; the full name is then ``namespace/name``."""
    labels: dict[str, str] = {}
    """Free-form labels (kept, not interpreted)."""
    annotations: dict[str, str] = {}
    """Free-form annotations (kept, not interpreted)."""


class AuthSpec(_Strict):
    """How an endpoint authenticates; a reference only, never a value."""

    secret_ref: str = Field(alias="secretRef", min_length=1)
    """``env:VAR``, ``secret:name``, or a bare Secret name (Orloj)."""


class EndpointSpec(_Strict):
    """``ModelEndpoint.spec``."""

    provider: str
    """Provider type."""
    base_url: str | None = None
    """API root URL."""
    default_model: str | None = None
    """Model used when a request names only the endpoint."""
    options: dict[str, Any] = {}
    """Provider-specific options."""
    auth: AuthSpec | None = None
    """Credential reference."""
    allow_private: bool | None = Field(default=None, alias="allowPrivate")
    """Allow private/loopback addresses; defaults to true for ollama and mock."""
    timeout_ms: int = Field(default=60_000, ge=1, le=3_600_000)
    """Upstream timeout per attempt."""
    locality: Literal["local", "remote"] | None = None
    """Override the derived locality."""
    rpm: int | None = Field(default=None, ge=1, le=100_000_000)
    """The provider's quota in requests per minute: routers pick another target or wait instead of sending more."""
    tpm: int | None = Field(default=None, ge=1, le=100_000_000_000)
    """The provider's quota in tokens per minute (estimate reserved per attempt, corrected to actual usage)."""

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDER_TYPES:
            raise ValueError(f"unknown provider {value!r}; expected one of {', '.join(PROVIDER_TYPES)}")
        return value

    @field_validator("base_url")
    @classmethod
    def _is_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not a URL")
        return value.rstrip("/")


class TargetSpec(_Strict):
    """One alias target."""

    endpoint: str = Field(min_length=1)
    """Endpoint name."""
    model: str | None = None
    """Model at that endpoint; defaults to the endpoint's ``default_model``."""
    weight: float = Field(default=1.0, gt=0)
    """Relative weight for the ``weighted`` strategy."""
    capabilities: list[str] = []
    """Tags: ``code``, ``reasoning``, ``vision``, ``tools``, ..."""
    context_window: int | None = Field(default=None, ge=1)
    """Context window in tokens."""
    max_output_tokens: int | None = Field(default=None, ge=1)
    """Cap on output tokens to request."""


class AliasSpec(_Strict):
    """``ModelAlias.spec``."""

    targets: list[TargetSpec] = Field(min_length=1)
    """Targets in preference order."""
    strategy: Strategy | None = None
    """Selection strategy; defaults to the routing defaults."""


class DefaultsSpec(_Strict):
    """``RoutingDefaults.spec``."""

    strategy: Strategy = "failover"
    default_provider: str | None = None
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_delay_ms: int = Field(default=200, ge=0, le=60_000)
    timeout_ms: int = Field(default=60_000, ge=1, le=3_600_000)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=8 * 1024 * 1024 - 65536)
    run_pin_ttl_s: int = Field(default=3600, ge=1, le=30 * 86400)
    max_retry_after_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_window_s: float = Field(default=30.0, gt=0, le=3600)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=3600)
    stream_idle_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    byo_enabled: bool = True
    default_prices: bool = True
    """Whether the shipped price table prices models no ModelPrice covers."""


_CURRENCY = re.compile(r"[A-Z]{3}")
_RATE = Field(default=None, ge=0, max_digits=24, decimal_places=12)


class PriceSpec(_Strict):
    """``ModelPrice.spec``: what requests cost, per million tokens of each kind (and per request).

    Target: ``endpoint`` with ``model`` (one model at one endpoint), or ``model_pattern``
    (a case-sensitive glob over upstream model names), optionally with ``provider``.
    """

    endpoint: str | None = Field(default=None, min_length=1)
    """Endpoint name (resolved in the price's namespace first); needs ``model``."""
    model: str | None = Field(default=None, min_length=1)
    """Upstream model at ``endpoint``."""
    model_pattern: str | None = Field(default=None, min_length=1, max_length=200)
    """Glob over model names: ``*``, ``?``, ``[seq]``, ``[!seq]`` (``fnmatch``, case-sensitive)."""
    provider: str | None = None
    """Limit ``model_pattern`` to endpoints of this provider type."""
    input: Decimal = Field(ge=0, max_digits=24, decimal_places=12)
    """Prompt tokens not read from or written to the cache."""
    output: Decimal = Field(ge=0, max_digits=24, decimal_places=12)
    """Completion tokens other than reasoning."""
    cache_read: Decimal | None = _RATE
    """Prompt tokens read from the cache; defaults to ``input``."""
    cache_write: Decimal | None = _RATE
    """Prompt tokens written to the cache; defaults to ``input``."""
    reasoning: Decimal | None = _RATE
    """Reasoning tokens; defaults to ``output``."""
    per_request: Decimal | None = _RATE
    """A flat charge per answered request; none when absent."""
    currency: str = "USD"
    """ISO 4217 code (three capital letters) of every rate."""

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str | None) -> str | None:
        if value is not None and value not in PROVIDER_TYPES:
            raise ValueError(f"unknown provider {value!r}; expected one of {', '.join(PROVIDER_TYPES)}")
        return value

    @field_validator("currency")
    @classmethod
    def _currency_code(cls, value: str) -> str:
        if not _CURRENCY.fullmatch(value):
            raise ValueError(f"{value!r} is not an ISO 4217 code like USD or EUR")
        return value

    @field_serializer("input", "output", "cache_read", "cache_write", "reasoning", "per_request")
    def _exact_text(self, value: Decimal | None) -> str | None:
        # Stored as text: a float would round the rate, and text compares equal after a round trip
        # through the config log (so re-applying the same price is no change).
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _one_target(self) -> PriceSpec:
        if self.endpoint is not None and self.model_pattern is not None:
            raise ValueError("give endpoint (with model) or model_pattern, not both")
        if self.endpoint is None and self.model_pattern is None:
            raise ValueError("no target: give endpoint and model, or model_pattern")
        if self.endpoint is not None and self.model is None:
            raise ValueError("endpoint needs model (for every model of a kind, use model_pattern)")
        if self.model is not None and self.endpoint is None:
            raise ValueError("model needs endpoint (for a model at any endpoint, use model_pattern)")
        if self.provider is not None and self.endpoint is not None:
            raise ValueError("provider applies to model_pattern only (an endpoint has its own provider)")
        return self


class RateLimitSpec(_Strict):
    """``RateLimit.spec``: requests and/or tokens per minute per caller key, agent or namespace."""

    scope: Literal["key", "agent", "namespace"]
    """``key``: the gateway key name (else the broker identity); ``agent``; ``namespace``: the agent's namespace."""
    match: str | None = Field(default=None, min_length=1, max_length=256)
    """The one key, agent or namespace limited; absent: every value gets a limit of its own."""
    rpm: int | None = Field(default=None, ge=1, le=100_000_000)
    """Requests per minute."""
    tpm: int | None = Field(default=None, ge=1, le=100_000_000_000)
    """Tokens per minute (prompt estimate plus ``max_tokens`` reserved at admission, corrected after)."""

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitSpec:
        if self.rpm is None and self.tpm is None:
            raise ValueError("no limit: give rpm, tpm or both")
        return self


DEFAULT_ESTIMATE_TOKENS = 1024
"""Output tokens a Budget reserves for a request that sets no ``max_tokens``, unless it says otherwise."""


class BudgetSpec(_Strict):
    """``Budget.spec``: tokens and/or cost per key, agent, namespace or run, over a period (UTC)."""

    scope: Literal["key", "agent", "namespace", "run"]
    """``key``: the gateway key name (else the broker identity); ``agent``; ``namespace``: the
    agent's namespace; ``run``: ``Modelbus-Run-Id``."""
    match: str | None = Field(default=None, min_length=1, max_length=256)
    """The one key, agent, namespace or run budgeted; absent: every value gets a budget of its own."""
    period: Literal["run", "day", "month"]
    """``run`` (only with scope ``run``), or the UTC calendar ``day`` or ``month``."""
    max_tokens: int | None = Field(default=None, ge=1, le=10**15)
    """Tokens (input plus output) per period."""
    max_cost: Decimal | None = Field(default=None, gt=0, max_digits=24, decimal_places=12)
    """USD per period, priced with the answering target's ModelPrice (or the shipped table)."""
    estimate_tokens: int = Field(default=DEFAULT_ESTIMATE_TOKENS, ge=0, le=10**9)
    """Output tokens reserved for a request without ``max_tokens`` (on top of its prompt estimate)."""
    unknown_price: Literal["refuse", "count_tokens"] = "refuse"
    """With ``max_cost``: refuse a request that may reach a target with no price (``refuse``), or
    count such a request in tokens only (``count_tokens``)."""

    @field_serializer("max_cost")
    def _exact_cost(self, value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _coherent(self) -> BudgetSpec:
        if self.max_tokens is None and self.max_cost is None:
            raise ValueError("no limit: give max_tokens, max_cost or both")
        if self.period == "run" and self.scope != "run":
            raise ValueError(f"period 'run' needs scope 'run' (a {self.scope} has no runs; use day or month)")
        return self


class AgentLimits(_Strict):
    """Orloj ``Agent.spec.limits``; kept with the agent."""

    max_steps: int | None = Field(default=None, ge=1)
    timeout: str | None = None


class AgentSpec(_Strict):
    """``Agent.spec``: the routing part of an agent."""

    model_ref: str = Field(min_length=1)
    """Endpoint, alias or ``endpoint/model`` tried first."""
    fallback_model_refs: list[str] = []
    """Tried in order after ``model_ref`` on retryable errors."""
    limits: AgentLimits | None = None
    """Execution limits (informational for modelbus)."""
    record_text: bool = False
    """Store each request's prompt and completion text in ``MODELBUS_USAGE_TEXT`` (PII and pasted
    secrets included; readable by ``admin`` only, see docs/governance.md). Off: no text is stored."""


class PolicySpec(_Strict):
    """``AgentPolicy.spec``."""

    allowed_models: list[str] | None = None
    """Models the agents may reach; ``None`` allows all."""
    max_tokens_per_run: int | None = Field(default=None, ge=1)
    """Token budget per ``Modelbus-Run-Id``."""
    agents: list[str] | None = None
    """Agents it applies to (names in the policy's namespace or ``ns/name``); ``None``: every agent
    in its namespace (every agent, when the policy has no namespace or ``apply_mode: global``)."""
    blocked_tools: list[str] = []
    """Tool names a request may not offer (Orloj)."""
    apply_mode: Literal["scoped", "global"] = "scoped"
    """Orloj: ``global`` applies to every agent; ``scoped`` to its namespace (or ``agents``)."""
    target_systems: list[str] = []
    """Orloj AgentSystem names; kept for round trips, modelbus has no systems."""
    target_tasks: list[str] = []
    """Orloj Task names; kept for round trips, modelbus has no tasks."""


class SecretSpec(_Strict):
    """``Secret.spec`` (Orloj): the value is handed to the secrets service, never stored in config."""

    string_data: dict[str, str] | None = Field(default=None, alias="stringData")
    data: dict[str, str] | None = None
    """Base64-encoded values."""

    @model_validator(mode="after")
    def _one_value(self) -> SecretSpec:
        values = {**(self.data or {}), **(self.string_data or {})}
        if set(values) != {"value"}:
            raise ValueError("a Secret holds exactly one entry named 'value' in stringData or data")
        return self

    def value(self) -> str:
        """The secret's value (decoded from ``data`` when given there)."""
        if self.string_data and "value" in self.string_data:
            return self.string_data["value"]
        assert self.data is not None
        try:
            return base64.b64decode(self.data["value"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("data.value: not valid base64 text") from exc


SPECS: dict[str, type[_Strict]] = {
    "ModelEndpoint": EndpointSpec,
    "ModelAlias": AliasSpec,
    "Agent": AgentSpec,
    "AgentPolicy": PolicySpec,
    "RoutingDefaults": DefaultsSpec,
    "ModelPrice": PriceSpec,
    "Budget": BudgetSpec,
    "RateLimit": RateLimitSpec,
    "Secret": SecretSpec,
}
"""Native kinds; ``Secret`` is accepted but never stored in the configuration."""
CONFIG_KINDS = tuple(k for k in SPECS if k != "Secret")


class Resource(BaseModel):
    """A validated resource: kind, full name, typed spec and the format it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: str
    name: str
    spec: Any
    source: str = API_VERSION


class SecretValue(BaseModel):
    """A secret found in the documents; goes to the secrets service, never into config."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: str

    def __repr__(self) -> str:  # never show the value, even in a traceback
        return f"SecretValue(name={self.name!r}, value=<redacted>)"

    __str__ = __repr__


class _Document(_Strict):
    api_version: Literal["modelbus.dev/v1"] = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    spec: dict[str, Any]


def describe(index: int, doc: Mapping[str, Any]) -> str:
    """``doc N (Kind name)`` for error messages."""
    kind = doc.get("kind", "?")
    meta = doc.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
    return f"doc {index} ({kind} {name})"


def format_errors(where: str, exc: ValidationError, prefix: str = "") -> str:
    """One ``where: path: reason`` per pydantic error."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        lines.append(f"{where}: {path}: {reason}")
    return "; ".join(lines)


def full_name(metadata: Metadata) -> str:
    """``namespace/name``, or ``name`` for no namespace (Orloj's ``default`` counts as none)."""
    if metadata.namespace and metadata.namespace != "default":
        return f"{metadata.namespace}/{metadata.name}"
    return metadata.name


def parse_native(index: int, raw: Mapping[str, Any], *, source: str = API_VERSION) -> Resource | SecretValue:
    """Validate one native document; raises ``ValueError`` with the full message."""
    where = describe(index, raw)
    try:
        doc = _Document.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(format_errors(where, exc)) from None
    spec_type = SPECS.get(doc.kind)
    if spec_type is None:
        raise ValueError(f"{where}: kind: unknown kind {doc.kind!r}; expected one of {', '.join(SPECS)}")
    try:
        spec = spec_type.model_validate(doc.spec)
    except ValidationError as exc:
        raise ValueError(format_errors(where, exc, "spec")) from None
    name = full_name(doc.metadata)
    if isinstance(spec, SecretSpec):
        try:
            return SecretValue(name=name, value=spec.value())
        except ValueError as exc:
            raise ValueError(f"{where}: spec.{exc}") from None
    return Resource(kind=doc.kind, name=name, spec=spec, source=source)


def spec_to_dict(resource: Resource) -> dict[str, Any]:
    """The native spec as plain data, with field names as written in documents."""
    data: dict[str, Any] = resource.spec.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
    return data


def resource_from_stored(kind: str, name: str, spec: Mapping[str, Any], source: str) -> Resource:
    """Rebuild a validated resource from the store."""
    return Resource(kind=kind, name=name, spec=SPECS[kind].model_validate(spec), source=source)
