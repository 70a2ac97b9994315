"""Every change to the configuration goes through :class:`ConfigManager`.

A mutation is a function from the current resources to the new ones. The
manager compiles the result (so an invalid state is never stored), commits it
as the next revision of the config log, and only then publishes change events
and appends to the audit log. On a revision conflict (another config service
committed first) it re-reads the head and re-runs the mutation.

Every revision records the audit head it was committed after, and its audit
entry the digest of the stored record (see :mod:`services.config.audit_verify`).

Applies are declarative per resource (like ``kubectl apply``): documents create
or replace the resources they name and leave the others alone; ``delete``
removes one (or, with kind ``Secret``, a stored secret: audited, no revision).
Boot defaults (the built-in example, keys and settings from the environment)
only fill gaps: they never replace what an operator applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import msgspec
from nats.aio.client import Client

from services.config.compile import compile_config
from services.config.documents import Parsed, load_documents, parse_documents
from services.config.resources import Resource, resource_from_stored, spec_to_dict
from services.config.store import ConfigLog, RevisionConflict, UnknownRevision, now, record_digest
from shared import headers as H
from shared.admin import (
    SECRET_KIND,
    ApplyResult,
    AuditAnchor,
    Change,
    ConfigRecord,
    HistoryEntry,
    HistoryList,
    ResourceList,
    StoredResource,
    canonical_kind,
)
from shared.envelopes import ConfigChanged, SecretDelete, SecretInfo, SecretPut
from shared.errors import ConfigError, Conflict, ModelbusError, NoRouteAvailable, NotFound, error_from_wire
from shared.subjects import CONFIG_EVENTS, SECRETS_DELETE, SECRETS_PUT

log = logging.getLogger("modelbus.config")

Key = tuple[str, str]
State = dict[Key, StoredResource]
Action = Literal["apply", "delete", "rollback", "boot"]
DEFAULT_SOURCES = ("default:", "env:")
"""Sources of boot defaults: replaceable by later boot defaults, never replacing applied resources."""

_encoder = msgspec.json.Encoder()
_secret_info = msgspec.json.Decoder(SecretInfo)


SECRETS_TIMEOUT_S = 5.0


class Auditor(Protocol):
    """Where mutations are recorded (the HMAC-chained audit log, :class:`services.config.audit.AuditLog`)."""

    async def append(
        self,
        actor: str,
        action: str,
        target: str,
        revision: int | None = None,
        details: dict[str, Any] | None = None,
        *,
        record: str | None = None,
    ) -> object: ...

    async def anchor(self) -> AuditAnchor:
        """The current head, recorded in the next revision."""
        ...


def stored(resource: Resource) -> StoredResource:
    """The storable form of a validated resource."""
    return StoredResource(kind=resource.kind, name=resource.name, spec=spec_to_dict(resource), source=resource.source)


def _state(record: ConfigRecord | None) -> State:
    return {(r.kind, r.name): r for r in (record.resources if record else [])}


def _diff(old: State, new: State) -> list[Change]:
    changes = [Change(op="delete", kind=k, name=n) for (k, n) in old if (k, n) not in new]
    for key, res in new.items():
        if key not in old:
            changes.append(Change(op="create", kind=key[0], name=key[1]))
        elif old[key] != res:
            changes.append(Change(op="update", kind=key[0], name=key[1]))
    return sorted(changes, key=lambda c: (c.kind, c.name))


class ConfigManager:
    """Owns the config log on behalf of the config service.

    ``nc`` is the serving connection, for requests to the secrets service;
    ``state_nc`` (default: ``nc``) the state identity's, for the change events
    (the config log itself is written through ``config_log``'s JetStream context).
    """

    def __init__(
        self,
        nc: Client,
        config_log: ConfigLog,
        *,
        auditor: Auditor | None = None,
        state_nc: Client | None = None,
    ) -> None:
        self.nc = nc
        self.state_nc = state_nc or nc
        self.log = config_log
        self.auditor = auditor
        self.head: ConfigRecord | None = None
        self._lock = asyncio.Lock()

    @property
    def revision(self) -> int:
        return self.head.revision if self.head else 0

    async def load(self) -> ConfigRecord | None:
        """Read the newest revision (after a restart, the state before it)."""
        self.head = await self.log.head()
        return self.head

    async def audit_head_revision(self) -> bool:
        """Audit the newest revision if a crash left it without its entry; whether one was appended.

        A revision is committed before its entry is appended, so a process
        killed in between leaves a revision ``audit verify`` reports as
        unaudited. That case is recognised by the audit head being exactly the
        (non-empty) head the revision recorded: nothing was appended since. The
        entry is then appended late, marked ``late: true``. Any other state (an
        emptied or rebuilt log, entries appended since) is left for ``audit
        verify`` to report: re-auditing it would paper over a deletion.
        """
        head, auditor = self.head, self.auditor
        if head is None or auditor is None or head.audit is None or head.audit.index == 0:
            return False
        if await auditor.anchor() != head.audit:
            return False
        log.warning("revision %d has no audit entry (a crash after its commit?); appending it now", head.revision)
        await auditor.append(
            head.actor,
            head.action,
            _target(head.changes),
            revision=head.revision,
            details={"changes": len(head.changes), "late": True},
            record=record_digest(head),
        )
        return True

    # ------------------------------------------------------------ mutations

    async def apply_text(
        self, text: str, *, actor: str, dry_run: bool = False, source: str = "<input>", action: Action = "apply"
    ) -> ApplyResult:
        """Apply documents of any supported format."""
        parsed = parse_documents(load_documents(text, source=source))
        for note in parsed.notes:
            log.info("%s", note)
        return await self.apply_parsed(parsed, actor=actor, dry_run=dry_run, action=action)

    async def apply_parsed(
        self,
        parsed: Parsed,
        *,
        actor: str,
        dry_run: bool = False,
        action: Action = "apply",
        defaults: bool = False,
        expected_revision: int | None = None,
    ) -> ApplyResult:
        """Create or replace the parsed resources; hand secrets to the secrets service.

        With ``defaults=True`` a resource only fills a gap or replaces another
        boot default; it never replaces what an operator applied. With
        ``expected_revision`` the apply is optimistic: it fails with
        :class:`Conflict` if anything was committed since that revision (for
        changes computed from a read of the state).
        """
        incoming = [stored(r) for r in parsed.resources]

        def mutate(state: State) -> State:
            if expected_revision is not None and self.revision != expected_revision:
                raise Conflict(
                    f"the configuration moved from revision {expected_revision} to {self.revision} "
                    "since it was read; re-read and retry"
                )
            new = dict(state)
            for res in incoming:
                key = (res.kind, res.name)
                current = state.get(key)
                if defaults and current is not None and not current.source.startswith(DEFAULT_SOURCES):
                    continue
                new[key] = res
            return new

        if dry_run:
            record = self.head
            new_state = mutate(_state(record))
            self._compile(new_state, self.revision + 1)
            return ApplyResult(
                revision=self.revision,
                changes=_diff(_state(record), new_state),
                dry_run=True,
                secrets=sorted(s.name for s in parsed.secrets),
            )
        # Validate the whole apply before any side effect, then store secrets, then commit.
        self._compile(mutate(_state(self.head)), self.revision + 1)
        for secret in parsed.secrets:
            await self._put_secret(secret.name, secret.value, actor)
        result = await self._mutate(mutate, actor=actor, action=action, target=f"{len(incoming)} resource(s)")
        return msgspec.structs.replace(result, secrets=sorted(s.name for s in parsed.secrets))

    async def delete(self, kind: str, name: str, *, actor: str) -> ApplyResult:
        """Delete one resource (fails if others still refer to it), or a stored secret."""
        if kind.strip().lower() == SECRET_KIND.lower():
            return await self.delete_secret(name, actor=actor)
        kind = canonical_kind(kind)

        def mutate(state: State) -> State:
            if (kind, name) not in state:
                raise NotFound(f"{kind} {name!r} does not exist", code="resource_not_found")
            return {k: v for k, v in state.items() if k != (kind, name)}

        return await self._mutate(mutate, actor=actor, action="delete", target=f"{kind} {name}")

    async def delete_secret(self, name: str, *, actor: str) -> ApplyResult:
        """Delete stored secret ``name`` through the secrets service and audit it (``secret.delete``).

        A secret is not part of the routing configuration, so no revision is
        made. Refused (409) while an endpoint still refers to it, since that
        endpoint would then fail every request.
        """
        users = sorted(
            f"{r.kind} {r.name}" for r in (self.head.resources if self.head else []) if _refers_to(r.spec, name)
        )
        if users:
            raise Conflict(
                f"secret {name!r} is still referred to by {', '.join(users)}; point them at another credential first",
                code="secret_in_use",
            )
        try:
            reply = await self.nc.request(
                SECRETS_DELETE, _encoder.encode(SecretDelete(name=name, actor=actor)), timeout=SECRETS_TIMEOUT_S
            )
        except Exception as exc:
            raise NoRouteAvailable(
                f"secret {name!r}: the secrets service did not answer ({type(exc).__name__})",
                code="secrets_unavailable",
            ) from None
        status = int((reply.headers or {}).get(H.STATUS, "0") or 0)
        if status != 200:
            raise error_from_wire(status, reply.data)
        if self.auditor is not None:
            await self.auditor.append(actor, "secret.delete", f"secret {name}")
        log.info("secret %s deleted by %s", name, actor)
        return ApplyResult(revision=self.revision, changes=[], secrets=[name])

    async def rollback(self, to: int, *, actor: str) -> ApplyResult:
        """Make revision ``to``'s resources current again, as a new revision."""
        try:
            old = await self.log.get(to)
        except UnknownRevision as exc:
            raise NotFound(str(exc), code="revision_not_found") from None
        target_state = _state(old)
        return await self._mutate(lambda _: dict(target_state), actor=actor, action="rollback", target=f"revision {to}")

    # ------------------------------------------------------------ queries

    def query(self, kind: str | None = None, name: str | None = None) -> ResourceList:
        """Resources of a kind (or all), or one by name (404 if absent)."""
        wanted = canonical_kind(kind) if kind else None
        items = [
            r
            for r in (self.head.resources if self.head else [])
            if (wanted is None or r.kind == wanted) and (name is None or r.name == name)
        ]
        if name is not None and not items:
            raise NotFound(f"{wanted or 'resource'} {name!r} does not exist", code="resource_not_found")
        return ResourceList(revision=self.revision, items=sorted(items, key=lambda r: (r.kind, r.name)))

    async def history(self, kind: str | None = None, name: str | None = None, limit: int = 50) -> HistoryList:
        """Revisions newest first; only those that touched ``kind``/``name`` when given."""
        wanted = canonical_kind(kind) if kind else None
        items: list[HistoryEntry] = []
        async for record in self.log.walk_back(limit=10_000):
            changes = [
                c for c in record.changes if (wanted is None or c.kind == wanted) and (name is None or c.name == name)
            ]
            if (wanted or name) and not changes:
                continue
            items.append(
                HistoryEntry(
                    revision=record.revision,
                    time=record.time,
                    actor=record.actor,
                    action=record.action,
                    changes=changes,
                )
            )
            if len(items) >= limit:
                break
        return HistoryList(items=items)

    # ------------------------------------------------------------ internals

    @staticmethod
    def _compile(state: State, revision: int) -> Any:
        resources = [resource_from_stored(r.kind, r.name, r.spec, r.source) for r in state.values()]
        return compile_config(resources, revision=revision)

    async def _mutate(
        self, mutate: Callable[[State], State], *, actor: str, action: Action, target: str
    ) -> ApplyResult:
        async with self._lock:
            for _ in range(5):
                head = self.head
                old = _state(head)
                new = mutate(old)
                changes = _diff(old, new)
                if not changes:
                    return ApplyResult(revision=self.revision, changes=[])
                revision = self.revision + 1
                routing = self._compile(new, revision)
                record = ConfigRecord(
                    revision=revision,
                    time=now(),
                    actor=actor,
                    action=action,
                    changes=changes,
                    resources=sorted(new.values(), key=lambda r: (r.kind, r.name)),
                    routing=routing,
                    # Read before the commit: this revision's own entry comes after it.
                    audit=await self.auditor.anchor() if self.auditor is not None else None,
                )
                try:
                    self.head = await self.log.commit(record)
                except RevisionConflict:
                    log.warning("revision %d was taken by another writer; retrying", revision)
                    await self.load()
                    continue
                await self._announce(record)
                return ApplyResult(revision=revision, changes=changes)
        raise ConfigError("could not commit: the config log kept moving (too many concurrent writers)")

    async def _announce(self, record: ConfigRecord) -> None:
        log.info(
            "revision %d by %s (%s): %s",
            record.revision,
            record.actor,
            record.action,
            ", ".join(f"{c.op} {c.kind} {c.name}" for c in record.changes),
        )
        for change in record.changes:
            event = ConfigChanged(
                revision=record.revision,
                op="delete" if change.op == "delete" else "upsert",
                kind=change.kind,
                name=change.name,
            )
            await self.state_nc.publish(
                CONFIG_EVENTS, _encoder.encode(event), headers={H.CONFIG_REVISION: str(record.revision)}
            )
        if self.auditor is not None:
            try:
                await self.auditor.append(
                    record.actor,
                    record.action,
                    _target(record.changes),
                    revision=record.revision,
                    details={"changes": len(record.changes)},
                    record=record_digest(record),
                )
            except Exception as exc:
                log.error("revision %d applied but not audited: %s", record.revision, exc)
                raise ModelbusError(
                    f"revision {record.revision} was applied, but appending to the audit log failed "
                    f"({type(exc).__name__}); see the config service log"
                ) from None

    async def _put_secret(self, name: str, value: str, actor: str) -> None:
        try:
            reply = await self.nc.request(
                SECRETS_PUT, _encoder.encode(SecretPut(name=name, value=value, actor=actor)), timeout=5
            )
        except Exception as exc:
            raise ConfigError(
                f"secret {name!r}: the secrets service did not accept it ({type(exc).__name__})"
            ) from None
        status = int((reply.headers or {}).get(H.STATUS, "0") or 0)
        if status != 200:
            err: ModelbusError = error_from_wire(status, reply.data)
            raise ConfigError(f"secret {name!r}: {err.message}")
        _secret_info.decode(reply.data)
        if self.auditor is not None:
            await self.auditor.append(actor, "secret.set", f"secret {name}")


def _refers_to(spec: Any, name: str) -> bool:
    """Whether a resource spec refers to stored secret ``name`` (``secret:NAME``, or a bare ``secretRef``)."""
    if isinstance(spec, dict):
        return any(
            (key in ("secretRef", "secret_ref") and value == name) or _refers_to(value, name)
            for key, value in spec.items()
        )
    if isinstance(spec, list):
        return any(_refers_to(item, name) for item in spec)
    return isinstance(spec, str) and spec == f"secret:{name}"


def _target(changes: Iterable[Change]) -> str:
    items = list(changes)
    if len(items) == 1:
        return f"{items[0].kind} {items[0].name}"
    return f"{len(items)} resources"
