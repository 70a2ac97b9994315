"""The gateway's API keys: validated here, stored by name in a JetStream KV bucket, audited.

The config service is the one writer of configuration state, so it owns the
bucket :data:`shared.subjects.GATEWAY_KEYS_BUCKET` (through its ``config-state``
connection) and serves the three admin subjects ``modelbus.v1.config.keys.*``,
which only the ``admin`` identity may call. It never sees a key: the CLI makes
the key and sends its SHA-256 (:mod:`shared.gateway_keys`).

Why a KV bucket: a watch gives every gateway replica the whole set and then
each change as it happens (a revocation reaches them in milliseconds, no
polling); ``create`` is atomic, so two ``create key NAME`` at once cannot both
win; a delete leaves a marker, so a watcher hears of it and ``modelbus up``
can tell a revoked default key from one never stored; history 1 means a
revoked key's hash is gone from the store with its delete marker; and it is
replicated like every other bucket (``MODELBUS_JS_REPLICAS``).

Expired keys stay listed (``status expired``) until deleted, so ``get keys``
shows why a client gets ``expired_api_key``; gateways refuse them by their
``expires`` time, which needs no write at expiry.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from services.config.audit import AuditLog
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.gateway_keys import (
    KeyCreateRequest,
    KeyCreateResult,
    KeyDeleteRequest,
    KeyInfo,
    KeyList,
    KeyListRequest,
    StoredKey,
    key_info,
    name_problem,
    namespace_problem,
    parse_duration,
    rfc3339,
    sha256_problem,
    stored_key_decoder,
    stored_key_encoder,
)
from shared.jetstream import Ensured, ensure_kv
from shared.routing import RoutingConfig
from shared.subjects import GATEWAY_KEYS_BUCKET

log = logging.getLogger("modelbus.config")

KEYS_BUCKET_CONFIG = KeyValueConfig(
    bucket=GATEWAY_KEYS_BUCKET,
    storage=StorageType.FILE,
    history=1,
    description="modelbus gateway API keys: name -> sha256 and binding (never a key)",
)


async def ensure_keys_bucket(nc: Client) -> tuple[KeyValue, Ensured]:
    """The keys bucket, created with (or brought to) ``MODELBUS_JS_REPLICAS`` replicas."""
    return await ensure_kv(nc.jetstream(), KEYS_BUCKET_CONFIG)


def resolve_binding(
    routing: RoutingConfig | None, agent: str | None, namespace: str | None
) -> tuple[str | None, str | None]:
    """``(agent, namespace)`` as stored: the agent's full name, checked against the configuration.

    ``--agent A --namespace NS`` looks ``A`` up in ``NS``. Raises
    :class:`InvalidRequest` naming the option for an unknown agent or namespace."""
    agents = routing.agents if routing is not None else {}
    if namespace is not None:
        problem = namespace_problem(namespace)
        if problem:
            raise InvalidRequest(f"--namespace {namespace[:70]!r}: {problem}", param="namespace")
    if agent is not None:
        if not agent or len(agent) > 200:
            raise InvalidRequest("--agent: expected name or namespace/name", param="agent")
        full = agent
        if namespace is not None:
            if "/" not in agent:
                full = f"{namespace}/{agent}"
            elif agent.split("/", 1)[0] != namespace:
                raise InvalidRequest(
                    f"--agent {agent!r} is not in --namespace {namespace!r}; give its name within the namespace",
                    param="agent",
                )
        if full not in agents:
            known = ", ".join(sorted(agents)[:20]) or "none"
            raise InvalidRequest(
                f"unknown agent {full!r} (config knows: {known})", code="agent_not_found", param="agent"
            )
        return full, namespace
    if namespace is not None and not any(a.startswith(f"{namespace}/") for a in agents):
        raise InvalidRequest(
            f"namespace {namespace!r} has no agents in the configuration; apply its agents first",
            code="namespace_not_found",
            param="namespace",
        )
    return None, namespace


class GatewayKeyStore:
    """Create, list and delete gateway keys in the bucket; every change is audited by name."""

    def __init__(
        self,
        kv: KeyValue,
        routing: Callable[[], RoutingConfig | None],
        auditor: AuditLog | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self._routing = routing
        self.auditor = auditor
        self._clock = clock

    async def _stored(self) -> list[StoredKey]:
        out: list[StoredKey] = []
        try:
            names = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return out
        for name in names:
            found = await self._get(name)
            if found is not None:
                out.append(found)
        return out

    async def _get(self, name: str) -> StoredKey | None:
        """The live key ``name``; ``None`` when there is none (never stored, or deleted)."""
        try:
            entry = await self.kv.get(name)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.operation is not None:
            return None
        return stored_key_decoder.decode(entry.value)

    async def _was_deleted(self, name: str) -> bool:
        """Whether ``name``'s newest entry is a delete marker (nats-py reports one as "not found"
        carrying the marker's operation)."""
        try:
            await self.kv.get(name)
        except nats.js.errors.KeyNotFoundError as exc:
            return getattr(exc, "op", None) in ("DEL", "PURGE")
        return False

    async def create(self, request: KeyCreateRequest) -> KeyCreateResult:
        """Validate and store a key; 409 for a live name (unless ``on_conflict`` says otherwise)."""
        problem = name_problem(request.name) or sha256_problem(request.sha256)
        if problem:
            raise InvalidRequest(f"key {request.name[:70]!r}: {problem}", param="name")
        agent, namespace = resolve_binding(self._routing(), request.agent, request.namespace)
        now = self._clock()
        expires = None
        if request.expires is not None:
            try:
                seconds = parse_duration(request.expires)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="expires") from None
            expires = rfc3339(dt.datetime.fromtimestamp(now + seconds, dt.UTC))
        existing = await self._get(request.name)
        if existing is not None and request.on_conflict != "replace":
            same = existing.sha256 == request.sha256
            if request.on_conflict == "keep":
                return KeyCreateResult(stored=False, active=same, key=key_info(existing, now))
            raise Conflict(
                f"key {request.name!r} exists; delete it first (`modelbus delete key {request.name}`) or pick "
                "another name",
                code="key_exists",
            )
        if existing is None and request.on_conflict == "keep" and await self._was_deleted(request.name):
            return KeyCreateResult(stored=False, active=False, revoked=True)
        for other in await self._stored():
            if other.sha256 == request.sha256 and other.name != request.name:
                raise Conflict(f"this key is already stored as {other.name!r}", code="key_exists")
        stored = StoredKey(
            name=request.name,
            sha256=request.sha256,
            created=rfc3339(dt.datetime.fromtimestamp(now, dt.UTC)),
            created_by=request.actor,
            agent=agent,
            namespace=namespace,
            expires=expires,
        )
        body = stored_key_encoder.encode(stored)
        if existing is None:
            try:
                await self.kv.create(request.name, body)
            except nats.js.errors.KeyWrongLastSequenceError:
                if request.on_conflict != "replace":
                    raise Conflict(f"key {request.name!r} exists", code="key_exists") from None
                await self.kv.put(request.name, body)
        else:
            await self.kv.put(request.name, body)
        if self.auditor is not None:
            details = {k: v for k, v in (("agent", agent), ("namespace", namespace), ("expires", expires)) if v}
            await self.auditor.append(
                request.actor, "gateway_key.create", f"gateway key {request.name}", details=details
            )
        log.info("gateway key %s stored by %s", request.name, request.actor)
        return KeyCreateResult(stored=True, active=True, key=key_info(stored, now))

    async def list(self, request: KeyListRequest) -> KeyList:
        """Every live key (or the one named), sorted by name; 404 for an unknown name."""
        now = self._clock()
        if request.name is not None:
            found = await self._get(request.name)
            if found is None:
                raise NotFound(f"no gateway key {request.name!r} (see `modelbus get keys`)", code="key_not_found")
            return KeyList(items=[key_info(found, now)])
        items = sorted((key_info(k, now) for k in await self._stored()), key=lambda i: i.name)
        return KeyList(items=items)

    async def delete(self, request: KeyDeleteRequest) -> KeyInfo:
        """Revoke key ``name`` (a delete marker every gateway's watch sees); 404 when there is none."""
        found = await self._get(request.name)
        if found is None:
            raise NotFound(f"no gateway key {request.name!r} (see `modelbus get keys`)", code="key_not_found")
        await self.kv.delete(request.name)
        if self.auditor is not None:
            await self.auditor.append(request.actor, "gateway_key.delete", f"gateway key {request.name}")
        log.info("gateway key %s deleted by %s", request.name, request.actor)
        return key_info(found, self._clock())
