"""Follow the routing configuration, for ``GET /v1/models`` and the default deadline.

``GET /v1/models`` lists what the caller's key may use: everything (aliases,
endpoints with a default model, agents) for an unbound key, its agent for an
agent-bound key, its namespace's agents for a namespace-bound one.

The gateway holds no routing logic; it reads the configuration only to say what
may be asked for and how long a request may take by default. It follows the
JetStream stream :data:`shared.subjects.CONFIG_STREAM` exactly as a router does,
with the same :class:`shared.config_stream.ConfigStream`: an ordered consumer from the newest record, which holds the
whole state, so the current revision comes first and every later one follows
at once; after a reconnect, or when the stream was made anew (a lost store),
it follows afresh from the newest record (:class:`shared.jetstream.StateKeeper`).
Unlike a router it does not wait for the stream at start: it keeps looking in
the background and ``/readyz`` says 503 until a revision is known.

JetStream API subjects used (the read permissions a router's state identity has
on that stream): ``$JS.API.STREAM.INFO.MODELBUS_CONFIG``,
``$JS.API.CONSUMER.CREATE.MODELBUS_CONFIG[.>]``, ``$JS.API.CONSUMER.DELETE.MODELBUS_CONFIG.>``,
flow-control replies on ``$JS.FC.MODELBUS_CONFIG.>``, deliveries on the gateway's inbox.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.config_stream import ConfigStream
from shared.routing import RoutingConfig
from shared.subjects import CONFIG_STREAM

log = logging.getLogger("modelbus.gateway")

MAX_SCOPED = 4096
"""Bound keys' model lists kept per revision (beyond it, built per request: still no I/O)."""
LOOK_EVERY_S = 0.25
"""How often the gateway looks for a config stream that does not exist yet."""


class _Record(msgspec.Struct, kw_only=True, frozen=True):
    """The part of a config record (``shared.admin.ConfigRecord``) the gateway reads."""

    revision: int
    time: str = ""
    routing: RoutingConfig


class _Model(msgspec.Struct, kw_only=True, frozen=True):
    """One entry of OpenAI's model list (https://platform.openai.com/docs/api-reference/models/object)."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "modelbus"


class _ModelList(msgspec.Struct, kw_only=True, frozen=True):
    object: str = "list"
    data: list[_Model]


_record_decoder = msgspec.json.Decoder(_Record)
_encoder = msgspec.json.Encoder()


def model_ids(routing: RoutingConfig) -> list[str]:
    """What a client may name, in order: aliases, endpoints with a default model (each is a
    valid ``model``), then agents (named with ``x-modelbus-agent``); each group sorted, each id once."""
    ids = sorted(routing.aliases)
    ids += sorted(name for name, ep in routing.endpoints.items() if ep.default_model)
    ids += sorted(routing.agents)
    return list(dict.fromkeys(ids))


def scoped_ids(routing: RoutingConfig, agent: str | None, namespace: str | None) -> list[str]:
    """What a bound key may use: its agent (when config knows it), else its namespace's agents, sorted."""
    if agent is not None:
        return [agent] if agent in routing.agents else []
    prefix = f"{namespace}/"
    return sorted(name for name in routing.agents if name.startswith(prefix))


def models_body(routing: RoutingConfig, created: int, ids: list[str] | None = None) -> bytes:
    """The body of ``GET /v1/models`` for one revision (``ids``: a bound key's, else everything)."""
    listed = model_ids(routing) if ids is None else ids
    return _encoder.encode(_ModelList(data=[_Model(id=i, created=created) for i in listed]))


def _epoch(rfc3339: str) -> int:
    try:
        return int(dt.datetime.fromisoformat(rfc3339).timestamp())
    except ValueError:
        return 0


class ConfigFollower:
    """The newest routing configuration, and the model lists built from it: the whole one once per
    revision, a bound key's once per revision and binding (:meth:`models_for`)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.routing: RoutingConfig | None = None
        """The newest configuration (``None`` until one is known)."""
        self.models: bytes = models_body(RoutingConfig(revision=0, endpoints={}, aliases={}), 0)
        """The ``GET /v1/models`` body of :attr:`routing`."""
        self._created = 0
        self._scoped: dict[tuple[str | None, str | None], bytes] = {}
        """Bound keys' model lists of :attr:`routing`, by (agent, namespace); replaced with each revision."""
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._restart = False
        self.stream = ConfigStream(nc, "gateway config follower", self._on_record, self._remade)
        self.keeper = self.stream.keeper

    @property
    def revision(self) -> int | None:
        """The revision known, or ``None``."""
        return self.routing.revision if self.routing is not None else None

    def start(self) -> None:
        """Start following in the background (the stream may not exist yet)."""
        self._task = asyncio.create_task(self._begin(), name="gateway-config-follower")

    async def wait_first(self, timeout_s: float) -> bool:
        """Wait until a revision is known; whether one is."""
        try:
            await asyncio.wait_for(self._first.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _begin(self) -> None:
        waited = False
        while True:
            try:
                await self.stream.look()
                await self.stream.follow()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not there yet, or JetStream not answering yet
                if not waited:
                    log.info("waiting for the config stream %s (%s)", CONFIG_STREAM, type(exc).__name__)
                    waited = True
                await asyncio.sleep(LOOK_EVERY_S)
        self.keeper.start()

    def _remade(self) -> None:
        self._restart = True

    async def _on_record(self, msg: Msg) -> None:
        try:
            record = _record_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            log.exception("ignoring an unreadable config record")
            return
        current = self.routing
        if current is None or record.routing.revision > current.revision or self._restart:
            self._restart = False
            self._created = _epoch(record.time)
            self.models = models_body(record.routing, self._created)
            self._scoped = {}
            self.routing = record.routing  # one assignment: readers never see a half-built state
            self._first.set()
            log.info("configuration at revision %d", record.routing.revision)

    def models_for(self, agent: str | None, namespace: str | None) -> bytes:
        """The ``GET /v1/models`` body for a key bound to ``agent`` or ``namespace`` (neither: :attr:`models`),
        built once per revision and binding."""
        if agent is None and namespace is None:
            return self.models
        found = self._scoped.get((agent, namespace))
        if found is None:
            routing = self.routing or RoutingConfig(revision=0, endpoints={}, aliases={})
            found = models_body(routing, self._created, scoped_ids(routing, agent, namespace))
            if len(self._scoped) < MAX_SCOPED:
                self._scoped[(agent, namespace)] = found
        return found

    async def stop(self) -> None:
        await self.stream.stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
