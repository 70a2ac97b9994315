"""Compile validated resources into one :class:`shared.routing.RoutingConfig`.

Compilation resolves every reference (alias → endpoint, agent → endpoint or
alias, policy → agent, default provider → endpoint) and fails with one message
listing every problem, each naming the resource, the field path and the reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from decimal import Decimal
from typing import Literal
from urllib.parse import urlsplit

from services.config.resources import (
    AgentSpec,
    AliasSpec,
    BudgetSpec,
    DefaultsSpec,
    EndpointSpec,
    PolicySpec,
    PriceSpec,
    RateLimitSpec,
    Resource,
)
from shared.errors import ConfigError
from shared.pricing import default_prices, price_from_rates
from shared.routing import (
    LOCAL_PROVIDER_TYPES,
    Agent,
    Alias,
    Budget,
    Endpoint,
    Policy,
    Price,
    RateLimit,
    RoutingConfig,
    RoutingDefaults,
    Target,
)


def derive_locality(provider: str, base_url: str | None) -> Literal["local", "remote"]:
    """Local when data stays on the host: mock/ollama, or a loopback/private URL."""
    if provider in LOCAL_PROVIDER_TYPES:
        return "local"
    host = urlsplit(base_url).hostname if base_url else None
    if host is None:
        return "remote"
    if host == "localhost" or host.endswith(".localhost"):
        return "local"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "remote"
    return "local" if (ip.is_loopback or ip.is_private or ip.is_link_local) else "remote"


def _namespace(name: str) -> str | None:
    return name.rsplit("/", 1)[0] if "/" in name else None


class _Refs:
    """Reference lookup with Orloj's rule: the referrer's namespace first, then global."""

    def __init__(self, endpoints: dict[str, Endpoint], aliases: set[str]) -> None:
        self.endpoints = endpoints
        self.aliases = aliases

    def _candidates(self, ref: str, namespace: str | None) -> list[str]:
        return [f"{namespace}/{ref}", ref] if namespace and not ref.startswith(f"{namespace}/") else [ref]

    def model_ref(self, ref: str, namespace: str | None) -> str | None:
        """The canonical form of a model reference, or ``None`` if nothing matches."""
        for candidate in self._candidates(ref, namespace):
            if candidate in self.aliases:
                return candidate
            endpoint = self.endpoints.get(candidate)
            if endpoint is not None and endpoint.default_model:
                return candidate
            cut = candidate.rfind("/")
            while cut > 0:
                if candidate[:cut] in self.endpoints and candidate[cut + 1 :]:
                    return candidate
                cut = candidate.rfind("/", 0, cut)
        return None

    def endpoint(self, ref: str, namespace: str | None) -> str | None:
        for candidate in self._candidates(ref, namespace):
            if candidate in self.endpoints:
                return candidate
        return None


def _endpoint(name: str, spec: EndpointSpec) -> Endpoint:
    allow_private = spec.allow_private
    if allow_private is None:
        allow_private = spec.provider in LOCAL_PROVIDER_TYPES
    return Endpoint(
        name=name,
        provider=spec.provider,
        base_url=spec.base_url,
        default_model=spec.default_model,
        auth_ref=spec.auth.secret_ref if spec.auth else None,
        options=dict(spec.options),
        allow_private=allow_private,
        timeout_ms=spec.timeout_ms,
        locality=spec.locality or derive_locality(spec.provider, spec.base_url),
        rpm=spec.rpm,
        tpm=spec.tpm,
    )


def compile_config(resources: Iterable[Resource], *, revision: int = 0) -> RoutingConfig:
    """Resolve references and build the routing snapshot; raises :class:`ConfigError`."""
    by_kind: dict[str, dict[str, Resource]] = {}
    errors: list[str] = []
    for res in resources:
        bucket = by_kind.setdefault(res.kind, {})
        if res.name in bucket:
            errors.append(f"{res.kind} {res.name}: defined twice")
        bucket[res.name] = res
    endpoints = {name: _endpoint(name, r.spec) for name, r in by_kind.get("ModelEndpoint", {}).items()}
    alias_res = by_kind.get("ModelAlias", {})
    refs = _Refs(endpoints, set(alias_res))

    aliases: dict[str, Alias] = {}
    for name, res in alias_res.items():
        spec: AliasSpec = res.spec
        targets: list[Target] = []
        for i, t in enumerate(spec.targets):
            endpoint_name = refs.endpoint(t.endpoint, _namespace(name))
            if endpoint_name is None:
                errors.append(f"ModelAlias {name}: spec.targets[{i}].endpoint: no endpoint named {t.endpoint!r}")
                continue
            model = t.model or endpoints[endpoint_name].default_model
            if not model:
                errors.append(
                    f"ModelAlias {name}: spec.targets[{i}].model: required, "
                    f"endpoint {t.endpoint!r} has no default_model"
                )
                continue
            targets.append(
                Target(
                    endpoint=endpoint_name,
                    model=model,
                    weight=t.weight,
                    capabilities=list(t.capabilities),
                    context_window=t.context_window,
                    max_output_tokens=t.max_output_tokens,
                )
            )
        aliases[name] = Alias(name=name, targets=targets, strategy=spec.strategy)

    defaults = RoutingDefaults()
    for name, res in by_kind.get("RoutingDefaults", {}).items():
        if len(by_kind["RoutingDefaults"]) > 1:
            errors.append(f"RoutingDefaults {name}: only one RoutingDefaults may exist")
            break
        d: DefaultsSpec = res.spec
        defaults = RoutingDefaults(**d.model_dump())
        if d.default_provider and d.default_provider not in endpoints:
            errors.append(f"RoutingDefaults {name}: spec.default_provider: no endpoint named {d.default_provider!r}")

    policies: dict[str, Policy] = {}
    policy_targets: dict[str, list[str] | None] = {}
    for name, res in by_kind.get("AgentPolicy", {}).items():
        p: PolicySpec = res.spec
        policies[name] = Policy(
            name=name,
            allowed_models=p.allowed_models,
            max_tokens_per_run=p.max_tokens_per_run,
            blocked_tools=list(p.blocked_tools),
        )
        policy_targets[name] = p.agents if p.apply_mode == "scoped" else ["*"]

    agent_res = by_kind.get("Agent", {})
    agents: dict[str, Agent] = {}
    for name, res in agent_res.items():
        a: AgentSpec = res.spec
        namespace = _namespace(name)
        resolved: list[str] = []
        for path, ref in [("spec.model_ref", a.model_ref)] + [
            (f"spec.fallback_model_refs[{i}]", r) for i, r in enumerate(a.fallback_model_refs)
        ]:
            canonical = refs.model_ref(ref, namespace)
            if canonical is None:
                errors.append(f"Agent {name}: {path}: no endpoint or alias named {ref!r}")
            else:
                resolved.append(canonical)
        applying = [pname for pname, targets in policy_targets.items() if _policy_applies(pname, targets, name)]
        if len(resolved) == 1 + len(a.fallback_model_refs):
            agents[name] = Agent(
                name=name,
                model_ref=resolved[0],
                fallback_model_refs=resolved[1:],
                policies=sorted(applying),
                record_text=a.record_text,
            )
    for pname, agent_refs in policy_targets.items():
        for i, agent_ref in enumerate(t for t in (agent_refs or []) if t != "*"):
            ns = _namespace(pname)
            if not any(c in agent_res for c in ([f"{ns}/{agent_ref}", agent_ref] if ns else [agent_ref])):
                errors.append(f"AgentPolicy {pname}: spec.agents[{i}]: no agent named {agent_ref!r}")
    prices = _prices(by_kind.get("ModelPrice", {}), refs, errors)
    if defaults.default_prices:
        prices.extend(default_prices())
    rate_limits = _rate_limits(by_kind.get("RateLimit", {}), errors)
    budgets = _budgets(by_kind.get("Budget", {}), policies, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return RoutingConfig(
        revision=revision,
        endpoints=endpoints,
        aliases=aliases,
        defaults=defaults,
        agents=agents,
        policies=policies,
        prices=prices,
        rate_limits=rate_limits,
        budgets=budgets,
    )


POLICY_BUDGET_SUFFIX = ":max_tokens_per_run"
"""An AgentPolicy's ``max_tokens_per_run`` is the Budget ``<policy>:max_tokens_per_run``."""


def _budgets(resources: dict[str, Resource], policies: dict[str, Policy], errors: list[str]) -> list[Budget]:
    """Budgets by name, then one per AgentPolicy ``max_tokens_per_run`` (scope and period ``run``,
    only for requests under that policy, reserving the prompt estimate and ``max_tokens`` only, as
    the policy always did)."""
    budgets: list[Budget] = []
    for name, res in sorted(resources.items()):
        spec: BudgetSpec = res.spec
        if spec.scope == "namespace" and spec.match is not None and "/" in spec.match:
            errors.append(f"Budget {name}: spec.match: a namespace has no '/' ({spec.match!r} could never match)")
            continue
        budgets.append(
            Budget(
                name=name,
                scope=spec.scope,
                period=spec.period,
                match=spec.match,
                max_tokens=spec.max_tokens,
                max_cost=spec.max_cost,
                estimate_tokens=spec.estimate_tokens,
                unknown_price=spec.unknown_price,
            )
        )
    for pname, policy in sorted(policies.items()):
        if policy.max_tokens_per_run is not None:
            budgets.append(
                Budget(
                    name=pname + POLICY_BUDGET_SUFFIX,
                    scope="run",
                    period="run",
                    max_tokens=policy.max_tokens_per_run,
                    policy=pname,
                )
            )
    return budgets


def _rate_limits(resources: dict[str, Resource], errors: list[str]) -> list[RateLimit]:
    """RateLimits by name; a namespace has no ``/`` in it, so a ``match`` with one could never apply."""
    limits: list[RateLimit] = []
    for name, res in sorted(resources.items()):
        spec: RateLimitSpec = res.spec
        if spec.scope == "namespace" and spec.match is not None and "/" in spec.match:
            errors.append(f"RateLimit {name}: spec.match: a namespace has no '/' ({spec.match!r} could never match)")
            continue
        limits.append(RateLimit(name=name, scope=spec.scope, match=spec.match, rpm=spec.rpm, tpm=spec.tpm))
    return limits


def _prices(resources: dict[str, Resource], refs: _Refs, errors: list[str]) -> list[Price]:
    """ModelPrices as compiled prices; two for the same target are an error (no silent winner)."""
    prices: list[Price] = []
    targets: dict[tuple[str, str, str], str] = {}
    for name, res in sorted(resources.items()):
        spec: PriceSpec = res.spec
        target: dict[str, str | None]
        if spec.endpoint is not None:
            endpoint = refs.endpoint(spec.endpoint, _namespace(name))
            if endpoint is None:
                errors.append(f"ModelPrice {name}: spec.endpoint: no endpoint named {spec.endpoint!r}")
                continue
            key = ("endpoint", endpoint, spec.model or "")
            target = {"endpoint": endpoint, "model": spec.model}
            what = f"endpoint {endpoint!r} and model {spec.model!r}"
        else:
            key = ("pattern", spec.model_pattern or "", spec.provider or "")
            target = {"model_pattern": spec.model_pattern, "provider": spec.provider}
            what = f"model_pattern {spec.model_pattern!r}" + (
                f" for provider {spec.provider!r}" if spec.provider else ""
            )
        if key in targets:
            errors.append(f"ModelPrice {name}: prices {what} like ModelPrice {targets[key]}; keep one")
            continue
        targets[key] = name
        prices.append(
            price_from_rates(
                name=name,
                input=spec.input,
                output=spec.output,
                cache_read=spec.cache_read,
                cache_write=spec.cache_write,
                reasoning=spec.reasoning,
                per_request=spec.per_request if spec.per_request is not None else Decimal(0),
                currency=spec.currency,
                **target,
            )
        )
    return prices


def _policy_applies(policy: str, targets: list[str] | None, agent: str) -> bool:
    if targets == ["*"]:  # apply_mode: global
        return True
    namespace = _namespace(policy)
    if targets is None:
        return namespace is None or _namespace(agent) == namespace
    for ref in targets:
        if agent == ref or (namespace and agent == f"{namespace}/{ref}"):
            return True
    return False
