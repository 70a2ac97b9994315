"""Native ``modelbus.dev/v1`` documents: parsing, validation and compilation.

Documents are read from multi-document YAML or JSON. Each one is validated with
pydantic (unknown fields are errors) and every error names the document, the
field path and the reason::

    doc 2 (ModelEndpoint openai-default): spec.base_url: not a URL

Compilation resolves references (alias → endpoint, default models) and yields
one immutable :class:`shared.routing.RoutingConfig`. This is the admin path,
not the hot path, so pydantic's thorough messages are worth their cost here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import ConfigError
from shared.routing import (
    LOCAL_PROVIDER_TYPES,
    PROVIDER_TYPES,
    Alias,
    Endpoint,
    RoutingConfig,
    RoutingDefaults,
    Strategy,
    Target,
)

API_VERSION = "modelbus.dev/v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Metadata(_Strict):
    """Resource identity."""

    name: str = Field(min_length=1)
    """Resource name."""
    namespace: str | None = None
    """Optional namespace; the full name is then ``namespace/name``."""


class AuthSpec(_Strict):
    """How an endpoint authenticates; a reference only, never a value."""

    secret_ref: str = Field(alias="secretRef", min_length=1)
    """``env:VAR`` or ``secret:path``."""


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


_SPECS: dict[str, type[_Strict]] = {
    "ModelEndpoint": EndpointSpec,
    "ModelAlias": AliasSpec,
    "RoutingDefaults": DefaultsSpec,
}


class _Document(_Strict):
    api_version: Literal["modelbus.dev/v1"] = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    spec: dict[str, Any]


class Resource(BaseModel):
    """A validated document: kind, full name and typed spec."""

    model_config = ConfigDict(frozen=True)

    kind: str
    name: str
    spec: Any


def load_documents(text: str, *, source: str = "<input>") -> list[dict[str, Any]]:
    """Split multi-document YAML (JSON is YAML too) into raw documents."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from exc
    out: list[dict[str, Any]] = []
    for index, doc in enumerate(docs, start=1):
        if isinstance(doc, list):  # a JSON array of documents
            out.extend(doc)
        elif isinstance(doc, dict):
            out.append(doc)
        else:
            raise ConfigError(f"doc {index}: expected a mapping, got {type(doc).__name__}")
    return out


def _describe(index: int, doc: Mapping[str, Any]) -> str:
    kind = doc.get("kind", "?")
    meta = doc.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
    return f"doc {index} ({kind} {name})"


def _format_errors(where: str, exc: ValidationError, prefix: str = "") -> str:
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


def parse_resources(docs: Iterable[Mapping[str, Any]]) -> list[Resource]:
    """Validate raw documents into resources; all errors are reported together."""
    resources: list[Resource] = []
    errors: list[str] = []
    for index, raw in enumerate(docs, start=1):
        where = _describe(index, raw) if isinstance(raw, Mapping) else f"doc {index}"
        if not isinstance(raw, Mapping):
            errors.append(f"{where}: expected a mapping")
            continue
        try:
            doc = _Document.model_validate(raw)
        except ValidationError as exc:
            errors.append(_format_errors(where, exc))
            continue
        spec_type = _SPECS.get(doc.kind)
        if spec_type is None:
            errors.append(f"{where}: kind: unknown kind {doc.kind!r}; expected one of {', '.join(_SPECS)}")
            continue
        try:
            spec = spec_type.model_validate(doc.spec)
        except ValidationError as exc:
            errors.append(_format_errors(where, exc, "spec"))
            continue
        name = doc.metadata.name
        if doc.metadata.namespace:
            name = f"{doc.metadata.namespace}/{name}"
        resources.append(Resource(kind=doc.kind, name=name, spec=spec))
    if errors:
        raise ConfigError("; ".join(errors))
    return resources


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


def compile_config(resources: Iterable[Resource], *, revision: int = 0) -> RoutingConfig:
    """Resolve references and build the routing snapshot; raises :class:`ConfigError`."""
    endpoints: dict[str, Endpoint] = {}
    alias_specs: dict[str, AliasSpec] = {}
    defaults = RoutingDefaults()
    errors: list[str] = []
    for res in resources:
        key = f"{res.kind} {res.name}"
        if res.kind == "ModelEndpoint":
            spec: EndpointSpec = res.spec
            if res.name in endpoints:
                errors.append(f"{key}: defined twice")
            allow_private = spec.allow_private
            if allow_private is None:
                allow_private = spec.provider in LOCAL_PROVIDER_TYPES
            endpoints[res.name] = Endpoint(
                name=res.name,
                provider=spec.provider,
                base_url=spec.base_url,
                default_model=spec.default_model,
                auth_ref=spec.auth.secret_ref if spec.auth else None,
                options=dict(spec.options),
                allow_private=allow_private,
                timeout_ms=spec.timeout_ms,
                locality=spec.locality or derive_locality(spec.provider, spec.base_url),
            )
        elif res.kind == "ModelAlias":
            if res.name in alias_specs:
                errors.append(f"{key}: defined twice")
            alias_specs[res.name] = res.spec
        elif res.kind == "RoutingDefaults":
            d: DefaultsSpec = res.spec
            defaults = RoutingDefaults(**d.model_dump())
    aliases: dict[str, Alias] = {}
    for name, alias_spec in alias_specs.items():
        targets: list[Target] = []
        for i, t in enumerate(alias_spec.targets):
            endpoint = endpoints.get(t.endpoint)
            if endpoint is None:
                errors.append(f"ModelAlias {name}: spec.targets[{i}].endpoint: no endpoint named {t.endpoint!r}")
                continue
            model = t.model or endpoint.default_model
            if not model:
                errors.append(
                    f"ModelAlias {name}: spec.targets[{i}].model: required, "
                    f"endpoint {t.endpoint!r} has no default_model"
                )
                continue
            targets.append(Target(endpoint=t.endpoint, model=model, weight=t.weight))
        aliases[name] = Alias(name=name, targets=targets, strategy=alias_spec.strategy)
    if defaults.default_provider and defaults.default_provider not in endpoints:
        errors.append(f"RoutingDefaults: spec.default_provider: no endpoint named {defaults.default_provider!r}")
    if errors:
        raise ConfigError("; ".join(errors))
    return RoutingConfig(revision=revision, endpoints=endpoints, aliases=aliases, defaults=defaults)


def compile_text(text: str, *, source: str = "<input>", revision: int = 0) -> RoutingConfig:
    """Parse, validate and compile a configuration file's text."""
    return compile_config(parse_resources(load_documents(text, source=source)), revision=revision)
