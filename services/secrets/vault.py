"""HashiCorp Vault / OpenBao KV version 2 over HTTP with token auth: the optional external store.

The API is Vault's published KV-v2 one
(https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2); OpenBao keeps
the same paths and envelopes (https://openbao.org/api-docs/secret/kv/kv-v2/).
Every call sends the token in ``X-Vault-Token`` (and ``X-Vault-Namespace`` when
a namespace is set):

=================================== ======= =====================================
``/v1/<mount>/data/<path>``         GET     read the latest version
``/v1/<mount>/data/<path>``         POST    write a new version ``{"data": {"value": ...}}``
``/v1/<mount>/metadata/<path>``     GET     does the secret exist (any version)
``/v1/<mount>/metadata/<path>``     DELETE  delete every version and the metadata
``/v1/<mount>/metadata/<prefix>/``  LIST    the keys under a folder (``name/`` for sub-folders)
=================================== ======= =====================================

A credential is a KV-v2 secret with a ``value`` key. A secret with exactly one
key is read from that key whatever it is called; any other shape is an error
naming the path and its keys, never a value. ``vault:PATH#KEY`` picks a key.

Errors are translated here, once: 404 is "no such secret" (``None``), 403 is
:class:`VaultDenied`, timeouts, refused connections, 429 and 5xx (a sealed
Vault answers 503) are :class:`VaultUnavailable`. The token never appears in a
message, a log line or a ``repr``. Nothing is cached: every read goes to
Vault, and the provider workers' credential cache (TTL) is the only cache.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from services.secrets.store import last4, name_problem
from shared.envelopes import SecretInfo
from shared.errors import ModelbusError

log = logging.getLogger("modelbus.secrets.vault")

MODELBUS_VAULT_ADDR_ENV = "MODELBUS_VAULT_ADDR"
"""Vault's address for modelbus only; wins over ``VAULT_ADDR``."""
VAULT_ADDR_ENV = "VAULT_ADDR"
"""Vault's own variable for its address, e.g. ``https://vault.internal:8200``."""
VAULT_TOKEN_ENV = "VAULT_TOKEN"
"""The token itself."""
VAULT_TOKEN_FILE_ENV = "VAULT_TOKEN_FILE"
"""A file holding the token (a Vault Agent sink); re-read when it changes."""
VAULT_NAMESPACE_ENV = "VAULT_NAMESPACE"
"""Vault Enterprise / OpenBao namespace, sent as ``X-Vault-Namespace``."""
VAULT_CACERT_ENV = "VAULT_CACERT"
"""PEM file of the CA that signed Vault's TLS certificate."""
VAULT_MOUNT_ENV = "MODELBUS_VAULT_MOUNT"
"""Where the KV-v2 engine is mounted."""
VAULT_PREFIX_ENV = "MODELBUS_VAULT_PREFIX"
"""Folder under the mount that holds modelbus's named secrets."""

DEFAULT_MOUNT = "secret"
DEFAULT_PREFIX = "modelbus"
DEFAULT_TIMEOUT_S = 3.0
"""Per Vault call. Below the provider worker's 5 s credential request timeout, so a
slow Vault still gets the worker a clear error instead of a NATS timeout."""
VALUE_KEY = "value"
"""The key of a KV-v2 secret that holds the credential."""
MAX_IN_FLIGHT = 16
"""Concurrent calls to Vault from one client (describe may ask about 1000 references)."""
MAX_LISTED = 10_000
"""Most secrets one listing walks; the rest are left out with a warning."""

_SECONDS_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?Z")


class VaultConfigError(Exception):
    """The Vault settings are unusable; the message names the variable, never the token."""


class VaultError(ModelbusError):
    """Vault answered something modelbus cannot use (502)."""

    status = 502
    type = "api_error"
    default_code = "vault_error"


class VaultDenied(VaultError):
    """Vault refused the token for this path (403): invalid, expired, or missing a policy."""

    default_code = "vault_permission_denied"


class VaultUnavailable(VaultError):
    """Vault cannot answer now: unreachable, timed out, sealed, rate-limited or 5xx (503)."""

    status = 503
    type = "service_unavailable"
    default_code = "vault_unavailable"
    default_retryable = True


class VaultSecretUnusable(VaultError):
    """The secret exists but holds no single string credential; names keys, never values."""

    default_code = "vault_secret_unusable"


class VaultEntry:
    """One credential read from Vault. Its ``repr`` never shows the value."""

    __slots__ = ("updated_at", "value", "version")

    def __init__(self, value: str, *, updated_at: str | None, version: int | None) -> None:
        self.value = value
        self.updated_at = updated_at
        """When this version was written, RFC 3339 to the second."""
        self.version = version
        """KV-v2 version number."""

    def __repr__(self) -> str:
        return f"VaultEntry(version={self.version}, updated_at={self.updated_at!r})"


def vault_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a Vault secret, or ``None``.

    On top of :func:`~services.secrets.store.name_problem`: no empty, ``.`` or
    ``..`` segment, so a name can never climb out of the configured prefix.
    """
    problem = name_problem(path)
    if problem:
        return problem
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        return "must not have an empty, '.' or '..' path segment"
    return None


def _rfc3339_seconds(value: Any) -> str | None:
    # Vault gives nanoseconds ("2024-11-13T21:58:32.128442898Z"); the store gives seconds.
    if not isinstance(value, str) or not value:
        return None
    match = _SECONDS_RE.fullmatch(value)
    return match.group(1) + "Z" if match else value


class _TokenFile:
    """The token from a file, re-read when the file changes (Vault Agent rewrites its sink)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._token = self.path.read_text(encoding="utf-8").strip()
                self._stamp = stamp
        except (OSError, UnicodeDecodeError) as exc:
            raise VaultUnavailable(f"cannot read the Vault token file {self.path}: {type(exc).__name__}") from None
        return self._token


class VaultKV2:
    """A KV-v2 engine at ``mount``, reached over one pooled HTTP client.

    ``token`` is the token, or a callable returning it (for a token file).
    ``transport`` replaces the network, for tests.
    """

    def __init__(
        self,
        address: str,
        token: str | Callable[[], str],
        *,
        mount: str = DEFAULT_MOUNT,
        namespace: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.address = address.rstrip("/")
        self.mount = mount.strip("/")
        self.namespace = namespace or None
        self.timeout_s = timeout_s
        self._token = token
        self._verify = verify
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._in_flight: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"VaultKV2(address={self.address!r}, mount={self.mount!r}, namespace={self.namespace!r})"

    def where(self, path: str) -> str:
        """How messages name a secret: ``<mount>/<path>``, as ``vault kv get`` shows it."""
        return f"{self.mount}/{path}"

    # ------------------------------------------------------------ operations

    async def read(self, path: str, field: str | None = None) -> str | None:
        """The credential at ``path`` (from key ``field`` if given); ``None`` when there is none."""
        entry = await self.read_entry(path, field)
        return entry.value if entry is not None else None

    async def read_entry(self, path: str, field: str | None = None) -> VaultEntry | None:
        """The credential at ``path`` with its version and time; ``None`` when there is none.

        A missing, soft-deleted or destroyed latest version is ``None``, and so
        is an empty value or a secret with no keys, as an empty variable counts
        as unset.
        """
        response = await self._call("GET", "data", path, "read", capability="read")
        if response.status_code == 404:
            return None
        body = _json_object(response, f"read of {self.where(path)}")
        wrapper = body.get("data")
        data = wrapper.get("data") if isinstance(wrapper, dict) else None
        if data is None:
            return None
        if not isinstance(data, dict):
            raise VaultError(f"Vault's answer for {self.where(path)} is not a KV-v2 secret (is the mount KV v1?)")
        metadata = wrapper.get("metadata") if isinstance(wrapper, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        value = self._pick(path, data, field)
        if not value:
            return None
        version = metadata.get("version")
        return VaultEntry(
            value,
            updated_at=_rfc3339_seconds(metadata.get("created_time")),
            version=version if isinstance(version, int) else None,
        )

    def _pick(self, path: str, data: dict[str, Any], field: str | None) -> str | None:
        keys = sorted(str(k) for k in data)
        shown = ", ".join(repr(k[:64]) for k in keys[:10]) + (", ..." if len(keys) > 10 else "")
        if field is not None:
            if field not in data:
                raise VaultSecretUnusable(f"Vault secret {self.where(path)} has no key {field!r} (its keys: {shown})")
            key = field
        elif VALUE_KEY in data:
            key = VALUE_KEY
        elif len(data) == 1:
            key = keys[0]
        elif not data:
            return None
        else:
            raise VaultSecretUnusable(
                f"Vault secret {self.where(path)} has keys {shown} and none is named {VALUE_KEY!r}: "
                f"store the credential under {VALUE_KEY!r}, or pick a key with vault:{path}#KEY"
            )
        value = data[key]
        if value is None:
            return None
        if not isinstance(value, str):
            raise VaultSecretUnusable(
                f"Vault secret {self.where(path)}: key {key!r} holds a {type(value).__name__}, not a string"
            )
        return value

    async def write(self, path: str, value: str) -> VaultEntry:
        """Write ``{"value": value}`` as the secret's new version (other keys are replaced)."""
        response = await self._call(
            "POST", "data", path, "write", capability="create/update", json={"data": {VALUE_KEY: value}}
        )
        if response.status_code == 404:
            raise VaultError(f"Vault found no route for the write of {self.where(path)}")
        body = _json_object(response, f"write of {self.where(path)}") if response.content else {}
        metadata = body.get("data")
        if not isinstance(metadata, dict):
            metadata = {}
        version = metadata.get("version")
        return VaultEntry(
            value,
            updated_at=_rfc3339_seconds(metadata.get("created_time")),
            version=version if isinstance(version, int) else None,
        )

    async def exists(self, path: str) -> bool:
        """Whether ``path`` has metadata: any version, even a soft-deleted one."""
        response = await self._call("GET", "metadata", path, "metadata read", capability="read")
        return response.status_code != 404

    async def delete(self, path: str) -> bool:
        """Delete every version of ``path`` and its metadata; ``False`` when there was nothing.

        Vault's ``DELETE .../data/<path>`` would only soft-delete the latest
        version and keep the rest readable by version; this removes them all,
        as the encrypted store purges a deleted secret's history.
        """
        if not await self.exists(path):
            return False
        await self._call("DELETE", "metadata", path, "delete", capability="delete")
        return True

    async def list_paths(self, prefix: str) -> list[str]:
        """Every secret's path under folder ``prefix`` (recursively), sorted; ``""`` is the mount's root."""
        folders = [prefix.strip("/")]
        found: list[str] = []
        while folders:
            folder = folders.pop()
            for key in await self._list(folder):
                path = f"{folder}/{key}" if folder else key
                if key.endswith("/"):
                    folders.append(path.rstrip("/"))
                else:
                    found.append(path)
                if len(found) >= MAX_LISTED:
                    log.warning("Vault listing of %s stopped at %d secrets", self.where(prefix), MAX_LISTED)
                    return sorted(found)
        return sorted(found)

    async def _list(self, folder: str) -> list[str]:
        # The trailing slash is how Vault's own client asks for a folder.
        response = await self._call("LIST", "metadata", f"{folder}/" if folder else "", "list", capability="list")
        if response.status_code == 404:
            return []
        body = _json_object(response, f"list of {self.where(folder)}")
        keys = body.get("data", {}).get("keys") if isinstance(body.get("data"), dict) else None
        if not isinstance(keys, list):
            raise VaultError(f"Vault's listing of {self.where(folder)} has no keys array")
        return [k for k in keys if isinstance(k, str) and k.strip("/")]

    async def aclose(self) -> None:
        """Close pooled connections."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------ HTTP

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.address,
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT),
                # A redirect would carry X-Vault-Token to wherever it points; httpx strips only Authorization.
                follow_redirects=False,
                verify=self._verify,
                transport=self._transport,
            )
        return self._http

    def _headers(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        headers = {"X-Vault-Token": token, "X-Vault-Request": "true"}
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        return headers

    async def _call(
        self, method: str, kind: str, path: str, what: str, *, capability: str, json: Any = None
    ) -> httpx.Response:
        """One request; 2xx and a plain 404 come back, everything else is raised as the most specific error."""
        api_path = f"/v1/{self.mount}/{kind}/{path}"
        target = f"{what} of {self.where(path.rstrip('/')) if path else self.mount + '/'}"
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        async with self._in_flight:
            try:
                response = await self._client.request(method, api_path, headers=self._headers(), json=json)
            except httpx.TimeoutException:
                raise VaultUnavailable(
                    f"Vault at {self.address} did not answer the {target} within {self.timeout_s:g}s"
                ) from None
            except httpx.HTTPError as exc:
                raise VaultUnavailable(
                    f"cannot reach Vault at {self.address} ({type(exc).__name__}) for the {target}"
                ) from None
        status = response.status_code
        if 200 <= status < 300:
            return response
        reason = self._reason(response)
        if status == 404 and not reason:
            return response
        if status == 404:
            # A missing secret is a 404 with no errors; a missing mount or namespace names its route.
            namespace = f" in namespace {self.namespace!r}" if self.namespace else ""
            raise VaultError(
                f"Vault found no route for the {target} ({status}{reason}): "
                f"is a KV version 2 engine mounted at {self.mount!r}{namespace}?"
            )
        if status in (401, 403):
            raise VaultDenied(
                f"Vault denied the {target} ({status}{reason}): the token is invalid or expired, "
                f"or no policy grants {capability!r} on {api_path.removeprefix('/v1/')}"
            )
        if status == 429 or status >= 500:
            raise VaultUnavailable(f"Vault could not serve the {target} ({status}{reason})")
        if 300 <= status < 400:
            raise VaultError(
                f"Vault redirected the {target} ({status}); modelbus does not follow redirects with a token: "
                "point the address at the active node or its load balancer"
            )
        raise VaultError(f"Vault rejected the {target} ({status}{reason})")

    def _reason(self, response: httpx.Response) -> str:
        """Vault's ``errors`` text, short and on one line, with the token cut out in case it was echoed."""
        try:
            errors = response.json().get("errors")
        except (ValueError, AttributeError):
            return ""
        if not isinstance(errors, list) or not errors:
            return ""
        text = " ".join(" ".join(str(e).split()) for e in errors[:3])[:200]
        token = self._token() if callable(self._token) else self._token
        if token:
            text = text.replace(token, "[redacted]")
        return f": {text}"


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise VaultError(f"Vault's answer to the {what} is not JSON") from None
    if not isinstance(body, dict):
        raise VaultError(f"Vault's answer to the {what} is not a JSON object")
    return body


class VaultSource:
    """modelbus's named secrets in Vault: name ``N`` lives at ``<prefix>/N`` in the KV-v2 mount."""

    def __init__(self, kv: VaultKV2, prefix: str = DEFAULT_PREFIX) -> None:
        self.kv = kv
        self.prefix = prefix.strip("/")

    def path_of(self, name: str) -> str:
        """The Vault path of secret ``name``; ``name`` must already be valid (see :func:`vault_path_problem`)."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def where(self, name: str) -> str:
        """``<mount>/<prefix>/<name>``, for messages."""
        return self.kv.where(self.path_of(name))

    async def infos(self) -> list[SecretInfo]:
        """Every secret under the prefix, named relative to it, sorted; never a value.

        A secret that holds no usable credential shows ``key_present: false``.
        """
        paths = await self.kv.list_paths(self.prefix)
        names = [p.removeprefix(f"{self.prefix}/") if self.prefix else p for p in paths]
        names = [n for n in names if vault_path_problem(n) is None]

        async def info(name: str) -> SecretInfo:
            try:
                entry = await self.kv.read_entry(self.path_of(name))
            except VaultSecretUnusable:
                entry = None
            if entry is None:
                return SecretInfo(name=name, key_present=False, source="vault")
            return SecretInfo(
                name=name, key_present=True, key_last4=last4(entry.value), source="vault", updated_at=entry.updated_at
            )

        return list(await asyncio.gather(*(info(n) for n in names)))

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.kv.aclose()


def vault_from_env(env: Mapping[str, str], *, transport: httpx.AsyncBaseTransport | None = None) -> VaultSource | None:
    """The Vault source configured in ``env``, ``None`` when no address is set.

    Raises :class:`VaultConfigError` naming the variable at fault.
    """
    address_var = MODELBUS_VAULT_ADDR_ENV if env.get(MODELBUS_VAULT_ADDR_ENV) else VAULT_ADDR_ENV
    address = env.get(address_var, "").strip()
    if not address:
        return None
    try:
        parts = httpx.URL(address)
    except httpx.InvalidURL:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.host:
        raise VaultConfigError(f"{address_var}: {address!r} is not an http(s) URL such as https://vault.internal:8200")
    inline = env.get(VAULT_TOKEN_ENV, "")
    token_path = env.get(VAULT_TOKEN_FILE_ENV, "")
    token: str | Callable[[], str]
    if inline and token_path:
        raise VaultConfigError(f"both {VAULT_TOKEN_ENV} and {VAULT_TOKEN_FILE_ENV} are set; set only one")
    if inline:
        token = inline.strip()
    elif token_path:
        token_file = _TokenFile(Path(token_path))
        try:
            first = token_file()
        except VaultUnavailable:
            raise VaultConfigError(f"{VAULT_TOKEN_FILE_ENV}: cannot read {token_path}") from None
        if not first:
            raise VaultConfigError(f"{VAULT_TOKEN_FILE_ENV}: {token_path} is empty")
        token = token_file
    else:
        raise VaultConfigError(
            f"{address_var} is set but no token is: set {VAULT_TOKEN_ENV} or {VAULT_TOKEN_FILE_ENV} "
            f"(or unset {address_var} for the secrets service to run without Vault)"
        )
    mount = env.get(VAULT_MOUNT_ENV, "").strip("/") or DEFAULT_MOUNT
    problem = vault_path_problem(mount)
    if problem:
        raise VaultConfigError(f"{VAULT_MOUNT_ENV}: {mount!r} {problem}")
    prefix = env.get(VAULT_PREFIX_ENV, "").strip("/") or DEFAULT_PREFIX
    problem = vault_path_problem(prefix)
    if problem:
        raise VaultConfigError(f"{VAULT_PREFIX_ENV}: {prefix!r} {problem}")
    verify: ssl.SSLContext | bool = True
    cacert = env.get(VAULT_CACERT_ENV, "")
    if cacert:
        try:
            verify = ssl.create_default_context(cafile=cacert)
        except (OSError, ssl.SSLError) as exc:
            raise VaultConfigError(f"{VAULT_CACERT_ENV}: cannot load {cacert}: {type(exc).__name__}") from None
    kv = VaultKV2(
        address,
        token,
        mount=mount,
        namespace=env.get(VAULT_NAMESPACE_ENV, "").strip("/") or None,
        verify=verify,
        transport=transport,
    )
    return VaultSource(kv, prefix)
