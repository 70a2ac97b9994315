"""AuroraSOC's runtime LLM provider API, on modelbus resources.

AuroraSOC's admin router (``/api/v1/system/llm/...``) manages one active
backend, per-provider keys and a reachability probe. Here a provider is a
``ModelEndpoint`` (the AuroraSOC backends ``ollama``, ``vllm``, ``openai``,
``deepseek``, ``gemini`` and ``anthropic`` are the endpoints of those names that
:func:`services.config.formats.aurora_env_documents` creates), the active
backend is the first target of the alias ``default``, and a provider key is
the stored secret ``llm-providers/<provider>``.

Every change is one revision through :class:`ConfigManager` (so it is
validated, announced, audited and survives a restart), and key values only
ever travel to the secrets service: replies carry ``key_present``,
``key_last4`` and the storage ``source``, never a value.

The pure planning functions (:func:`inventory`, :func:`plan_config`,
:func:`with_auth`, :func:`boot_auth_ref`) hold the rules; :class:`LlmProviders`
adds the bus calls around them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import msgspec
import nats.errors
from msgspec import Struct
from nats.aio.client import Client
from pydantic import ValidationError

from services.config.documents import Parsed
from services.config.formats import AURORA_BACKENDS
from services.config.manager import ConfigManager
from services.config.resources import API_VERSION, Resource, format_errors, resource_from_stored
from shared import headers as H
from shared.admin import ApplyResult, ConfigRecord, StoredResource
from shared.envelopes import SecretDelete, SecretInfo, SecretList, SecretPut, SecretsDescribe
from shared.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    ModelbusError,
    NoRouteAvailable,
    NotFound,
    error_from_wire,
)
from shared.probe import ProbeResult, probe_endpoint
from shared.subjects import SECRETS_DELETE, SECRETS_DESCRIBE, SECRETS_PUT

ENDPOINT = "ModelEndpoint"
ALIAS = "ModelAlias"
ACTIVE_ALIAS = "default"
"""The alias whose first target is AuroraSOC's active backend."""
ORCHESTRATOR_ALIAS = "orchestrator"
PROVIDER_SECRET_PREFIX = "llm-providers/"
"""Provider keys are stored as ``llm-providers/<provider>`` (AuroraSOC's Vault path)."""
SECRETS_TIMEOUT_S = 5.0

T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_info_decoder = msgspec.json.Decoder(SecretInfo)
_list_decoder = msgspec.json.Decoder(SecretList)


# ------------------------------------------------------------------ wire shapes (HTTP)


class LlmConfig(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Body of ``PUT /api/v1/system/llm/config``; empty strings count as absent."""

    provider: str
    """Endpoint to make the active backend."""
    model: str | None = None
    """Model for ``default``; also becomes the endpoint's ``default_model``."""
    orchestrator_model: str | None = None
    """When given, alias ``orchestrator`` points at the endpoint with this model."""
    base_url: str | None = None
    """New base URL of the endpoint (not for Gemini)."""


class ProviderKeyBody(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Body of ``PUT /api/v1/system/llm/providers/{p}/key``. Never logged or echoed."""

    api_key: str

    def __repr__(self) -> str:
        return "ProviderKeyBody(api_key=<redacted>)"


class ProviderView(Struct, kw_only=True, frozen=True):
    """One provider (endpoint) in the inventory."""

    name: str
    provider: str
    """Provider type."""
    model: str | None
    """The endpoint's ``default_model``."""
    base_url: str | None
    key_present: bool
    key_last4: str | None
    source: Literal["env", "store", "vault"] | None
    """Where the key comes from; ``None`` without a key."""
    data_leaves_host: bool
    """Whether requests leave this host (``locality: remote``)."""
    active: bool
    """Whether it is the active backend."""
    auth_ref: str | None
    """The credential reference the endpoint uses (a reference, never a value)."""


class Inventory(Struct, kw_only=True, frozen=True):
    """Reply of ``GET /api/v1/system/llm/providers``."""

    active_backend: str | None
    """Endpoint the alias ``default`` points at first; ``None`` without that alias."""
    providers: list[ProviderView]


class ProviderKey(Struct, kw_only=True, frozen=True):
    """Reply of the key endpoints: presence and provenance of a provider's key, never the value."""

    name: str
    """The provider (endpoint)."""
    key_present: bool
    key_last4: str | None
    source: Literal["env", "store", "vault"] | None
    updated_at: str | None
    auth_ref: str | None
    """The credential reference the endpoint now uses."""
    revision: int
    """Configuration revision after the change."""


# ------------------------------------------------------------------ pure rules


def provider_secret_name(provider: str) -> str:
    """The stored secret that holds a provider's runtime key."""
    return PROVIDER_SECRET_PREFIX + provider


def boot_auth_ref(endpoint: str, env: Mapping[str, str]) -> str | None:
    """The credential reference the environment gives ``endpoint`` at boot, as
    :func:`services.config.formats.aurora_env_documents` does: ``env:LLM_<P>_API_KEY``
    for an AuroraSOC backend whose key variable is set, otherwise none (so a
    keyless local backend stays keyless)."""
    for name, _provider, prefix, _url in AURORA_BACKENDS.values():
        variable = f"{prefix}_API_KEY"
        if name == endpoint and env.get(variable):
            return f"env:{variable}"
    return None


def _by_key(resources: Iterable[StoredResource]) -> dict[tuple[str, str], StoredResource]:
    return {(r.kind, r.name): r for r in resources}


def find_endpoint(resources: Iterable[StoredResource], name: str, *, param: str | None = None) -> StoredResource:
    """The stored endpoint ``name``; 404 naming it otherwise."""
    found = _by_key(resources).get((ENDPOINT, name))
    if found is None:
        raise NotFound(f"no provider (ModelEndpoint) named {name!r}", code="endpoint_not_found", param=param)
    return found


def _auth_ref(spec: Mapping[str, Any]) -> str | None:
    auth = spec.get("auth")
    ref = auth.get("secretRef") if isinstance(auth, Mapping) else None
    return ref if isinstance(ref, str) else None


def inventory(head: ConfigRecord | None, keys: Mapping[str, SecretInfo]) -> Inventory:
    """Every endpoint with its key presence (``keys`` by reference) and locality."""
    if head is None:
        return Inventory(active_backend=None, providers=[])
    default = head.routing.aliases.get(ACTIVE_ALIAS)
    active = default.targets[0].endpoint if default and default.targets else None
    providers = []
    for res in head.resources:
        if res.kind != ENDPOINT:
            continue
        ref = _auth_ref(res.spec)
        info = keys.get(ref) if ref else None
        compiled = head.routing.endpoints.get(res.name)
        providers.append(
            ProviderView(
                name=res.name,
                provider=str(res.spec.get("provider")),
                model=res.spec.get("default_model"),
                base_url=res.spec.get("base_url"),
                key_present=bool(info and info.key_present),
                key_last4=info.key_last4 if info and info.key_present else None,
                source=info.source if info and info.key_present else None,
                data_leaves_host=compiled is None or compiled.locality == "remote",
                active=res.name == active,
                auth_ref=ref,
            )
        )
    providers.sort(key=lambda p: p.name)
    return Inventory(active_backend=active, providers=providers)


def _resource(kind: str, name: str, spec: dict[str, Any], params: Mapping[str, str] | None = None) -> Resource:
    """Validate a spec written by the admin API; errors name the body field when there is one."""
    try:
        return resource_from_stored(kind, name, spec, API_VERSION)
    except ValidationError as exc:
        first = str(exc.errors()[0]["loc"][0]) if exc.errors() and exc.errors()[0]["loc"] else None
        param = (params or {}).get(first or "")
        raise ConfigError(format_errors(f"{kind} {name}", exc, "spec"), param=param) from None


def _blank(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def plan_config(resources: Iterable[StoredResource], update: LlmConfig) -> list[Resource]:
    """The resources that make ``update.provider`` the active backend.

    ``default`` gets the endpoint as its only target (no silent fallback to the
    previous backend, which may be one whose data leaves the host);
    ``orchestrator`` likewise when ``orchestrator_model`` is given; the endpoint
    itself changes only when ``model`` or ``base_url`` is given.
    """
    state = list(resources)
    name = update.provider.strip()
    if not name:
        raise InvalidRequest("provider: must not be empty", param="provider", code="invalid_field")
    endpoint = find_endpoint(state, name, param="provider")
    model, orchestrator, base_url = _blank(update.model), _blank(update.orchestrator_model), _blank(update.base_url)
    spec = dict(endpoint.spec)
    if base_url is not None:
        if spec.get("provider") == "gemini":
            raise InvalidRequest("Gemini takes no base_url", param="base_url", code="invalid_field")
        spec["base_url"] = base_url
    if model is not None:
        spec["default_model"] = model
    planned: list[Resource] = []
    if spec != endpoint.spec:
        planned.append(_resource(ENDPOINT, name, spec, {"base_url": "base_url", "default_model": "model"}))
    active_model = model or spec.get("default_model")
    if not active_model:
        raise InvalidRequest(
            f"no model configured for {name!r}: give model, or set the endpoint's default_model",
            param="model",
            code="invalid_field",
        )
    planned.append(_resource(ALIAS, ACTIVE_ALIAS, {"targets": [{"endpoint": name, "model": active_model}]}))
    if orchestrator is not None:
        planned.append(_resource(ALIAS, ORCHESTRATOR_ALIAS, {"targets": [{"endpoint": name, "model": orchestrator}]}))
    return planned


def with_auth(resources: Iterable[StoredResource], name: str, ref: str | None) -> Resource:
    """Endpoint ``name`` with its credential reference set to ``ref`` (removed for ``None``)."""
    spec = dict(find_endpoint(resources, name).spec)
    if ref is None:
        spec.pop("auth", None)
    else:
        spec["auth"] = {"secretRef": ref}
    return _resource(ENDPOINT, name, spec)


# ------------------------------------------------------------------ the service


class LlmProviders:
    """The AuroraSOC provider operations, for the HTTP admin API.

    Its read-modify-write operations are serialised by one lock, so two HTTP
    requests editing the same endpoint cannot lose each other's change. A CLI
    apply of the same endpoint landing between the read and the commit is not
    covered: :class:`ConfigManager` takes finished resources, not a change to
    re-run on its newest state.
    """

    def __init__(self, manager: ConfigManager, nc: Client, env: Mapping[str, str], *, actor: str) -> None:
        self.manager = manager
        self.nc = nc
        self.env = env
        self.actor = actor
        self._lock = asyncio.Lock()

    def _resources(self) -> list[StoredResource]:
        head = self.manager.head
        return list(head.resources) if head else []

    async def inventory(self) -> Inventory:
        """Every endpoint with key presence from the secrets service."""
        head = self.manager.head
        endpoints = [r for r in (head.resources if head else []) if r.kind == ENDPOINT]
        refs = sorted({ref for r in endpoints if (ref := _auth_ref(r.spec))})
        keys = await self.describe(refs)
        return inventory(head, keys)

    async def _commit_planned(self, plan: Callable[[list[StoredResource]], list[Resource]]) -> ApplyResult:
        """Plan from the current state and commit only if nothing moved in between (else re-plan)."""
        for _ in range(5):
            revision = self.manager.revision
            planned = plan(self._resources())
            try:
                return await self.manager.apply_parsed(
                    Parsed(resources=planned), actor=self.actor, expected_revision=revision
                )
            except Conflict:
                continue
        raise Conflict("the configuration kept changing; try again")

    async def configure(self, update: LlmConfig) -> ApplyResult:
        """Switch the active backend (and optionally its model, orchestrator model and base URL)."""
        async with self._lock:
            return await self._commit_planned(lambda resources: plan_config(resources, update))

    async def set_key(self, provider: str, api_key: str) -> ProviderKey:
        """Store ``api_key`` as ``llm-providers/<provider>`` and point the endpoint at it."""
        key = api_key.strip()  # a pasted key often ends in a newline; keys never contain spaces
        if not key:
            raise InvalidRequest("api_key: must not be empty", param="api_key", code="invalid_field")
        name = provider_secret_name(provider)
        ref = f"secret:{name}"
        async with self._lock:
            endpoint = with_auth(self._resources(), provider, ref)
            parsed = Parsed(resources=[endpoint])
            await self.manager.apply_parsed(parsed, actor=self.actor, dry_run=True)  # valid before any side effect
            # The secret first, then the reference: the endpoint never points at a missing secret.
            info = await self._secrets(SECRETS_PUT, SecretPut(name=name, value=key, actor=self.actor), _info_decoder)
            if self.manager.auditor is not None:
                await self.manager.auditor.append(self.actor, "secret.set", f"secret {name}")
            result = await self._commit_planned(lambda resources: [with_auth(resources, provider, ref)])
        return ProviderKey(
            name=provider,
            key_present=info.key_present,
            key_last4=info.key_last4,
            source=info.source,
            updated_at=info.updated_at,
            auth_ref=ref,
            revision=result.revision,
        )

    async def delete_key(self, provider: str) -> ProviderKey:
        """Delete the stored key and return the endpoint to its boot default reference.

        Only a reference to ``secret:llm-providers/<provider>`` is reverted;
        any other reference is the operator's and stays. Idempotent: with no
        stored key nothing is deleted. The reference moves first, so the
        endpoint never points at a deleted secret.
        """
        name = provider_secret_name(provider)
        ref = boot_auth_ref(provider, self.env)
        async with self._lock:
            current = find_endpoint(self._resources(), provider)
            result = ApplyResult(revision=self.manager.revision, changes=[])
            if _auth_ref(current.spec) == f"secret:{name}":  # another reference is the operator's own
                result = await self._commit_planned(lambda resources: [with_auth(resources, provider, ref)])
            try:
                await self._secrets(SECRETS_DELETE, SecretDelete(name=name, actor=self.actor), _info_decoder)
            except NotFound:
                pass  # nothing stored: already deleted
            else:
                if self.manager.auditor is not None:
                    await self.manager.auditor.append(self.actor, "secret.delete", f"secret {name}")
        now_ref = _auth_ref(find_endpoint(self._resources(), provider).spec)
        info = (await self.describe([now_ref])).get(now_ref) if now_ref else None
        present = bool(info and info.key_present)
        return ProviderKey(
            name=provider,
            key_present=present,
            key_last4=info.key_last4 if info and present else None,
            source=info.source if info and present else None,
            updated_at=info.updated_at if info and present else None,
            auth_ref=now_ref,
            revision=result.revision,
        )

    async def probe(self, provider: str, timeout_ms: int) -> ProbeResult:
        """One-token reachability probe of an existing endpoint."""
        find_endpoint(self._resources(), provider)
        return await probe_endpoint(self.nc, provider, timeout_ms=timeout_ms)

    async def describe(self, refs: list[str]) -> dict[str, SecretInfo]:
        """Key presence of credential references, by reference (no values)."""
        if not refs:
            return {}
        reply = await self._secrets(SECRETS_DESCRIBE, SecretsDescribe(refs=refs), _list_decoder)
        return {info.name: info for info in reply.items}

    async def _secrets(self, subject: str, request: Struct, decoder: msgspec.json.Decoder[T]) -> T:
        """One request to the secrets service; its error replies keep their status."""
        try:
            msg = await self.nc.request(subject, _encoder.encode(request), timeout=SECRETS_TIMEOUT_S)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise NoRouteAvailable(
                "the secrets service did not answer; is modelbus-secrets running?", code="secrets_unavailable"
            ) from None
        status = int((msg.headers or {}).get(H.STATUS, "0") or 0)
        if status != 200:
            err: ModelbusError = error_from_wire(status, msg.data)
            raise err
        try:
            return decoder.decode(msg.data)
        except msgspec.MsgspecError:
            raise ModelbusError("the secrets service sent an unreadable reply") from None
