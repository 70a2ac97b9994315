"""NATS plumbing every service shares: connections, hot-path serving, replies.

Two ways of consuming are used on purpose:

* **Control plane** (config, secrets): FastStream subscribers with
  ``max_workers``, msgspec serialisation and generated AsyncAPI documents.
* **Hot path** (the router's ``llm.v1.chat.completions`` and the provider
  subjects): :class:`RequestServer`, a raw nats-py queue subscription on the
  FastStream broker's own connection with bounded concurrency. On this machine
  a FastStream hop with tracing costs ~1 ms against ~0.4 ms for nats-py
  (docs/architecture.md, "Why the hot path is raw nats-py"), and the hot path has two hops, so the raw path is
  where the latency budget goes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

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
NATS_URL_ENV = "NATS_URL"
URL_SCHEMES = ("nats", "tls", "ws", "wss")
"""Schemes nats-py speaks; a URL without one is ``nats://``. WebSocket and TCP URLs cannot be mixed."""
DEFAULT_PORT = 4222

RECONNECT_WAIT_S = 0.25
"""Pause before trying the same server again. nats-py moves on to the next server of
the list at once, so a lost cluster node costs one reconnect, and a restarted single
server is back within this long of accepting connections."""
PING_INTERVAL_S = 5
"""Client pings: a connection whose server stops answering (a half-open TCP connection,
a partition) is given up after ``MAX_OUTSTANDING_PINGS`` unanswered pings (10-15 s).
A killed or restarted server closes the socket and is noticed at once."""
MAX_OUTSTANDING_PINGS = 2
TOOL_RECONNECT_ATTEMPTS = 3
"""Attempts per server of a tool's connection (:func:`connect`), after which it gives up."""

Handler = Callable[[Msg], Awaitable[None]]


class InvalidNatsUrl(ValueError):
    """A NATS URL (list) that cannot be used; the message names the bad entry and where it came from."""


def _redact(entry: str) -> str:
    """``entry`` with any ``user:password@`` replaced, for error messages."""
    scheme, sep, rest = entry.partition("://")
    if not sep:
        scheme, rest = "", entry
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _check_url(entry: str, where: str) -> str:
    """One server URL, normalised to ``scheme://host:port``; :class:`InvalidNatsUrl` if unusable."""
    shown = _redact(entry)
    text = entry if "://" in entry else f"nats://{entry}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidNatsUrl(f"{where}: {shown!r} is not a valid NATS URL ({exc})") from None
    if parts.scheme not in URL_SCHEMES:
        raise InvalidNatsUrl(
            f"{where}: {shown!r} has scheme {parts.scheme!r}; use one of {', '.join(s + '://' for s in URL_SCHEMES)}"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidNatsUrl(
            f"{where}: {shown!r} carries credentials in the URL, where logs and process lists would show "
            "them; give them as NATS_USER/NATS_PASSWORD or a credentials file (--creds) instead"
        )
    if not parts.hostname:
        raise InvalidNatsUrl(f"{where}: {shown!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidNatsUrl(f"{where}: {shown!r} has a path or query; a NATS URL is scheme://host:port")
    if port == 0:
        raise InvalidNatsUrl(f"{where}: {shown!r}: port 0 is not a server port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None and parts.scheme in ("ws", "wss"):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port or DEFAULT_PORT}"


def server_urls(explicit: str | None = None) -> list[str]:
    """The NATS servers to use: ``explicit`` (e.g. ``--nats-url``), then ``NATS_URL``, then localhost.

    Either is one URL or a comma-separated list of them (``a,b,c``; spaces around
    the commas are ignored), the servers of one cluster: the client connects to
    one of them and fails over to the others. ``nats://`` may be left out and the
    port defaults to 4222, so ``10.0.0.5,10.0.0.6:4223`` works. Every entry is
    checked; :class:`InvalidNatsUrl` names the first bad one (without any
    credentials it held, which are refused: use ``NATS_USER``/``NATS_PASSWORD``).
    Duplicates are dropped, order is kept.
    """
    if explicit is not None and explicit.strip():
        raw, where = explicit, "the NATS URL"
    elif os.environ.get(NATS_URL_ENV, "").strip():
        raw, where = os.environ[NATS_URL_ENV], NATS_URL_ENV
    else:
        return [DEFAULT_NATS_URL]
    entries = [e.strip() for e in raw.split(",")]
    if entries and not entries[-1] and len(entries) > 1:
        entries.pop()  # a trailing comma is harmless
    out: list[str] = []
    for number, entry in enumerate(entries, start=1):
        label = f"{where}, server {number} of {len(entries)}" if len(entries) > 1 else where
        if not entry:
            raise InvalidNatsUrl(f"{label}: empty entry in {_redact_list(raw)!r}")
        url = _check_url(entry, label)
        if url not in out:
            out.append(url)
    websocket = {url.startswith(("ws://", "wss://")) for url in out}
    if len(websocket) > 1:
        raise InvalidNatsUrl(f"{where}: mixes WebSocket (ws://, wss://) and TCP (nats://, tls://) servers")
    return out


def _redact_list(raw: str) -> str:
    return ",".join(_redact(e.strip()) for e in raw.split(","))


def nats_url(explicit: str | None = None) -> str:
    """The servers of :func:`server_urls` as one comma-separated string, for messages and ``NATS_URL``."""
    return ",".join(server_urls(explicit))


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
    kwargs.setdefault("error_cb", _report_error)
    kwargs.setdefault("disconnected_cb", _connection_logger(service, "disconnected from NATS; reconnecting"))
    kwargs.setdefault("reconnected_cb", _connection_logger(service, "reconnected to NATS"))
    return NatsBroker(
        server_urls(url),
        name=f"modelbus-{service}",
        serializer=MsgSpecSerializer(),
        middlewares=[TraceMiddleware],
        logger=logging.getLogger("modelbus.faststream"),
        log_level=logging.DEBUG,  # FastStream's per-subscriber start-up lines
        max_reconnect_attempts=-1,  # a service never gives up on NATS
        reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # annotated int; seconds as a float work
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        **kwargs,
    )


def _connection_logger(service: str, what: str) -> Callable[[], Awaitable[None]]:
    async def report() -> None:
        log.warning("%s: %s", service, what)

    return report


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
        servers=server_urls(url),
        name=f"modelbus-{service}-state",
        error_cb=_report_error,
        disconnected_cb=_connection_logger(f"{service}-state", "disconnected from NATS; reconnecting"),
        reconnected_cb=_connection_logger(f"{service}-state", "reconnected to NATS"),
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,  # seconds; a float works
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
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
    unless given). ``url`` may list several servers (:func:`server_urls`); unlike a
    service's, this connection gives up after :data:`TOOL_RECONNECT_ATTEMPTS` tries per server."""
    for key, value in identity_from_env().items():
        kwargs.setdefault(key, value)
    kwargs.setdefault("error_cb", _report_error)
    kwargs.setdefault("max_reconnect_attempts", TOOL_RECONNECT_ATTEMPTS)
    kwargs.setdefault("reconnect_time_wait", RECONNECT_WAIT_S)
    return await nats.connect(servers=server_urls(url), name=name, **kwargs)


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

    uvloop takes ~0.1 ms off every NATS hop on this machine (docs/architecture.md,
    "Why the hot path is raw nats-py"). A
    setting that cannot work (a bad ``NATS_URL``, ``MODELBUS_JS_REPLICAS``, or a
    replica count the servers cannot hold) ends the process with one clear line
    and status 2, not a traceback.
    """
    from shared.jetstream import InvalidReplicas, JetStreamSetupError

    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - platforms without uvloop
            asyncio.run(main)  # type: ignore[arg-type]
            return
        uvloop.run(main)  # type: ignore[arg-type]
    except (InvalidNatsUrl, InvalidReplicas, JetStreamSetupError) as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
