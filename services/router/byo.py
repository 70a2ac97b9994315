"""Bring-your-own endpoint per request: the ``Modelbus-Env`` header.

A request may carry ``Modelbus-Env: {"ANTHROPIC_BASE_URL": ..., ...}``, the
Aegis BYO contract (the same five keys :func:`services.config.formats.byo_documents`
reads from a config). It routes that one request to an ephemeral
``openai-compatible`` endpoint instead of the routing table:

==================================  ==============================================
key                                 meaning
==================================  ==============================================
``ANTHROPIC_BASE_URL``              required; ``http(s)://`` OpenAI-compatible base
``ANTHROPIC_AUTH_TOKEN``            optional bearer token, sent for this call only
``ANTHROPIC_DEFAULT_MODEL``         required; upstream model for ``default``
``ANTHROPIC_DEFAULT_FAST_MODEL``    optional; upstream model for ``fast``
``API_TIMEOUT_MS``                  optional upstream timeout (string or integer)
==================================  ==============================================

Any other key is rejected with a 400 naming it; provider-native secret names
(``OPENAI_API_KEY``, ``AZURE_*``, ``AWS_*``, ...) are called out as denied, as
Aegis denies them at session creation. Errors name keys, never values, so the
token cannot leak through an error; :class:`ByoEnv` and :class:`ByoRoute`
redact it from their ``repr``. The token is not part of the endpoint spec (no
``auth_ref``): it travels beside it, in ``ProviderCall.credential``.

The base URL follows the SSRF rules of the provider layer with
``allow_private`` off: loopback, private, link-local and other non-public
addresses, written in any form ``getaddrinfo`` accepts, and ``localhost`` are
refused here with a 400; names that *resolve* to such addresses are for the
provider's connection guard. A BYO endpoint is therefore always remote, so a
confidential request never goes to one.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
from msgspec import Struct

from services.router.table import ResolvedTarget
from shared.errors import InvalidRequest, PolicyDenied
from shared.headers import ENV
from shared.routing import Endpoint, RoutingDefaults, routing_encoder
from shared.subjects import provider_subject

ALLOWLIST: tuple[str, ...] = (
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_DEFAULT_MODEL",
    "ANTHROPIC_DEFAULT_FAST_MODEL",
    "API_TIMEOUT_MS",
)
"""The only keys ``Modelbus-Env`` may hold (the Aegis BYO allowlist)."""

DENIED_PREFIXES: tuple[str, ...] = (
    "ANTHROPIC_",
    "OPENAI_",
    "AZURE_",
    "AWS_",
    "GITHUB_",
    "GH_",
    "GOOGLE_",
    "GCP_",
    "GEMINI_",
    "VERTEX_",
    "OPENROUTER_",
    "MISTRAL_",
    "GROQ_",
    "COHERE_",
    "DEEPSEEK_",
    "TOGETHER_",
    "HF_",
    "HUGGINGFACE_",
    "XAI_",
    "GLM_",
)
"""Provider-native name prefixes Aegis denies; named as such in the 400."""
DENIED_SUFFIXES: tuple[str, ...] = ("_API_KEY", "_TOKEN", "_SECRET", "_SECRET_KEY", "_ACCESS_KEY", "_PASSWORD")
"""Names that look like some other credential; also named as such."""

MAX_HEADER_BYTES = 16 * 1024
MAX_MODEL_CHARS = 256
MAX_URL_CHARS = 2048
MAX_TIMEOUT_MS = 86_400_000
"""A day; GLM's Claude Code guide suggests 3,000,000 ms, so the cap must be generous."""

BYO_PROVIDER = "openai-compatible"
_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_env_decoder = msgspec.json.Decoder(dict[str, Any])


class ByoEnv(Struct, kw_only=True, frozen=True):
    """A validated ``Modelbus-Env``; ``repr`` never shows the token."""

    base_url: str
    """``ANTHROPIC_BASE_URL``: the OpenAI-compatible base URL."""
    default_model: str
    """``ANTHROPIC_DEFAULT_MODEL``: upstream model for ``default``."""
    auth_token: str | None = None
    """``ANTHROPIC_AUTH_TOKEN``: bearer token; never logged, traced or echoed."""
    default_fast_model: str | None = None
    """``ANTHROPIC_DEFAULT_FAST_MODEL``: upstream model for ``fast``."""
    timeout_ms: int | None = None
    """``API_TIMEOUT_MS``: upstream timeout of one attempt."""

    def __repr__(self) -> str:
        token = "<redacted>" if self.auth_token else None
        return (
            f"ByoEnv(base_url={self.base_url!r}, default_model={self.default_model!r}, auth_token={token}, "
            f"default_fast_model={self.default_fast_model!r}, timeout_ms={self.timeout_ms!r})"
        )

    __str__ = __repr__

    def __rich_repr__(self) -> Any:
        # msgspec's own __rich_repr__ would list every field, token included.
        yield "base_url", self.base_url
        yield "default_model", self.default_model
        yield "auth_token", "<redacted>" if self.auth_token else None


@dataclass(frozen=True, slots=True)
class ByoRoute:
    """Where a BYO request goes, and the token that goes with it (never in the endpoint spec)."""

    targets: tuple[ResolvedTarget, ...]
    """One ephemeral ``openai-compatible`` target."""
    credential: str | None = field(default=None, repr=False)
    """The bearer token, for ``ProviderCall.credential``; ``None`` without one."""


def check_enabled(defaults: RoutingDefaults) -> None:
    """Deny BYO requests when the operator turned BYO off (``byo_enabled: false``)."""
    if not defaults.byo_enabled:
        raise PolicyDenied("BYO endpoints are disabled by the operator", code="byo_disabled", param=ENV)


def _invalid(message: str, code: str = "invalid_byo_env") -> InvalidRequest:
    return InvalidRequest(f"{ENV}: {message}", code=code, param=ENV)


def _is_denied_name(key: str) -> bool:
    upper = key.upper()
    return upper.startswith(DENIED_PREFIXES) or upper.endswith(DENIED_SUFFIXES)


def _reject_keys(keys: list[str]) -> InvalidRequest:
    # A key that is not an environment-variable name might be a pasted secret: never echo it.
    shown = [k for k in keys if k and len(k) <= 64 and set(k) <= _ENV_NAME_CHARS]
    hidden = len(keys) - len(shown)
    denied = [k for k in shown if _is_denied_name(k)]
    other = [k for k in shown if not _is_denied_name(k)]
    parts = []
    if denied:
        parts.append(
            f"{', '.join(denied)}: denied provider-native secret name{'s' if len(denied) > 1 else ''}; "
            "map the value to ANTHROPIC_AUTH_TOKEN outside modelbus"
        )
    if other:
        parts.append(f"{', '.join(other)}: not allowed")
    if hidden:
        parts.append(
            f"{hidden} key{'s' if hidden > 1 else ''} that {'are' if hidden > 1 else 'is'} not a variable name"
        )
    code = "byo_secret_name_denied" if denied else "byo_key_not_allowed"
    return _invalid(f"{'; '.join(parts)}. Allowed keys: {', '.join(ALLOWLIST)}", code)


def _string(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid(f"{key} must be a string")
    return value


def _model(raw: dict[str, Any], key: str) -> str | None:
    value = _string(raw, key)
    if value is not None and (len(value) > MAX_MODEL_CHARS or not value.isprintable() or value.strip() != value):
        raise _invalid(f"{key} must be a printable model name of at most {MAX_MODEL_CHARS} characters")
    return value


def _token(raw: dict[str, Any]) -> str | None:
    value = _string(raw, "ANTHROPIC_AUTH_TOKEN")
    # httpx quotes an illegal header value in its error, which would echo the token.
    if value is not None and not all("!" <= c <= "~" for c in value):
        raise _invalid("ANTHROPIC_AUTH_TOKEN must be printable ASCII without spaces")
    return value


def _timeout(raw: dict[str, Any]) -> int | None:
    value = raw.get("API_TIMEOUT_MS")
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _invalid("API_TIMEOUT_MS must be a whole number of milliseconds (string or integer)")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 12:
            raise _invalid("API_TIMEOUT_MS must be a whole number of milliseconds (string or integer)")
        value = int(value)
    if not 1 <= value <= MAX_TIMEOUT_MS:
        raise _invalid(f"API_TIMEOUT_MS must be between 1 and {MAX_TIMEOUT_MS} milliseconds")
    return value


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address if it is one in any form ``getaddrinfo`` would accept
    (``127.1``, ``2130706433``, ``0x7f000001`` included), else ``None``."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and set(host.lower()) <= frozenset("0123456789abcdefx."):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_private_host(host: str) -> bool:
    """Whether ``host`` names a non-public address: loopback, private, link-local, ...

    Checks the literal only (no DNS): ``localhost`` and ``*.localhost`` by name,
    and IP literals that are not globally routable.
    """
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _literal_ip(name)
    return ip is not None and (not ip.is_global or ip.is_multicast)


def _base_url(raw: dict[str, Any]) -> tuple[str, str]:
    """The validated base URL and its ``host[:port]``."""
    key = "ANTHROPIC_BASE_URL"
    value = _string(raw, key)
    if value is None:
        raise _invalid(f"{key} is required", "byo_base_url_required")
    bad = _invalid(f"{key} must be an http:// or https:// URL with a host", "invalid_byo_base_url")
    if len(value) > MAX_URL_CHARS or not value.isascii() or not value.isprintable() or " " in value:
        raise bad
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not host:
        raise bad
    if parts.username is not None or parts.password is not None:
        raise _invalid(f"{key} must not carry credentials; use ANTHROPIC_AUTH_TOKEN", "invalid_byo_base_url")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise _invalid(f"{key} must not have a query or fragment", "invalid_byo_base_url")
    if is_private_host(host):
        raise _invalid(
            f"{key} points at a loopback, private or link-local address, which BYO endpoints may not reach",
            "byo_private_address",
        )
    return value, parts.netloc.lower()


def parse_env_header(value: str) -> ByoEnv:
    """Validate a ``Modelbus-Env`` header value into a :class:`ByoEnv`.

    Raises :class:`InvalidRequest` (``param`` ``Modelbus-Env``) for anything but
    a JSON object of allowlisted keys with valid values; the message names
    keys only, never a value.
    """
    if len(value) > MAX_HEADER_BYTES:
        raise _invalid(f"larger than {MAX_HEADER_BYTES} bytes")
    try:
        raw = _env_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        # msgspec's reason is not needed, and the value is not echoed.
        raise _invalid("must be a JSON object of the allowlisted BYO keys") from None
    unknown = sorted(k for k in raw if k not in ALLOWLIST)
    if unknown:
        raise _reject_keys(unknown)
    base_url, _ = _base_url(raw)
    model = _model(raw, "ANTHROPIC_DEFAULT_MODEL")
    if model is None:
        raise _invalid("ANTHROPIC_DEFAULT_MODEL is required", "byo_model_required")
    return ByoEnv(
        base_url=base_url,
        default_model=model,
        auth_token=_token(raw),
        default_fast_model=_model(raw, "ANTHROPIC_DEFAULT_FAST_MODEL"),
        timeout_ms=_timeout(raw),
    )


def upstream_model(env: ByoEnv, requested_model: str | None) -> str:
    """The upstream model for a request's ``model``.

    Empty or ``default``: ``ANTHROPIC_DEFAULT_MODEL``; ``fast``:
    ``ANTHROPIC_DEFAULT_FAST_MODEL`` (or the default model without one); any
    other name is passed through as the upstream model.
    """
    if not requested_model or requested_model == "default":
        return env.default_model
    if requested_model == "fast":
        return env.default_fast_model or env.default_model
    return requested_model


def byo_route(env: ByoEnv, requested_model: str | None) -> ByoRoute:
    """The ephemeral ``openai-compatible`` endpoint ``byo:<host>`` of ``env`` as a one-target route.

    The endpoint has no ``auth_ref`` and ``allow_private`` off; its token is
    returned beside it in :attr:`ByoRoute.credential`. No capability tags and
    no context window are known, so the filters treat it as capable.
    """
    _, netloc = _base_url({"ANTHROPIC_BASE_URL": env.base_url})
    timeout: dict[str, Any] = {"timeout_ms": env.timeout_ms} if env.timeout_ms is not None else {}
    endpoint = Endpoint(
        name=f"byo:{netloc}",
        provider=BYO_PROVIDER,
        base_url=env.base_url,
        default_model=env.default_model,
        allow_private=False,
        # Private and loopback hosts are refused by _base_url, so a BYO endpoint is always remote.
        locality="remote",
        **timeout,
    )
    target = ResolvedTarget(
        endpoint=endpoint,
        model=upstream_model(env, requested_model),
        subject=provider_subject(BYO_PROVIDER),
        endpoint_raw=msgspec.Raw(routing_encoder.encode(endpoint)),
    )
    return ByoRoute(targets=(target,), credential=env.auth_token)
