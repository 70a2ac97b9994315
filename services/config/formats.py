"""Foreign configuration formats, read as-is and converted to native documents.

* **Orloj** (``apiVersion: orloj.dev/v1``): ModelEndpoint, Agent, AgentPolicy,
  Secret. Orloj fields that are not routing configuration (an agent's
  ``prompt``, ``tools``, ...) are accepted, dropped, and reported; anything
  else is an error.
* **Aegis node config** (``apiVersion: 100monkeys.ai/v1``, or any document
  whose ``spec`` has ``llm_providers`` / ``llm_selection``): each provider
  becomes an endpoint, each ``models[]`` entry an alias target, and
  ``llm_selection`` the routing defaults. Other ``spec`` sections belong to the
  Aegis daemon and are reported as ignored.
* **Aegis ``aegis.config.json``** with ``defaultSessionEnv``: the BYO contract,
  converted by :func:`byo_documents`.
* **Environment** at boot: AuroraSOC ``LLM_*`` (:func:`aurora_env_documents`)
  and the Aegis BYO variables (:func:`byo_documents`).

Secret values found in documents (an Aegis literal ``api_key``, a BYO token in
``defaultSessionEnv``) become native ``Secret`` documents, which the config
service hands to the secrets service and never stores.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from services.config.resources import API_VERSION, describe

ORLOJ = "orloj.dev/v1"
AEGIS = "100monkeys.ai/v1"

ORLOJ_KINDS = ("ModelEndpoint", "Agent", "AgentPolicy", "Secret")
ORLOJ_AGENT_NOT_ROUTING = ("prompt", "tools", "allowed_tools", "roles", "memory", "execution")
"""Orloj Agent fields modelbus accepts but does not use (they drive Orloj's own runtime)."""
BYO_KEYS = (
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_DEFAULT_MODEL",
    "ANTHROPIC_DEFAULT_FAST_MODEL",
    "API_TIMEOUT_MS",
)
"""The allowlisted keys of the Aegis BYO contract."""


@dataclass
class Converted:
    """Native documents produced from one input document, and what was set aside."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    source: str = API_VERSION
    notes: list[str] = field(default_factory=list)
    """Human-readable remarks: fields accepted but not used, sections ignored."""


def _native(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def detect(raw: Mapping[str, Any]) -> str:
    """The format of one document: ``modelbus``, ``orloj``, ``aegis``, ``aegis-json`` or ``unknown``."""
    api = raw.get("apiVersion")
    if api == API_VERSION:
        return "modelbus"
    if api == ORLOJ:
        return "orloj"
    spec = raw.get("spec")
    if (isinstance(api, str) and api.startswith("100monkeys.ai/")) or (
        api is None and isinstance(spec, Mapping) and ("llm_providers" in spec or "llm_selection" in spec)
    ):
        return "aegis"
    if api is None and "defaultSessionEnv" in raw:
        return "aegis-json"
    return "unknown"


def convert(index: int, raw: Mapping[str, Any]) -> Converted:
    """Convert one input document to native documents; raises ``ValueError`` naming the problem."""
    fmt = detect(raw)
    if fmt == "modelbus":
        return Converted([dict(raw)])
    if fmt == "orloj":
        return _orloj(index, raw)
    if fmt == "aegis":
        return _aegis(index, raw)
    if fmt == "aegis-json":
        env = raw["defaultSessionEnv"]
        if not isinstance(env, Mapping):
            raise ValueError(f"doc {index} (aegis.config.json): defaultSessionEnv: expected an object")
        out = byo_documents(env, where=f"doc {index} (aegis.config.json): defaultSessionEnv", literal_token=True)
        ignored = sorted(k for k in raw if k != "defaultSessionEnv")
        if ignored:
            out.notes.append(f"doc {index}: ignored Aegis server settings {', '.join(ignored)} (not routing)")
        return out
    api = raw.get("apiVersion")
    raise ValueError(
        f"{describe(index, raw)}: apiVersion: unknown format {api!r}; expected {API_VERSION}, {ORLOJ}, {AEGIS} "
        "(or an Aegis node config with spec.llm_providers, or aegis.config.json with defaultSessionEnv)"
    )


# ---------------------------------------------------------------- Orloj


def _orloj(index: int, raw: Mapping[str, Any]) -> Converted:
    kind = raw.get("kind")
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), Mapping) else {}
    name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
    where = f"doc {index} ({kind} {name})"
    if kind not in ORLOJ_KINDS:
        raise ValueError(
            f"{where}: kind: {kind!r} ({ORLOJ}) is not routing configuration; modelbus reads {', '.join(ORLOJ_KINDS)}"
        )
    extra_top = sorted(set(raw) - {"apiVersion", "kind", "metadata", "spec", "status"})
    if extra_top:
        raise ValueError(f"{where}: {extra_top[0]}: unknown field")
    spec = dict(raw.get("spec") or {})
    out = Converted(source=ORLOJ)
    if kind == "Agent":
        dropped = [k for k in ORLOJ_AGENT_NOT_ROUTING if k in spec]
        for key in dropped:
            del spec[key]
        if dropped:
            out.notes.append(f"{where}: accepted Orloj agent fields {', '.join(dropped)} (not used for routing)")
    if kind == "ModelEndpoint" and isinstance(spec.get("provider"), str):
        spec["provider"] = spec["provider"].strip().lower()
    if kind == "ModelEndpoint" and "provider" not in spec:
        spec["provider"] = "openai"  # Orloj's default
    doc = {"apiVersion": API_VERSION, "kind": kind, "metadata": dict(meta or {}), "spec": spec}
    out.documents.append(doc)
    return out


# ---------------------------------------------------------------- Aegis node config

_AEGIS_PROVIDER_FIELDS = {"name", "type", "endpoint", "base_url", "api_key", "api_version", "models"}
_AEGIS_MODEL_FIELDS = {"alias", "model", "capabilities", "context_window", "max_output_tokens"}
_AEGIS_SELECTION_FIELDS = {"strategy", "default_provider", "max_retries", "retry_delay_ms"}


def _aegis(index: int, raw: Mapping[str, Any]) -> Converted:
    where = f"doc {index} (Aegis node config)"
    spec = raw.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: spec: expected a mapping")
    out = Converted(source="aegis")
    ignored = sorted(k for k in spec if k not in ("llm_providers", "llm_selection"))
    if ignored:
        out.notes.append(f"{where}: ignored Aegis daemon settings spec.{', spec.'.join(ignored)} (not routing)")
    targets: dict[str, list[dict[str, Any]]] = {}
    providers = spec.get("llm_providers") or []
    if not isinstance(providers, list):
        raise ValueError(f"{where}: spec.llm_providers: expected a list")
    for i, p in enumerate(providers):
        path = f"spec.llm_providers[{i}]"
        if not isinstance(p, Mapping):
            raise ValueError(f"{where}: {path}: expected a mapping")
        unknown = sorted(set(p) - _AEGIS_PROVIDER_FIELDS)
        if unknown:
            raise ValueError(f"{where}: {path}.{unknown[0]}: unknown field")
        name, kind = p.get("name"), p.get("type")
        if not name or not isinstance(name, str):
            raise ValueError(f"{where}: {path}.name: required")
        if kind not in ("openai", "anthropic", "ollama"):
            raise ValueError(f"{where}: {path}.type: expected openai, anthropic or ollama, got {kind!r}")
        base_url = p.get("base_url") or p.get("endpoint")
        provider = _aegis_provider(kind, base_url, p.get("api_version"))
        endpoint: dict[str, Any] = {"provider": provider}
        if base_url:
            endpoint["base_url"] = base_url
            if self_hosted(base_url):
                endpoint["allowPrivate"] = True
        if p.get("api_version"):
            endpoint["options"] = {"api_version": str(p["api_version"])}
        api_key = p.get("api_key")
        if api_key:
            if not isinstance(api_key, str):
                raise ValueError(f"{where}: {path}.api_key: expected a string")
            if api_key.startswith(("env:", "secret:")):
                endpoint["auth"] = {"secretRef": api_key}
            else:  # a literal key: keep it out of config, in the secrets store
                secret = f"aegis/{name}"
                out.documents.append(_native("Secret", secret, {"stringData": {"value": api_key}}))
                endpoint["auth"] = {"secretRef": f"secret:{secret}"}
                out.notes.append(f"{where}: {path}.api_key: literal key moved to secret {secret!r}")
        models = p.get("models") or []
        if not isinstance(models, list):
            raise ValueError(f"{where}: {path}.models: expected a list")
        for j, m in enumerate(models):
            mpath = f"{path}.models[{j}]"
            if not isinstance(m, Mapping):
                raise ValueError(f"{where}: {mpath}: expected a mapping")
            unknown = sorted(set(m) - _AEGIS_MODEL_FIELDS)
            if unknown:
                raise ValueError(f"{where}: {mpath}.{unknown[0]}: unknown field")
            if not m.get("alias") or not m.get("model"):
                raise ValueError(f"{where}: {mpath}: alias and model are required")
            if j == 0:
                endpoint["default_model"] = m["model"]
            target = {"endpoint": name, "model": m["model"]}
            for key in ("capabilities", "context_window", "max_output_tokens"):
                if m.get(key) is not None:
                    target[key] = m[key]
            targets.setdefault(str(m["alias"]), []).append(target)
        out.documents.append(_native("ModelEndpoint", name, endpoint))
    for alias, alias_targets in targets.items():
        out.documents.append(_native("ModelAlias", alias, {"targets": alias_targets}))
    selection = spec.get("llm_selection")
    if selection is not None:
        if not isinstance(selection, Mapping):
            raise ValueError(f"{where}: spec.llm_selection: expected a mapping")
        unknown = sorted(set(selection) - _AEGIS_SELECTION_FIELDS)
        if unknown:
            raise ValueError(f"{where}: spec.llm_selection.{unknown[0]}: unknown field")
        out.documents.append(_native("RoutingDefaults", "aegis-llm-selection", dict(selection)))
    return out


def self_hosted(base_url: str | None) -> bool:
    """Whether a URL names a host on the operator's own network: a loopback or private IP
    literal, ``localhost``, or a single-label service name (``http://ollama:11434``).

    Aegis and AuroraSOC have no ``allowPrivate`` field and their documented setups
    point at such hosts, so endpoints read from them get ``allowPrivate`` for these
    URLs. A public hostname that resolves inward is still refused by the SSRF guard.
    """
    host = urlsplit(base_url).hostname if base_url else None
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost") or ("." not in host and ":" not in host):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def _aegis_provider(kind: str, base_url: str | None, api_version: object) -> str:
    if kind != "openai":
        return kind
    if api_version:
        return "azure-openai"
    host = urlsplit(base_url).hostname if base_url else None
    return "openai" if host in (None, "api.openai.com") else "openai-compatible"


# ---------------------------------------------------------------- BYO contract


def byo_documents(env: Mapping[str, Any], *, where: str = "environment", literal_token: bool = False) -> Converted:
    """The Aegis BYO contract as an ``openai-compatible`` endpoint ``byo`` with aliases
    ``default`` and ``fast``.

    From the environment (``literal_token=False``) the token stays there and is
    referenced as ``env:ANTHROPIC_AUTH_TOKEN``; from a ``defaultSessionEnv``
    object (``literal_token=True``) it goes to the secrets service as
    ``byo/default-session``. Keys outside the allowlist are rejected.
    """
    out = Converted(source="aegis-byo")
    if literal_token:
        unknown = sorted(k for k in env if k not in BYO_KEYS)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: not allowed; the BYO contract accepts only {', '.join(BYO_KEYS)}")
    base_url = env.get("ANTHROPIC_BASE_URL")
    if not base_url:
        if literal_token:
            raise ValueError(f"{where}.ANTHROPIC_BASE_URL: required")
        return out
    model = env.get("ANTHROPIC_DEFAULT_MODEL")
    if not model:
        raise ValueError(f"{where}.ANTHROPIC_DEFAULT_MODEL: required with ANTHROPIC_BASE_URL")
    spec: dict[str, Any] = {"provider": "openai-compatible", "base_url": base_url, "default_model": model}
    timeout = env.get("API_TIMEOUT_MS")
    if timeout:
        try:
            spec["timeout_ms"] = int(timeout)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.API_TIMEOUT_MS: not a whole number of milliseconds: {timeout!r}") from None
    token = env.get("ANTHROPIC_AUTH_TOKEN")
    if token:
        if literal_token:
            out.documents.append(_native("Secret", "byo/default-session", {"stringData": {"value": str(token)}}))
            spec["auth"] = {"secretRef": "secret:byo/default-session"}
        else:
            spec["auth"] = {"secretRef": "env:ANTHROPIC_AUTH_TOKEN"}
    if self_hosted(str(base_url)):
        spec["allowPrivate"] = True
    out.documents.append(_native("ModelEndpoint", "byo", spec))
    fast = env.get("ANTHROPIC_DEFAULT_FAST_MODEL") or model
    out.documents.append(_native("ModelAlias", "default", {"targets": [{"endpoint": "byo", "model": model}]}))
    out.documents.append(_native("ModelAlias", "fast", {"targets": [{"endpoint": "byo", "model": fast}]}))
    return out


# ---------------------------------------------------------------- AuroraSOC env

# backend: (endpoint name, provider type, env prefix, default base URL)
AURORA_BACKENDS: dict[str, tuple[str, str, str, str | None]] = {
    "ollama": ("ollama", "ollama", "LLM_OLLAMA", "http://127.0.0.1:11434"),
    "vllm": ("vllm", "openai-compatible", "LLM_VLLM", "http://127.0.0.1:8000/v1"),
    "openai": ("openai", "openai-compatible", "LLM_OPENAI_COMPATIBLE", "https://api.openai.com/v1"),
    "deepseek": ("deepseek", "openai-compatible", "LLM_DEEPSEEK", "https://api.deepseek.com"),
    "gemini": ("gemini", "gemini", "LLM_GEMINI", None),
    "anthropic": ("anthropic", "anthropic", "LLM_ANTHROPIC", None),
}


def aurora_env_documents(env: Mapping[str, str]) -> Converted:
    """AuroraSOC ``LLM_*`` settings as endpoints plus aliases ``default`` and ``orchestrator``.

    Every backend with a ``_MODEL``, ``_BASE_URL`` or ``_API_KEY`` set becomes
    an endpoint; ``LLM_BACKEND`` picks the one the aliases point at. Keys are
    referenced (``env:LLM_<P>_API_KEY``), never copied. Gemini never gets a base
    URL (it takes none).
    """
    out = Converted(source="env:aurorasoc")
    backend = (env.get("LLM_BACKEND") or "").strip().lower()
    if backend and backend != "auto" and backend not in AURORA_BACKENDS:
        raise ValueError(f"LLM_BACKEND: unknown backend {backend!r}; expected {', '.join(AURORA_BACKENDS)} or auto")
    for key, (name, provider, prefix, default_url) in AURORA_BACKENDS.items():
        model = env.get(f"{prefix}_MODEL")
        base_url = env.get(f"{prefix}_BASE_URL")
        api_key_var = f"{prefix}_API_KEY"
        if not (model or base_url or env.get(api_key_var) or key == backend):
            continue
        if not model:
            if key == backend:
                raise ValueError(f"{prefix}_MODEL: required for LLM_BACKEND={backend}")
            continue
        spec: dict[str, Any] = {"provider": provider, "default_model": model}
        if provider != "gemini":
            url = base_url or default_url
            if url:
                spec["base_url"] = url
        if env.get(api_key_var):
            spec["auth"] = {"secretRef": f"env:{api_key_var}"}
        if key in ("ollama", "vllm") or self_hosted(spec.get("base_url")):
            spec["allowPrivate"] = True
        out.documents.append(_native("ModelEndpoint", name, spec))
        if key == backend:
            out.documents.append(_native("ModelAlias", "default", {"targets": [{"endpoint": name}]}))
            orchestrator = env.get(f"{prefix}_ORCHESTRATOR_MODEL")
            if orchestrator:
                out.documents.append(
                    _native("ModelAlias", "orchestrator", {"targets": [{"endpoint": name, "model": orchestrator}]})
                )
    return out
