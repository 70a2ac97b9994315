"""JetStream streams and buckets that stay in place: replicas, creation and self-healing.

Every stream and key-value bucket modelbus keeps (the config log, the audit
log, the run-pin, breakers, budgets and secrets buckets) is created through
:func:`ensure_stream` or :func:`ensure_kv`, with the replica count of
:data:`REPLICAS_ENV` (``MODELBUS_JS_REPLICAS``, 1 to 5, default 1). On a NATS
cluster 3 replicas keep every stream available while any one node is down; a
stream that already exists with another count is updated to it (one log line
per update), nothing else about it is changed here.

A stream can still disappear: a memory-storage bucket (the breakers) is lost
with its server, a wiped JetStream store loses everything. A KV watcher or an
ordered consumer on a stream that was deleted and created again restarts at
the old sequence and silently misses the new stream's messages. So a service
runs a :class:`StateKeeper` per thing it keeps: it calls the owner's repair
coroutine after every reconnect of the connection, when the owner saw a
"stream not found" (:meth:`StateKeeper.poke`) and every few seconds, retrying
with backoff until it succeeds. Repairs re-create what is missing and
re-open watches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig, StreamInfo
from nats.js.errors import APIError, BucketNotFoundError, NoStreamResponseError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("modelbus.jetstream")

REPLICAS_ENV = "MODELBUS_JS_REPLICAS"
"""Replicas of every stream and bucket modelbus creates: 1 (one server) to 5."""
DEFAULT_REPLICAS = 1
MAX_REPLICAS = 5
"""nats-server's own limit."""

STREAM_NOT_FOUND = 10059
STREAM_NAME_IN_USE = 10058
REPLICAS_NOT_SUPPORTED = 10074
"""``replicas > 1 not supported in non-clustered mode``."""
INSUFFICIENT_RESOURCES = 10023

CHECK_EVERY_S = 5.0
"""How often a :class:`StateKeeper` checks that its streams exist while nothing happens."""
POLL_S = 0.1
"""How often it looks at its connection's reconnect count (a dictionary read)."""
RETRY_MIN_S = 0.25
RETRY_MAX_S = 5.0


class InvalidReplicas(ValueError):
    """``MODELBUS_JS_REPLICAS`` is not a whole number from 1 to 5."""


class JetStreamSetupError(RuntimeError):
    """A stream or bucket could not be created or updated as configured (the message says why)."""


def js_replicas(env: Mapping[str, str] | None = None) -> int:
    """The replica count from ``MODELBUS_JS_REPLICAS`` (default 1); :class:`InvalidReplicas` names the value."""
    raw = (os.environ if env is None else env).get(REPLICAS_ENV, "").strip()
    if not raw:
        return DEFAULT_REPLICAS
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_REPLICAS:
        raise InvalidReplicas(
            f"{REPLICAS_ENV}={raw[:40]!r}: must be a whole number from 1 to {MAX_REPLICAS} "
            "(1 for a single nats-server, 3 for a 3-node cluster)"
        )
    return int(raw)


@dataclass(frozen=True, slots=True)
class Ensured:
    """What :func:`ensure_stream` found or did."""

    info: StreamInfo
    created: bool = False
    """The stream did not exist and was created now."""
    updated: bool = False
    """Its replica count was changed now."""


def stream_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says a stream does not exist (or nobody stores its subject), as opposed
    to a missing key, a timeout or a refusal."""
    if isinstance(exc, BucketNotFoundError):
        return True
    if isinstance(exc, APIError) and getattr(exc, "err_code", None) == STREAM_NOT_FOUND:
        return True
    return isinstance(exc, nats.errors.NoRespondersError | NoStreamResponseError)


def _setup_error(name: str, replicas: int, what: str, exc: APIError) -> JetStreamSetupError:
    hint = ""
    if exc.err_code == REPLICAS_NOT_SUPPORTED:
        hint = f"; this NATS server is not clustered: set {REPLICAS_ENV}=1, or run a cluster"
    elif exc.err_code == INSUFFICIENT_RESOURCES:
        hint = f"; the cluster has fewer than {replicas} JetStream servers up, or no room: lower {REPLICAS_ENV}"
    return JetStreamSetupError(
        f"cannot {what} JetStream stream {name} with {replicas} replica(s): {exc.description}{hint}"
    )


INFO_PATIENCE_S = 30.0
"""How long a stream lookup keeps asking while JetStream does not answer (a cluster that has just
started, or is electing a stream leader after a lost node, answers nothing for several seconds)."""


async def _info(js: JetStreamContext, name: str, *, patience_s: float = INFO_PATIENCE_S) -> StreamInfo | None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience_s
    while True:
        try:
            return await js.stream_info(name)
        except NotFoundError as exc:
            if getattr(exc, "err_code", None) not in (None, STREAM_NOT_FOUND):
                raise
            return None
        except nats.errors.TimeoutError:
            if loop.time() >= give_up:
                raise
            log.warning("JetStream did not answer about stream %s yet (leader election?); asking again", name)
            await asyncio.sleep(0.25)


async def _match_replicas(
    js: JetStreamContext, info: StreamInfo, replicas: int, *, update: bool
) -> tuple[StreamInfo, bool]:
    name = info.config.name or "?"
    current = info.config.num_replicas or 1
    if current == replicas:
        return info, False
    if not update:
        log.warning(
            "stream %s has %d replica(s), %s=%d; this identity may not change it (the config service does)",
            name,
            current,
            REPLICAS_ENV,
            replicas,
        )
        return info, False
    config = dataclasses.replace(info.config, num_replicas=replicas)
    try:
        updated = await js.update_stream(config)
    except APIError as exc:
        raise _setup_error(name, replicas, f"change the replicas ({current}) of", exc) from None
    log.info("stream %s: replicas %d -> %d (%s)", name, current, replicas, REPLICAS_ENV)
    return updated, True


async def ensure_stream(
    js: JetStreamContext, config: StreamConfig, *, replicas: int | None = None, update: bool = True
) -> Ensured:
    """Create ``config``'s stream with ``replicas`` (default :func:`js_replicas`) if it is absent;
    otherwise bring the existing one to that replica count (with ``update``) and leave the rest of
    its configuration as it is. Concurrent creators are fine: the loser uses the winner's stream."""
    want = js_replicas() if replicas is None else replicas
    name = config.name or ""
    info = await _info(js, name)
    if info is None:
        try:
            created = await js.add_stream(dataclasses.replace(config, num_replicas=want))
            return Ensured(created, created=True)
        except APIError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise _setup_error(name, want, "create", exc) from None
        info = await js.stream_info(name)  # another process created it first
    info, changed = await _match_replicas(js, info, want, update=update)
    return Ensured(info, updated=changed)


async def ensure_kv(
    js: JetStreamContext, config: KeyValueConfig, *, replicas: int | None = None, update: bool = True
) -> tuple[KeyValue, Ensured]:
    """:func:`ensure_stream` for a key-value bucket (its stream is ``KV_<bucket>``); the open bucket."""
    want = js_replicas() if replicas is None else replicas
    name = f"KV_{config.bucket}"
    info = await _info(js, name)
    created = False
    if info is None:
        try:
            await js.create_key_value(config=dataclasses.replace(config, replicas=want))
            created = True
        except APIError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise _setup_error(name, want, "create", exc) from None
        info = await js.stream_info(name)
    info, changed = (info, False) if created else await _match_replicas(js, info, want, update=update)
    return await js.key_value(config.bucket), Ensured(info, created=created, updated=changed)


async def ensure_replicas(js: JetStreamContext, stream: str, *, replicas: int | None = None) -> StreamInfo | None:
    """Bring an existing stream to ``replicas`` (default :func:`js_replicas`); ``None`` if it does not exist.

    For streams another service creates (the config service migrates the
    routers' buckets, whose identity may not reconfigure them)."""
    want = js_replicas() if replicas is None else replicas
    info = await _info(js, stream)
    if info is None:
        return None
    return (await _match_replicas(js, info, want, update=True))[0]


async def replica_status(js: JetStreamContext, stream: str) -> tuple[int, str | None, int]:
    """``(replicas configured, current leader or None, replicas current)`` of a stream, for checks and tests."""
    info = await js.stream_info(stream)
    cluster = info.cluster
    leader = cluster.leader if cluster is not None else None
    peers = [p for p in (cluster.replicas or []) if p.current and not p.offline] if cluster is not None else []
    return info.config.num_replicas or 1, leader, len(peers) + (1 if leader else 0)


# ------------------------------------------------------------------ self-healing

Repair = Callable[[str], Awaitable[None]]
"""A keeper's repair: called with the reason (:data:`REASONS`); raises to be retried later."""
REASONS = ("reconnected", "missing", "check")
"""Why a repair runs, strongest first: the connection reconnected (watches must be
re-opened), the owner saw its stream missing, or the periodic check."""


class StateKeeper:
    """Runs one repair coroutine whenever the streams it keeps may be gone.

    After every reconnect of ``nc`` (read from nats-py's reconnect counter, so
    no callback has to be wired through), after :meth:`poke`, and every
    ``check_every_s``. A repair that fails (JetStream still electing leaders,
    the server not back yet) is retried with backoff, keeping the strongest
    reason seen, until it succeeds; failures are logged once per streak.
    """

    def __init__(
        self,
        nc: Client,
        name: str,
        repair: Repair,
        *,
        check_every_s: float = CHECK_EVERY_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.nc = nc
        self.name = name
        self._repair = repair
        self._check_every_s = check_every_s
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._pending: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.repairs = 0
        """Repairs that ran to completion (any reason), for tests and status."""
        self.healed = asyncio.Event()
        """Set after each successful repair whose reason was not the periodic check."""

    def start(self) -> None:
        """Start watching (the owner has already set everything up once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"keep-{self.name}")

    def poke(self, reason: str = "missing") -> None:
        """Ask for a repair soon: the owner saw its stream missing or unanswered."""
        self._note(reason)
        self._wake.set()

    async def stop(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _note(self, reason: str) -> None:
        if self._pending is None or REASONS.index(reason) < REASONS.index(self._pending):
            self._pending = reason

    def _reconnects(self) -> int:
        return int(self.nc.stats.get("reconnects", 0))

    async def _run(self) -> None:
        seen = self._reconnects()
        next_check = time.monotonic() + self._check_every_s
        retry_at: float | None = None
        backoff = RETRY_MIN_S
        failing = False
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            if self._reconnects() != seen:
                seen = self._reconnects()
                self._note("reconnected")
                retry_at, backoff = None, RETRY_MIN_S  # a new connection: try at once
            if now >= next_check:
                self._note("check")
            if self._pending is None or not self.nc.is_connected:
                continue
            if retry_at is not None and now < retry_at:
                continue
            reason = self._pending
            self._pending = None
            try:
                await self._repair(reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note(reason)
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, RETRY_MAX_S)
                if not failing:
                    log.warning(
                        "%s: repair after %s failed, retrying: %s: %s", self.name, reason, type(exc).__name__, exc
                    )
                failing = True
                continue
            if failing:
                log.info("%s: repaired after %s", self.name, reason)
            failing, retry_at, backoff = False, None, RETRY_MIN_S
            next_check = time.monotonic() + self._check_every_s
            self.repairs += 1
            if reason != "check":
                self.healed.set()
