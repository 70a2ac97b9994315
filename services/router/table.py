"""The router's immutable routing table and model-name resolution.

A :class:`RoutingTable` is built once per configuration revision and never
mutated; the router swaps it with a single assignment, so a request in flight
keeps the table it started with and the hot path takes no lock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec

from shared.errors import NotFound
from shared.pricing import PriceTable
from shared.routing import (
    Budget,
    Endpoint,
    Policy,
    Price,
    RateLimit,
    RoutingConfig,
    RoutingDefaults,
    Strategy,
    routing_encoder,
)
from shared.subjects import provider_subject

DEFAULT_ALIAS = "default"


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """Everything needed to send one attempt, precomputed per table."""

    endpoint: Endpoint
    model: str
    subject: str
    """Provider subject for the endpoint's provider type."""
    endpoint_raw: msgspec.Raw
    """The endpoint spec, encoded once, embedded as-is in every ProviderCall."""
    weight: float = 1.0
    capabilities: frozenset[str] = frozenset()
    """From the alias target (Aegis ``capabilities``)."""
    context_window: int | None = None
    max_output_tokens: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(endpoint name, model)``: what breakers, stats and policies are kept per."""
        return (self.endpoint.name, self.model)


@dataclass(frozen=True, slots=True)
class Route:
    """The resolved answer to "where may this request go?"."""

    name: str
    """What the request asked for."""
    targets: tuple[ResolvedTarget, ...]
    """Candidates in preference order."""
    strategy: Strategy
    policies: tuple[Policy, ...] = ()
    """The policies of the agent the request runs as (none without ``Modelbus-Agent``)."""
    record_text: bool = False
    """The agent opted in to storing prompt and completion text (``Agent.record_text``)."""


class RoutingTable:
    """Aliases and endpoints of one revision, ready for lock-free lookups."""

    __slots__ = (
        "_agents",
        "_aliases",
        "_endpoint_raw",
        "_endpoints",
        "_policies",
        "_prices",
        "budgets",
        "config_hash",
        "defaults",
        "rate_limits",
        "revision",
    )

    def __init__(self, config: RoutingConfig) -> None:
        self.revision = config.revision
        self.defaults: RoutingDefaults = config.defaults
        self.config_hash = hashlib.sha256(routing_encoder.encode(config)).hexdigest()[:16]
        """Equal hashes mean identical tables (revision included)."""
        self._agents = dict(config.agents)
        self._policies = dict(config.policies)
        self._endpoints = dict(config.endpoints)
        self._endpoint_raw = {name: msgspec.Raw(routing_encoder.encode(ep)) for name, ep in config.endpoints.items()}
        self._prices = PriceTable(config.prices)
        self.budgets: tuple[Budget, ...] = tuple(config.budgets)
        """Every Budget of the revision (empty: budgets cost a request nothing)."""
        self.rate_limits: tuple[RateLimit, ...] = tuple(config.rate_limits)
        """Every RateLimit of the revision (empty: admission costs nothing)."""
        self._aliases: dict[str, Route] = {}
        for name, alias in config.aliases.items():
            targets = tuple(
                self._target(
                    t.endpoint,
                    t.model,
                    t.weight,
                    frozenset(t.capabilities),
                    t.context_window,
                    t.max_output_tokens,
                )
                for t in alias.targets
            )
            self._aliases[name] = Route(name, targets, alias.strategy or config.defaults.strategy)

    def _target(
        self,
        endpoint_name: str,
        model: str,
        weight: float = 1.0,
        capabilities: frozenset[str] = frozenset(),
        context_window: int | None = None,
        max_output_tokens: int | None = None,
    ) -> ResolvedTarget:
        endpoint = self._endpoints[endpoint_name]
        return ResolvedTarget(
            endpoint=endpoint,
            model=model,
            subject=provider_subject(endpoint.provider),
            endpoint_raw=self._endpoint_raw[endpoint_name],
            weight=weight,
            capabilities=capabilities,
            context_window=context_window,
            max_output_tokens=max_output_tokens,
        )

    def price_for(self, endpoint_name: str, provider: str, model: str) -> Price | None:
        """The price of ``model`` at ``endpoint_name`` (of type ``provider``) at this revision, or
        ``None`` when nothing prices it (cost unknown, never 0); precedence in :mod:`shared.pricing`."""
        return self._prices.lookup(endpoint_name, provider, model)

    @property
    def prices(self) -> PriceTable:
        """This revision's prices (lookups, and exact costs for the usage ledger)."""
        return self._prices

    @property
    def alias_names(self) -> list[str]:
        """Names of all aliases, sorted."""
        return sorted(self._aliases)

    def resolve_agent(self, agent: str) -> Route:
        """Resolve a ``Modelbus-Agent`` binding: its ``model_ref``, then each fallback, in order.

        References were canonicalised by the config service (namespace first),
        so each resolves like a request's ``model``. A target reached twice is
        tried once.
        """
        binding = self._agents.get(agent)
        if binding is None:
            raise NotFound(f"unknown agent {agent!r}", code="agent_not_found", param="Modelbus-Agent")
        targets: list[ResolvedTarget] = []
        seen: set[tuple[str, str]] = set()
        for ref in (binding.model_ref, *binding.fallback_model_refs):
            for target in self.resolve(ref).targets:
                key = (target.endpoint.name, target.model)
                if key not in seen:
                    seen.add(key)
                    targets.append(target)
        first = self.resolve(binding.model_ref)
        policies = tuple(self._policies[p] for p in binding.policies if p in self._policies)
        return Route(agent, tuple(targets), first.strategy, policies, binding.record_text)

    def resolve(self, model: str | None) -> Route:
        """Resolve a request's ``model`` field.

        In order: an alias; an endpoint name (its default model);
        ``endpoint/model`` (the longest endpoint prefix wins, so namespaced
        endpoints and model names with slashes both work); nothing means the
        ``default`` alias. An unknown name raises :class:`NotFound` naming it.
        """
        name = model or DEFAULT_ALIAS
        route = self._aliases.get(name)
        if route is not None:
            return route
        strategy = self.defaults.strategy
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            if not endpoint.default_model:
                raise NotFound(
                    f"endpoint {name!r} has no default_model; ask for '{name}/<model>'",
                    param="model",
                )
            return Route(name, (self._target(name, endpoint.default_model),), strategy)
        cut = name.rfind("/")
        while cut > 0:
            prefix, rest = name[:cut], name[cut + 1 :]
            if prefix in self._endpoints and rest:
                return Route(name, (self._target(prefix, name[cut + 1 :]),), strategy)
            cut = name.rfind("/", 0, cut)
        if not model:
            raise NotFound("no model given and no 'default' alias is configured", code="alias_not_found", param="model")
        raise NotFound(
            f"unknown model {name!r}: no alias, endpoint or endpoint/model by that name",
            param="model",
        )
