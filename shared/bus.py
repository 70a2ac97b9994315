"""NATS plumbing every service shares: connections, hot-path serving, replies.

Two ways of consuming are used on purpose:

* **Control plane** (config, secrets): FastStream subscribers with
  ``max_workers``, msgspec serialisation and generated AsyncAPI documents.
* **Hot path** (the router's ``llm.v1.chat.completions`` and the provider
  subjects): :class:`RequestServer`, a raw nats-py queue subscription on the
  FastStream broker's own connection with bounded concurrency. On this machine
  a FastStream hop with tracing costs ~1 ms against ~0.4 ms for nats-py
  (shared/guide notes), and the hot path has two hops, so the raw path is
  where the latency budget goes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats
from fast_depends.msgspec import MsgSpecSerializer
from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import headers as H
from shared.errors import ModelbusError
from shared.identities import STATE_INBOX_ENV, STATE_PASSWORD_ENV, STATE_USER_ENV
from shared.telemetry import TraceMiddleware

log = logging.getLogger(__name__)

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

Handler = Callable[[Msg], Awaitable[None]]


def nats_url(explicit: str | None = None) -> str:
    """The NATS URL to use: explicit argument, then ``NATS_URL``, then localhost."""
    return explicit or os.environ.get("NATS_URL") or DEFAULT_NATS_URL


async def _report_error(err: Exception) -> None:
    # Permission violations arrive only here; a denied publish looks like a
    # timeout to the caller, so the real reason must be surfaced in the log.
    log.error("nats: %s", err)


def identity_from_env() -> dict[str, str]:
    """``user``/``password``/``inbox_prefix`` from ``NATS_USER``, ``NATS_PASSWORD`` and
    ``MODELBUS_INBOX_PREFIX``, for connecting as a broker identity (see :mod:`shared.identities`)."""
    out: dict[str, str] = {}
    user, password = os.environ.get("NATS_USER"), os.environ.get("NATS_PASSWORD")
    if user and password:
        out["user"], out["password"] = user, password
    prefix = os.environ.get("MODELBUS_INBOX_PREFIX")
    if prefix:
        out["inbox_prefix"] = prefix
    return out


def make_broker(service: str, url: str | None = None, **kwargs: Any) -> NatsBroker:
    """A FastStream NATS broker for a service, with msgspec and our tracing middleware."""
    identity = identity_from_env()
    if "user" in identity:
        kwargs.setdefault("security", SASLPlaintext(username=identity["user"], password=identity["password"]))
    if "inbox_prefix" in identity:
        kwargs.setdefault("inbox_prefix", identity["inbox_prefix"])
    return NatsBroker(
        nats_url(url),
        name=f"modelbus-{service}",
        serializer=MsgSpecSerializer(),
        middlewares=[TraceMiddleware],
        error_cb=_report_error,
        logger=logging.getLogger("modelbus.faststream"),
        log_level=logging.DEBUG,  # FastStream's per-subscriber start-up lines
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        **kwargs,
    )


def state_identity_from_env() -> dict[str, str] | None:
    """The state identity (``MODELBUS_STATE_USER``/``_PASSWORD``/``_INBOX_PREFIX``), or ``None``.

    A service that answers requests *and* writes JetStream state (router, config,
    secrets) keeps the two apart on two broker identities: a reply subject is
    chosen by the requester, so the identity that publishes replies may publish
    nothing but replies (and the subjects it calls), and only the state identity
    may touch streams and buckets. See docs/security.md.
    """
    user, password = os.environ.get(STATE_USER_ENV), os.environ.get(STATE_PASSWORD_ENV)
    if not (user and password):
        return None
    out = {"user": user, "password": password}
    prefix = os.environ.get(STATE_INBOX_ENV)
    if prefix:
        out["inbox_prefix"] = prefix
    return out


async def connect_state(service: str, fallback: Client, url: str | None = None) -> Client:
    """The connection a service uses for JetStream (streams, KV buckets, state events).

    With a state identity in the environment this is a second connection as that
    identity; without one (``--insecure``, tests without identities) it is
    ``fallback``, the serving connection. Close it with :func:`close_state`.
    """
    identity = state_identity_from_env()
    if identity is None:
        return fallback
    return await nats.connect(
        nats_url(url),
        name=f"modelbus-{service}-state",
        error_cb=_report_error,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        **identity,
    )


async def close_state(state: Client, fallback: Client) -> None:
    """Drain a connection from :func:`connect_state` unless it is the serving one."""
    if state is not fallback and not state.is_closed:
        try:
            await state.drain()
        except Exception:  # already closing or disconnected: nothing left to flush
            await state.close()


INSECURE_INBOX = "_INBOX."
"""nats-py's default inbox prefix, accepted as a reply subject only without identities."""


class ReplyGuard:
    """Which reply subjects a service answers on: its requesters' inbox prefixes only.

    A reply subject is whatever the requester wrote, so a service that published
    to it blindly could be made to publish its answer to any subject it may
    publish to (``$JS.API.STREAM.PURGE...``, a KV key, another service's
    subject). The broker is the first line (serving identities may publish only
    to inboxes, see :mod:`shared.identities`); this is the second: anything else
    is refused with a warning and no answer. Without identities (``--insecure``)
    nats-py's default ``_INBOX.`` is accepted too.
    """

    def __init__(self, service: str, prefixes: tuple[str, ...], *, secure: bool | None = None) -> None:
        if secure is None:
            secure = "user" in identity_from_env()
        allowed = tuple(p if p.endswith(".") else p + "." for p in prefixes)
        self.service = service
        self.prefixes = allowed if secure else (*allowed, INSECURE_INBOX)
        self.refused = 0
        self._last_warning = -math.inf

    def allows(self, reply: str | None) -> bool:
        """Whether ``reply`` is an inbox of one of this service's requesters."""
        return bool(reply) and reply.startswith(self.prefixes)  # type: ignore[union-attr]

    def refuse(self, subject: str, reply: str | None) -> None:
        """Count and log (at most every 10 s) a request whose reply subject is refused."""
        self.refused += 1
        now = asyncio.get_running_loop().time() if _has_loop() else 0.0
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning(
                "%s: refused a request on %s with reply subject %r: not an inbox of an allowed requester "
                "(%s); no answer sent (%d refused so far)",
                self.service,
                subject,
                (reply or "")[:120],
                ", ".join(self.prefixes),
                self.refused,
            )


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def connect(name: str, url: str | None = None, **kwargs: Any) -> Client:
    """A plain nats-py connection, for clients and tools (identity from the environment
    unless given)."""
    for key, value in identity_from_env().items():
        kwargs.setdefault(key, value)
    return await nats.connect(
        nats_url(url),
        name=name,
        error_cb=_report_error,
        max_reconnect_attempts=kwargs.pop("max_reconnect_attempts", 3),
        **kwargs,
    )


class RequestServer:
    """Serve a subject with a queue group and at most ``max_inflight`` handlers at once.

    The handler owns replying. Any exception it lets escape is logged and
    swallowed so the subscription, and the worker, survive bad input. When
    ``max_inflight`` handlers are running, the subscription callback waits,
    which leaves further messages queued in the client (back-pressure) rather
    than spawning unbounded tasks.
    """

    def __init__(
        self,
        nc: Client,
        subject: str,
        handler: Handler,
        *,
        queue: str = "",
        max_inflight: int = 256,
    ) -> None:
        self._nc = nc
        self.subject = subject
        self.queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe; returns once the server has the subscription."""
        self._sub = await self._nc.subscribe(
            self.subject,
            queue=self.queue,
            cb=self._on_message,
            pending_msgs_limit=65_536,
            pending_bytes_limit=256 * 1024 * 1024,
        )
        await self._nc.flush()

    async def _on_message(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception("unhandled error serving %s", self.subject)
        finally:
            self._slots.release()

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return len(self._tasks)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking messages, then let in-flight handlers finish (up to ``grace_s``)."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()


def error_headers(err: ModelbusError, request_id: str | None = None) -> dict[str, str]:
    """Headers of an error reply."""
    out = {H.STATUS: str(err.http_status)}
    if err.retry_after is not None:
        seconds = max(0.0, err.retry_after)
        out[H.RETRY_AFTER] = str(math.ceil(seconds))  # never tell a client to come back early
        out[H.RETRY_AFTER_MS] = str(round(seconds * 1000))
    if request_id:
        out[H.REQUEST_ID] = request_id
    return out


async def reply_error(
    nc: Client,
    reply: str,
    err: ModelbusError,
    *,
    request_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Send an error reply: status header and JSON error envelope."""
    hdrs = error_headers(err, request_id)
    if extra:
        hdrs.update(extra)
    await nc.publish(reply, err.to_json(), headers=hdrs)


def retry_after_from(headers: Mapping[str, str] | None) -> float | None:
    """The retry hint of a reply in seconds: the exact millisecond header, else ``Retry-After``."""
    if not headers:
        return None
    precise = headers.get(H.RETRY_AFTER_MS)
    if precise is not None:
        try:
            return max(0.0, float(precise) / 1000)
        except ValueError:
            pass
    raw = headers.get(H.RETRY_AFTER)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def run(main: Awaitable[None]) -> None:
    """Run a service's main coroutine, on uvloop when it is installed.

    uvloop takes ~0.1 ms off every NATS hop on this machine (shared/guide).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(main)  # type: ignore[arg-type]
        return
    uvloop.run(main)  # type: ignore[arg-type]
