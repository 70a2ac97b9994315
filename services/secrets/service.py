"""Resolve credential references for provider workers, and administer stored secrets.

References (``CredentialRequest.ref``):

* ``env:VAR``: variable ``VAR`` of this service's own environment (never the
  requester's), unless :mod:`services.secrets.env_policy` refuses the name:
  the service's own configuration (``NATS_*``, ``MODELBUS_*``, ``VAULT_*``,
  ``OTEL_*``, proxies) never, and only names matching
  ``MODELBUS_SECRETS_ENV_ALLOW`` when that is set.
* ``secret:NAME``: the secret ``NAME``: when Vault is configured
  (:mod:`services.secrets.vault`), first ``<prefix>/NAME`` in Vault, then the
  encrypted store (:mod:`services.secrets.store`), as AuroraSOC does.
* ``NAME`` (bare, as Orloj's ``auth.secretRef: openai-api-key``): first the
  environment variable ``ORLOJ_SECRET_<NAME>``, tried as written, with ``-``
  replaced by ``_``, and upper-cased with every other character ``_`` (Orloj's
  own normalisation), each only if the env policy allows it; then the secret
  ``NAME`` as for ``secret:NAME``.
* ``vault:PATH`` or ``vault:PATH#KEY``: the Vault secret at ``PATH`` in the
  configured KV-v2 mount, not under the prefix.

An error from Vault is not a miss: nothing falls back to the store then,
because the store may hold an older value that Vault has since replaced.

Admin subjects put (to Vault when it is configured, else to the store),
delete (from both), and list stored secrets, and describe credential
references (whether a value is behind them, and where from); every change is
announced on ``modelbus.v1.secrets.changed`` (name and operation only) so
provider workers drop cached copies. Errors name references and secret names,
never a value, and no value is ever logged or put on a span. How requests
arrive and replies leave (and which reply subjects are answered at all) is
:mod:`services.secrets.wire`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from services.secrets.crypto import KeyNotAvailable, RecordReplayed, RecordUnreadable
from services.secrets.env_policy import ALLOW_ENV, EnvPolicy
from services.secrets.masterkey import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV
from services.secrets.store import KeyCheckReplayed, SecretStore, StoreKeyRetired, last4, name_problem
from services.secrets.vault import VaultEntry, VaultError, VaultSource, vault_path_problem
from shared.envelopes import (
    SecretChanged,
    SecretDelete,
    SecretInfo,
    SecretList,
    SecretPut,
    SecretsDescribe,
)
from shared.errors import InvalidRequest, ModelbusError, NotFound, PolicyDenied

log = logging.getLogger("modelbus.secrets")

ORLOJ_ENV_PREFIX = "ORLOJ_SECRET_"
"""Orloj's prefix for secrets given as environment variables."""
MAX_DESCRIBE_REFS = 1000
"""Most references one describe request may ask about."""
VAULT_SCHEME = "vault"
"""``vault:PATH[#KEY]``: an explicit path in the configured KV-v2 mount."""
_VAULT_FIELD_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

PublishChange = Callable[[SecretChanged], Awaitable[Any]]


class StoreUnavailable(ModelbusError):
    """Stored secrets cannot be used because no master key is configured (503)."""

    status = 503
    type = "service_unavailable"
    default_code = "master_key_missing"


_NO_KEY = f"no master key is configured (set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV})"


def _named(ref: str, err: ModelbusError) -> ModelbusError:
    """``err`` again, its message now saying which reference (or secret) it was about."""
    err.message = f"{ref}: {err.message}"
    err.args = (err.message,)
    return err


def orloj_env_names(name: str) -> list[str]:
    """The environment variables that may hold bare secret ``name``, in the order tried."""
    normalized = re.sub(r"[^A-Z0-9]", "_", name.upper()).strip("_")
    candidates = [name, name.replace("-", "_"), normalized]
    return list(dict.fromkeys(ORLOJ_ENV_PREFIX + c for c in candidates if c))


class SecretsService:
    """Everything the secrets service answers, independent of the transport.

    ``store`` is ``None`` when no master key is configured: ``env:`` and
    ``ORLOJ_SECRET_*`` references still resolve, stored secrets answer 503
    (unless Vault is configured: then a name Vault lacks is simply not found).
    ``vault`` is ``None`` when no Vault address is configured. ``policy``
    (by default the one ``env`` sets) decides which variables may be read.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        store: SecretStore | None = None,
        publish_change: PublishChange | None = None,
        vault: VaultSource | None = None,
        policy: EnvPolicy | None = None,
    ) -> None:
        self.env = os.environ if env is None else env
        self.store = store
        self.publish_change = publish_change
        self.vault = vault
        self.policy = EnvPolicy.from_env(self.env) if policy is None else policy

    def _variable(self, variable: str) -> str | None:
        """A variable's value if the policy lets it out and it is set; the policy is asked first."""
        return self.policy.read(self.env, variable)

    # ------------------------------------------------------------ resolution

    async def resolve(self, ref: str) -> str:
        """The value behind a reference; raises a typed error naming the reference."""
        scheme, sep, rest = ref.partition(":")
        if not sep:
            return await self._resolve_bare(ref)
        if not rest:
            raise InvalidRequest(f"credential reference {ref!r} is not of the form scheme:name", param="ref")
        if scheme == "env":
            refusal = self.policy.refusal(rest)
            if refusal is not None:  # decided on the name alone: set or not, the answer is the same
                raise PolicyDenied(f"credential reference {ref!r}: {refusal}", code="secret_ref_refused", param="ref")
            value = self.env.get(rest)
            if not value:
                raise NotFound(f"credential reference {ref!r}: variable {rest} is not set", code="secret_not_found")
            return value
        if scheme == "secret":
            problem = name_problem(rest)
            if problem:
                raise InvalidRequest(f"credential reference {ref!r}: secret name {problem}", param="ref")
            value = await self._by_name(ref, rest)
            if value is None:
                raise NotFound(f"credential reference {ref!r}: {self._missing(rest)}", code="secret_not_found")
            return value
        if scheme == VAULT_SCHEME:
            return await self._resolve_vault_path(ref, rest)
        raise NotFound(f"credential reference {ref!r}: unsupported source {scheme!r}", code="secret_not_found")

    async def _resolve_bare(self, ref: str) -> str:
        problem = name_problem(ref)
        if problem:
            raise InvalidRequest(
                f"credential reference {ref!r} is neither scheme:name nor a secret name (a secret name {problem})",
                param="ref",
            )
        variables = [v for v in orloj_env_names(ref) if self.policy.allows(v)]
        for variable in variables:
            value = self.env.get(variable)
            if value:
                return value
        unset = (
            f"{' / '.join(variables)} is not set"
            if variables
            else f"{ORLOJ_ENV_PREFIX}* variables are not allowed by {ALLOW_ENV}"
        )
        if self.store is None and self.vault is None:
            raise StoreUnavailable(
                f"credential reference {ref!r}: {unset}, and stored secrets are unavailable: {_NO_KEY}"
            )
        value = await self._by_name(ref, ref)
        if value is None:
            raise NotFound(
                f"credential reference {ref!r}: {unset} and {self._missing(ref)}",
                code="secret_not_found",
            )
        return value

    async def _by_name(self, ref: str, name: str) -> str | None:
        """Secret ``name``: Vault first when configured, then the encrypted store."""
        if self.vault is not None:
            problem = vault_path_problem(name)
            if problem:
                raise InvalidRequest(f"credential reference {ref!r}: as a Vault path, the name {problem}", param="ref")
            entry = await self._vault_read(repr(ref), self.vault.path_of(name))
            if entry is not None:
                return entry.value
            if self.store is None:
                return None  # Vault alone: a miss is a miss, not a locked store
        return await self._stored(ref, name)

    def _missing(self, name: str) -> str:
        """Where secret ``name`` was looked for, for a not-found message."""
        stored = f"no secret named {name!r} is stored"
        if self.vault is None:
            return stored
        in_vault = f"Vault has no secret at {self.vault.where(name)}"
        if self.store is None:
            return f"{in_vault} (the encrypted store is not in use: {_NO_KEY})"
        return f"{in_vault} and {stored}"

    async def _resolve_vault_path(self, ref: str, rest: str) -> str:
        if self.vault is None:
            raise NotFound(
                f"credential reference {ref!r}: source {VAULT_SCHEME!r} is not configured "
                "(set VAULT_ADDR and VAULT_TOKEN for the secrets service)",
                code="secret_not_found",
            )
        path, field = _vault_target(ref, rest)
        entry = await self._vault_read(repr(ref), path, field)
        if entry is None:
            raise NotFound(
                f"credential reference {ref!r}: Vault has no secret at {self.vault.kv.where(path)}",
                code="secret_not_found",
            )
        return entry.value

    async def _vault_read(self, what: str, path: str, field: str | None = None) -> VaultEntry | None:
        assert self.vault is not None
        try:
            return await self.vault.kv.read_entry(path, field)
        except VaultError as err:
            raise _named(f"credential reference {what}", err) from None

    async def _stored(self, ref: str, name: str) -> str | None:
        if self.store is None:
            raise StoreUnavailable(f"credential reference {ref!r}: stored secrets are unavailable: {_NO_KEY}")
        try:
            return await self.store.get(name)
        except RecordReplayed:
            log.error("stored secret %r: record for %s was rolled back or replayed", name, name)
            raise ModelbusError(
                f"credential reference {ref!r}: record for {name} was rolled back or replayed (an older record "
                "was written back to the secrets bucket); store the secret again",
                code="secret_replayed",
            ) from None
        except KeyNotAvailable as exc:
            raise ModelbusError(
                f"credential reference {ref!r}: the stored secret is sealed under master key id {exc.key_id}, "
                "which this secrets service does not hold; if the master key was rotated, restart the "
                "secrets service with the new key",
                code="secret_unreadable",
            ) from None
        except RecordUnreadable:
            raise ModelbusError(
                f"credential reference {ref!r}: the stored secret does not decrypt with the current master key",
                code="secret_unreadable",
            ) from None

    # ------------------------------------------------------------ admin

    async def put(self, req: SecretPut) -> SecretInfo:
        """Store a secret (in Vault when it is configured, else in the encrypted store) and announce the change."""
        problem = name_problem(req.name)
        if problem:
            raise InvalidRequest(f"secret name {req.name!r} {problem}", param="name")
        if not req.value:
            raise InvalidRequest(f"secret {req.name!r}: value must not be empty", param="value")
        if self.vault is not None:
            problem = vault_path_problem(req.name)
            if problem:
                raise InvalidRequest(f"secret name {req.name!r}: as a Vault path, it {problem}", param="name")
            try:
                entry = await self.vault.kv.write(self.vault.path_of(req.name), req.value)
            except VaultError as err:
                raise _named(f"cannot store secret {req.name!r}", err) from None
            info = SecretInfo(
                name=req.name,
                key_present=True,
                key_last4=last4(req.value),
                source="vault",
                updated_at=entry.updated_at,
            )
        elif self.store is None:
            raise StoreUnavailable(f"cannot store secret {req.name!r}: {_NO_KEY}")
        else:
            try:
                info = await self.store.put(req.name, req.value)
            except KeyCheckReplayed:
                raise StoreUnavailable(
                    f"cannot store secret {req.name!r}: the secrets store's key check was rolled back or replayed; "
                    "nothing is stored until an operator has looked (see docs/secrets.md)",
                    code="keycheck_replayed",
                ) from None
            except StoreKeyRetired as exc:
                active = f" (key id {exc.key_id})" if exc.key_id else ""
                raise StoreUnavailable(
                    f"cannot store secret {req.name!r}: the secrets store's master key was rotated to a key{active} "
                    "this secrets service does not hold; restart it with the new master key",
                    code="master_key_rotated",
                ) from None
        log.info("secret %r set by %s (%s)", req.name, req.actor, info.source)
        await self._announce(SecretChanged(name=req.name, op="set"))
        return info

    async def delete(self, req: SecretDelete) -> SecretInfo:
        """Delete a secret from Vault and the encrypted store and announce the change; 404 when neither had it."""
        problem = name_problem(req.name)
        if problem:
            raise InvalidRequest(f"secret name {req.name!r} {problem}", param="name")
        if self.store is None and self.vault is None:
            raise StoreUnavailable(f"cannot delete secret {req.name!r}: {_NO_KEY}")
        removed = False
        if self.vault is not None and vault_path_problem(req.name) is None:
            try:
                removed = await self.vault.kv.delete(self.vault.path_of(req.name))
            except VaultError as err:
                raise _named(f"cannot delete secret {req.name!r}", err) from None
        if self.store is not None:
            removed = await self.store.delete(req.name) or removed
        if not removed:
            raise NotFound(self._missing(req.name), code="secret_not_found")
        log.info("secret %r deleted by %s", req.name, req.actor)
        await self._announce(SecretChanged(name=req.name, op="delete"))
        return SecretInfo(name=req.name, key_present=False, source="vault" if self.vault is not None else "store")

    async def list_secrets(self) -> SecretList:
        """Secrets in Vault and the store, and ``ORLOJ_SECRET_*`` variables, sorted by name; never a value."""
        items = await self.store.infos() if self.store is not None else []
        if self.vault is not None:
            try:
                items += await self.vault.infos()
            except VaultError as err:
                raise _named("secret list", err) from None
        for variable, value in self.env.items():
            name = variable.removeprefix(ORLOJ_ENV_PREFIX)
            if variable.startswith(ORLOJ_ENV_PREFIX) and name and self.policy.allows(variable):
                items.append(SecretInfo(name=name, key_present=bool(value), key_last4=last4(value), source="env"))
        items.sort(key=lambda info: (info.name, info.source or ""))
        return SecretList(items=items)

    async def describe(self, req: SecretsDescribe) -> SecretList:
        """Whether a value is behind each reference, and where it comes from; never a value.

        Items come back in the order asked, each named by its reference, and
        follow :meth:`resolve`'s rules. A reference that does not resolve (an
        unset variable, a secret that is not stored, a malformed reference, or
        a stored secret while the store is locked) is ``key_present: false``.
        """
        if len(req.refs) > MAX_DESCRIBE_REFS:
            raise InvalidRequest(f"refs: at most {MAX_DESCRIBE_REFS} references per request", param="refs")
        stored: dict[str, SecretInfo] = {}
        if self.store is not None and any(not ref.startswith("env:") for ref in req.refs):
            stored = {info.name: info for info in await self.store.infos()}
        in_vault = await self._vault_entries(req.refs)
        return SecretList(items=[self._describe_ref(ref, stored, in_vault) for ref in req.refs])

    def _vault_lookup(self, ref: str) -> tuple[str, str | None] | None:
        """The Vault path (and key) :meth:`resolve` would read for ``ref``, if any."""
        if self.vault is None:
            return None
        scheme, sep, rest = ref.partition(":")
        if sep and scheme == VAULT_SCHEME:
            try:
                return _vault_target(ref, rest)
            except InvalidRequest:
                return None
        name = rest if sep and scheme == "secret" else None if sep else ref
        if name is None or vault_path_problem(name) is not None:
            return None
        if not sep and any(self._variable(v) for v in orloj_env_names(name)):
            return None  # the variable wins; Vault is not asked
        return self.vault.path_of(name), None

    async def _vault_entries(self, refs: list[str]) -> dict[tuple[str, str | None], VaultEntry | VaultError | None]:
        """One Vault read per distinct path the references need, and its outcome."""
        targets = list(dict.fromkeys(t for ref in refs if (t := self._vault_lookup(ref)) is not None))

        async def read(target: tuple[str, str | None]) -> VaultEntry | VaultError | None:
            assert self.vault is not None
            try:
                return await self.vault.kv.read_entry(*target)
            except VaultError as err:
                log.warning("describe: %s", err.message)
                return err

        return dict(zip(targets, await asyncio.gather(*(read(t) for t in targets)), strict=True))

    def _describe_ref(
        self,
        ref: str,
        stored: Mapping[str, SecretInfo],
        in_vault: Mapping[tuple[str, str | None], VaultEntry | VaultError | None],
    ) -> SecretInfo:
        absent = SecretInfo(name=ref, key_present=False)
        scheme, sep, rest = ref.partition(":")
        if sep and scheme == "env" and rest:
            value = self._variable(rest)
            return SecretInfo(name=ref, key_present=True, key_last4=last4(value), source="env") if value else absent
        target = self._vault_lookup(ref)
        entry = in_vault.get(target) if target is not None else None
        if isinstance(entry, VaultError):
            return absent  # resolve would fail too: it never falls back past a Vault error
        if entry is not None:
            return SecretInfo(
                name=ref, key_present=True, key_last4=last4(entry.value), source="vault", updated_at=entry.updated_at
            )
        if sep and scheme == "secret" and name_problem(rest) is None:
            info = stored.get(rest)
            return msgspec.structs.replace(info, name=ref) if info is not None else absent
        if sep or name_problem(ref) is not None:
            return absent
        for variable in orloj_env_names(ref):
            value = self._variable(variable)
            if value:
                return SecretInfo(name=ref, key_present=True, key_last4=last4(value), source="env")
        info = stored.get(ref)
        return msgspec.structs.replace(info, name=ref) if info is not None else absent

    async def _announce(self, change: SecretChanged) -> None:
        # The change is made; a lost event only means caches keep a value until its TTL.
        if self.publish_change is None:
            return
        try:
            await self.publish_change(change)
        except Exception as exc:
            log.error("could not announce %s of secret %r: %s", change.op, change.name, type(exc).__name__)


def _vault_target(ref: str, rest: str) -> tuple[str, str | None]:
    """``PATH`` and ``KEY`` of ``vault:PATH[#KEY]``; :class:`InvalidRequest` naming the reference."""
    path, sep, field = rest.partition("#")
    problem = vault_path_problem(path)
    if problem:
        raise InvalidRequest(f"credential reference {ref!r}: Vault path {problem}", param="ref")
    if sep and not _VAULT_FIELD_RE.fullmatch(field):
        raise InvalidRequest(
            f"credential reference {ref!r}: the key after '#' must be 1-128 letters, digits, '.', '_' or '-'",
            param="ref",
        )
    return path, field if sep else None
