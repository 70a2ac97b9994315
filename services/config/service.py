"""The config service process: admin subjects, boot configuration, router tracking.

Every admin subscriber checks the reply subject first (:class:`shared.bus.ReplyGuard`):
a request whose reply is not an inbox of an allowed requester (``_INBOX_admin.``,
or nats-py's ``_INBOX.`` without identities) gets no answer and has no effect, so
nobody can make the service publish an answer onto ``modelbus.v1.config.log``,
the audit stream or a ``$JS.API`` subject.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors
from faststream.exceptions import SkipMessage
from faststream.nats import NatsBroker, NatsMessage, NatsResponse
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType

from services.config.audit import AuditLog, AuditVerifier
from services.config.boot_env import endpoints_from_env
from services.config.documents import Parsed, load_documents
from services.config.formats import aurora_env_documents, byo_documents, convert
from services.config.gateway_keys import GatewayKeyStore, ensure_keys_bucket
from services.config.manager import ConfigManager
from services.config.resources import SecretValue, parse_native
from services.config.store import ConfigLog
from services.config.usage_stream import ensure_usage_stream
from services.config.usage_text_stream import ensure_usage_text_stream
from shared import headers as H
from shared import identities
from shared.admin import (
    ApplyRequest,
    AuditReport,
    DeleteRequest,
    HistoryQuery,
    ResourceQuery,
    RollbackRequest,
    RouterList,
    RouterStatus,
    WaitRequest,
    admin_encoder,
)
from shared.bus import ReplyGuard
from shared.errors import ConfigError, DeadlineExceeded, InvalidRequest, ModelbusError, NoRouteAvailable
from shared.gateway_keys import KeyCreateRequest, KeyDeleteRequest, KeyListRequest
from shared.jetstream import Ensured, StateKeeper, ensure_kv, ensure_replicas
from shared.routing import routing_encoder
from shared.subjects import (
    AUDIT_VERIFY,
    BREAKERS_BUCKET,
    BUDGETS_BUCKET,
    CONFIG_APPLY,
    CONFIG_DELETE,
    CONFIG_GET,
    CONFIG_HISTORY,
    CONFIG_KEYS_CREATE,
    CONFIG_KEYS_DELETE,
    CONFIG_KEYS_LIST,
    CONFIG_QUEUE,
    CONFIG_RESOURCES,
    CONFIG_ROLLBACK,
    CONFIG_ROUTERS,
    CONFIG_WAIT,
    RATE_LIMITS_BUCKET,
    ROUTER_REVISIONS,
    ROUTER_STATUS,
    RUNS_BUCKET,
)

log = logging.getLogger("modelbus.config")

EXAMPLE_CONFIG = Path(__file__).with_name("example.yaml")
T = TypeVar("T")

# ------------------------------------------------------------------ boot


def _parse_as(docs: list[dict[str, Any]], source: str | None = None) -> Parsed:
    parsed = Parsed()
    errors: list[str] = []
    for index, raw in enumerate(docs, start=1):
        try:
            converted = convert(index, raw)
            for native in converted.documents:
                item = parse_native(index, native, source=source or converted.source)
                if isinstance(item, SecretValue):
                    parsed.secrets.append(item)
                else:
                    parsed.resources.append(item)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))
    return parsed


def boot_defaults(env: Mapping[str, str], *, with_example: bool) -> Parsed:
    """Boot defaults: the built-in example (without ``--config``), vendor keys, AuroraSOC ``LLM_*``
    settings and the Aegis BYO variables, later layers overriding earlier ones."""
    layers: list[Parsed] = []
    if with_example:
        layers.append(
            _parse_as(load_documents(EXAMPLE_CONFIG.read_text(), source="built-in example"), "default:example")
        )
        layers.append(_parse_as(endpoints_from_env(env), "env:vendor-keys"))
    try:
        aurora = aurora_env_documents(env)
        layers.append(_parse_as(aurora.documents, "env:aurorasoc"))
        byo = byo_documents(env, where="environment")
        layers.append(_parse_as(byo.documents, "env:aegis-byo"))
    except ValueError as exc:
        raise ConfigError(f"environment: {exc}") from None
    merged: dict[tuple[str, str], Any] = {}
    for layer in layers:
        for res in layer.resources:
            merged[(res.kind, res.name)] = res
    return Parsed(resources=list(merged.values()))


async def boot(manager: ConfigManager, config_path: str | None, env: Mapping[str, str]) -> None:
    """Load the stored state, fill gaps with boot defaults, then apply the ``--config`` file."""
    await manager.load()
    await manager.audit_head_revision()  # a crash between a commit and its audit entry
    defaults = boot_defaults(env, with_example=not config_path)
    await manager.apply_parsed(defaults, actor="boot", action="boot", defaults=True)
    if config_path:
        text = Path(config_path).read_text()
        await manager.apply_text(text, actor="boot", source=config_path, action="boot")
    log.info("serving configuration revision %d", manager.revision)


RUNS_BUCKET_CONFIG = KeyValueConfig(
    bucket=RUNS_BUCKET,
    storage=StorageType.FILE,
    history=1,
    ttl=30 * 86400,
    description="modelbus run pins: run id -> config revision",
)


async def ensure_runs_bucket(nc: Client) -> Ensured:
    """The run-pinning bucket: entries carry their own TTL (per-message TTL); created with, or
    brought to, ``MODELBUS_JS_REPLICAS`` replicas. Routers read and write it but never create it."""
    _, ensured = await ensure_kv(nc.jetstream(), RUNS_BUCKET_CONFIG)
    return ensured


def config_state_keeper(nc: Client, config_log: ConfigLog, audit: AuditLog) -> StateKeeper:
    """Keeps the config service's streams in place after reconnects and lost servers.

    The config log, the audit stream, the run-pin and gateway-key buckets and the usage ledger are re-created if
    missing (an error is logged: on file storage with enough replicas this
    means the JetStream store was lost), and every one of them, the routers'
    breakers and budgets buckets included, is brought to ``MODELBUS_JS_REPLICAS``
    (the router's identity may not reconfigure streams). Start it once the
    service has set them up; stop it before closing ``nc``.
    """
    js = nc.jetstream()

    async def repair(reason: str) -> None:
        for what, ensured in (
            ("config log", await config_log.ensure()),
            ("audit stream", await audit.ensure_stream(recheck=True)),
            ("run-pin bucket", await ensure_runs_bucket(nc)),
            ("gateway key bucket", (await ensure_keys_bucket(nc))[1]),
            ("usage ledger", await ensure_usage_stream(nc)),
            ("text record stream", await ensure_usage_text_stream(nc)),
        ):
            if ensured is not None and ensured.created:
                log.error(
                    "the %s (%s) was missing (%s) and has been created again, empty: its earlier content is "
                    "lost unless a server with the old JetStream store comes back",
                    what,
                    ensured.info.config.name,
                    reason,
                )
        for bucket in (BREAKERS_BUCKET, BUDGETS_BUCKET, RATE_LIMITS_BUCKET):
            await ensure_replicas(js, f"KV_{bucket}")

    return StateKeeper(nc, "config-state", repair)


# ------------------------------------------------------------------ routers


async def gather_routers(nc: Client, *, quiet_s: float = 0.08, max_s: float = 0.5) -> list[RouterStatus]:
    """Ask every router for its status; collect replies until they go quiet."""
    decoder = msgspec.json.Decoder(RouterStatus)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    replies: dict[str, RouterStatus] = {}
    try:
        await nc.publish(ROUTER_STATUS, b"", reply=inbox)
        deadline = time.monotonic() + max_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=min(quiet_s, left))
            except nats.errors.TimeoutError:
                break
            try:
                status = decoder.decode(msg.data)
            except msgspec.MsgspecError:
                continue
            replies[status.router_id] = status
    finally:
        await sub.unsubscribe()
    return sorted(replies.values(), key=lambda s: s.router_id)


async def wait_for_routers(nc: Client, revision: int, timeout_s: float) -> list[RouterStatus]:
    """Return once every live router serves ``revision`` or later; raise naming the laggards."""
    decoder = msgspec.json.Decoder(RouterStatus)
    events = await nc.subscribe(ROUTER_REVISIONS)  # before asking, so no announcement is missed
    try:
        status = {s.router_id: s for s in await gather_routers(nc)}
        deadline = time.monotonic() + timeout_s
        while any(s.revision < revision for s in status.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                status = {s.router_id: s for s in await gather_routers(nc)}  # the dead ones drop out
                behind = [s for s in status.values() if s.revision < revision]
                if not behind:
                    break
                names = ", ".join(f"{s.router_id} at revision {s.revision}" for s in behind)
                raise DeadlineExceeded(f"routers not at revision {revision} after {timeout_s:g}s: {names}")
            try:
                msg = await events.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                continue
            try:
                update = decoder.decode(msg.data)
            except msgspec.MsgspecError:
                continue
            status[update.router_id] = update
        return sorted(status.values(), key=lambda s: s.router_id)
    finally:
        await events.unsubscribe()


# ------------------------------------------------------------------ admin subjects


def _reply(body: bytes) -> NatsResponse:
    return NatsResponse(body, headers={H.STATUS: "200"})


def _error(err: ModelbusError) -> NatsResponse:
    return NatsResponse(err.to_json(), headers={H.STATUS: str(err.http_status)})


async def _serve(
    body: bytes, decoder: msgspec.json.Decoder[T] | None, handler: Callable[[T], Awaitable[Any]]
) -> NatsResponse:
    """Decode, run, encode; every failure becomes an error reply, never silence."""
    try:
        request: Any = None
        if decoder is not None:
            try:
                request = decoder.decode(body or b"{}")
            except msgspec.MsgspecError as exc:
                raise InvalidRequest(f"malformed admin request: {exc}", code="invalid_admin_request") from None
        result = await handler(request)
        return _reply(result if isinstance(result, bytes) else admin_encoder.encode(result))
    except ModelbusError as err:
        return _error(err)
    except Exception:
        log.exception("admin request failed")
        return _error(ModelbusError("internal error in the config service"))


def register(broker: NatsBroker, holder: dict[str, Any]) -> ReplyGuard:
    """Admin subscribers of the config service; ``holder['manager']`` is set once booted.

    Returns the reply guard every subscriber checks first.
    """
    guard = ReplyGuard("config", identities.requester_inboxes("config"))

    def manager() -> ConfigManager:
        m: ConfigManager | None = holder.get("manager")
        if m is None:
            raise NoRouteAvailable("the config service is still starting")
        return m

    def subscriber(subject: str) -> Callable[[Callable[[NatsMessage], Awaitable[NatsResponse]]], Any]:
        def decorate(handler: Callable[[NatsMessage], Awaitable[NatsResponse]]) -> Any:
            @functools.wraps(handler)
            async def guarded(msg: NatsMessage) -> NatsResponse:
                if not guard.allows(msg.reply_to):
                    guard.refuse(subject, msg.reply_to)
                    raise SkipMessage  # FastStream then sends nothing, not even an empty reply
                return await handler(msg)

            return broker.subscriber(subject, queue=CONFIG_QUEUE, max_workers=8)(guarded)

        return decorate

    @subscriber(CONFIG_GET)
    async def get_routing(msg: NatsMessage) -> NatsResponse:
        """The current compiled routing configuration."""

        async def run(_: None) -> bytes:
            head = manager().head
            if head is None:
                raise NoRouteAvailable("no configuration yet")
            return routing_encoder.encode(head.routing)

        return await _serve(msg.body, None, run)

    @subscriber(CONFIG_APPLY)
    async def apply(msg: NatsMessage) -> NatsResponse:
        """Apply documents; the reply is the new revision and the changes."""
        return await _serve(
            msg.body,
            msgspec.json.Decoder(ApplyRequest),
            lambda r: manager().apply_text(r.documents, actor=r.actor, dry_run=r.dry_run, source=r.source),
        )

    @subscriber(CONFIG_RESOURCES)
    async def resources(msg: NatsMessage) -> NatsResponse:
        """List resources of a kind, or one by name."""

        async def run(q: ResourceQuery) -> Any:
            return manager().query(q.kind, q.name)

        return await _serve(msg.body, msgspec.json.Decoder(ResourceQuery), run)

    @subscriber(CONFIG_DELETE)
    async def delete(msg: NatsMessage) -> NatsResponse:
        """Delete one resource."""
        return await _serve(
            msg.body, msgspec.json.Decoder(DeleteRequest), lambda r: manager().delete(r.kind, r.name, actor=r.actor)
        )

    @subscriber(CONFIG_HISTORY)
    async def history(msg: NatsMessage) -> NatsResponse:
        """Revisions, newest first."""
        return await _serve(
            msg.body, msgspec.json.Decoder(HistoryQuery), lambda q: manager().history(q.kind, q.name, q.limit)
        )

    @subscriber(CONFIG_ROLLBACK)
    async def rollback(msg: NatsMessage) -> NatsResponse:
        """Make an old revision's resources current again."""
        return await _serve(
            msg.body, msgspec.json.Decoder(RollbackRequest), lambda r: manager().rollback(r.to, actor=r.actor)
        )

    @subscriber(CONFIG_WAIT)
    async def wait(msg: NatsMessage) -> NatsResponse:
        """Reply once every live router serves the revision (read-your-writes)."""

        async def run(r: WaitRequest) -> RouterList:
            nc: Client = broker.connection
            return RouterList(items=await wait_for_routers(nc, r.revision, r.timeout_ms / 1000))

        return await _serve(msg.body, msgspec.json.Decoder(WaitRequest), run)

    @subscriber(CONFIG_ROUTERS)
    async def routers(msg: NatsMessage) -> NatsResponse:
        """Live routers and the revision each serves."""

        async def run(_: None) -> RouterList:
            return RouterList(items=await gather_routers(broker.connection))

        return await _serve(msg.body, None, run)

    def keys() -> GatewayKeyStore:
        store: GatewayKeyStore | None = holder.get("keys")
        if store is None:
            raise NoRouteAvailable("the config service is still starting")
        return store

    @subscriber(CONFIG_KEYS_CREATE)
    async def create_key(msg: NatsMessage) -> NatsResponse:
        """Store a gateway API key's hash (the key itself never reaches the service)."""
        return await _serve(msg.body, msgspec.json.Decoder(KeyCreateRequest), lambda r: keys().create(r))

    @subscriber(CONFIG_KEYS_LIST)
    async def list_keys(msg: NatsMessage) -> NatsResponse:
        """The gateway keys: names, bindings, times and status, never a hash."""
        return await _serve(msg.body, msgspec.json.Decoder(KeyListRequest), lambda r: keys().list(r))

    @subscriber(CONFIG_KEYS_DELETE)
    async def delete_key(msg: NatsMessage) -> NatsResponse:
        """Revoke a gateway API key."""
        return await _serve(msg.body, msgspec.json.Decoder(KeyDeleteRequest), lambda r: keys().delete(r))

    @subscriber(AUDIT_VERIFY)
    async def audit_verify(msg: NatsMessage) -> NatsResponse:
        """Walk the audit chain and report the first broken link."""

        async def run(_: None) -> AuditReport:
            verifier: AuditVerifier | None = holder.get("audit")
            if verifier is None:
                raise NoRouteAvailable("the config service is still starting")
            return await verifier.verify()

        return await _serve(msg.body, None, run)

    return guard


def service_env() -> Mapping[str, str]:
    """The environment boot defaults are read from."""
    return os.environ
