"""A Python client for the wire contract, used by the CLI, tests and benchmarks.

It is a thin layer over one nats-py connection: it sends a request on
:data:`shared.subjects.CHAT_COMPLETIONS`, turns error replies back into the
typed error tree, and reassembles streams while checking their order and that
they ended with an explicit terminator. Any language's NATS client can do the
same by following docs/contract.md.

Connecting to a secure ``modelbus up`` takes a broker identity. The simplest is
a **credentials file**, the JSON object ``{"url", "user", "password",
"inbox_prefix"}`` that ``modelbus up`` writes as ``<data-dir>/client.json`` and
``modelbus create client NAME`` as ``<data-dir>/clients/NAME.json``::

    client = await ModelbusClient.connect(creds="~/.local/share/modelbus/client.json")

Without ``creds``, :meth:`ModelbusClient.connect` uses ``NATS_USER`` /
``NATS_PASSWORD`` / ``MODELBUS_INBOX_PREFIX`` from the environment, else the
file named by ``MODELBUS_CREDS``. The first connection attempt fails fast,
with :class:`ServerUnreachable` or :class:`CredentialsRefused` (not nats-py's
"no servers available"); once connected, the connection reconnects as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from opentelemetry import trace

from shared import headers as H
from shared.bus import RECONNECT_WAIT_S, identity_from_env, retry_after_from, server_urls
from shared.chat import ChatCompletion, ChatCompletionChunk, chunk_decoder, completion_decoder
from shared.errors import (
    BadUpstreamResponse,
    DeadlineExceeded,
    ModelbusError,
    NoRouteAvailable,
    RequestLost,
    error_from_wire,
)
from shared.mux import ReplyMux, Silence, Waiter
from shared.replies import CLIENT_GRACE_S, MAX_SILENCE_S, MAX_TIMEOUT_MS, is_no_responders, is_stream_end, status_of
from shared.subjects import CHAT_COMPLETIONS
from shared.telemetry import inject_headers, tracer

_encoder = msgspec.json.Encoder()
_tracer = tracer("modelbus.client")
log = logging.getLogger("modelbus.client")

CREDS_ENV = "MODELBUS_CREDS"
"""Names a credentials file to connect with when no identity is given otherwise."""
CONNECT_TIMEOUT_S = 2.0
"""Bound on the first connection attempt (a missing server is refused at once on loopback)."""
_AUTH_VIOLATION = "authorization violation"


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """A credentials file: where to connect and as whom (see the module docstring)."""

    url: str
    """The NATS URL of the stack that issued it."""
    user: str
    """Broker user name."""
    password: str
    """Broker password (the server holds only its bcrypt hash)."""
    inbox_prefix: str
    """The only inbox subjects this identity may subscribe to."""

    def __repr__(self) -> str:
        prefix = self.inbox_prefix
        return f"Credentials(url={self.url!r}, user={self.user!r}, password=<hidden>, inbox_prefix={prefix!r})"

    def connect_kwargs(self) -> dict[str, str]:
        """``user``/``password``/``inbox_prefix`` for ``nats.connect``."""
        return {"user": self.user, "password": self.password, "inbox_prefix": self.inbox_prefix}


class CredentialsFileError(ValueError):
    """A credentials file is missing, unreadable or not one; the message never quotes its content."""


class ConnectFailed(ConnectionError):
    """The first connection to NATS failed; :attr:`url` is where it was tried."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class ServerUnreachable(ConnectFailed):
    """Nothing accepts NATS connections at the URL (no stack runs there)."""


class CredentialsRefused(ConnectFailed):
    """The server refused the identity (authorization violation): wrong, revoked or missing credentials."""

    def __init__(self, message: str, url: str, user: str | None) -> None:
        super().__init__(message, url)
        self.user = user


def load_credentials(path: str | os.PathLike[str]) -> Credentials:
    """Read a credentials file (``~`` is expanded)."""
    target = Path(path).expanduser()
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise CredentialsFileError(f"cannot read credentials file {target}: {exc.strerror or exc}") from None
    try:
        return msgspec.json.decode(data, type=Credentials)
    except msgspec.MsgspecError:
        raise CredentialsFileError(
            f"{target} is not a modelbus credentials file (a JSON object with url, user, password, inbox_prefix)"
        ) from None


def _is_auth_error(err: BaseException) -> bool:
    return isinstance(err, nats.errors.AuthorizationError) or _AUTH_VIOLATION in str(err).lower()


async def open_connection(
    url: str | None = None,
    *,
    name: str = "modelbus-client",
    creds: str | os.PathLike[str] | Credentials | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    **kwargs: Any,
) -> Client:
    """A nats-py connection as an identity, failing fast and clearly when it cannot connect.

    The identity is ``user``/``password``/``inbox_prefix`` in ``kwargs``, else
    ``creds`` (a credentials file; its URL is used when ``url`` is ``None``),
    else ``NATS_USER``/``NATS_PASSWORD``/``MODELBUS_INBOX_PREFIX``, else the file
    named by ``MODELBUS_CREDS``, else none. Raises :class:`ServerUnreachable` or
    :class:`CredentialsRefused` after one attempt (bounded by
    ``connect_timeout``); the connection then reconnects as nats-py does unless
    ``kwargs`` say otherwise.
    """
    if creds is None and "user" not in kwargs and "user" not in identity_from_env() and os.environ.get(CREDS_ENV):
        creds = os.environ[CREDS_ENV]
    if creds is not None:
        loaded = creds if isinstance(creds, Credentials) else load_credentials(creds)
        url = url or loaded.url
        for key, value in loaded.connect_kwargs().items():
            kwargs.setdefault(key, value)
    else:
        for key, value in identity_from_env().items():
            kwargs.setdefault(key, value)
    servers = server_urls(url)
    target = ",".join(servers)
    caller_cb = kwargs.pop("error_cb", None)
    connecting: list[BaseException] = []

    async def on_error(err: Exception) -> None:
        # nats-py reports every failed attempt here too; while connecting they are
        # kept to explain the failure, afterwards (permission violations) logged.
        if not nc.is_connected and not nc.is_reconnecting:
            connecting.append(err)
        elif caller_cb is not None:
            await caller_cb(err)
        else:
            log.error("nats: %s", err)

    # One attempt (nats-py otherwise retries the first connect ~60 times), then
    # the caller's (or nats-py's default) reconnect behaviour for the session.
    later = {
        "allow_reconnect": kwargs.pop("allow_reconnect", True),
        "max_reconnect_attempts": kwargs.pop("max_reconnect_attempts", 60),
        "reconnect_time_wait": kwargs.pop("reconnect_time_wait", RECONNECT_WAIT_S),
    }
    nc = Client()
    try:
        await nc.connect(
            servers=servers,
            name=name,
            error_cb=on_error,
            connect_timeout=connect_timeout,  # type: ignore[arg-type]  # annotated int; any number works
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,  # type: ignore[arg-type]
            **kwargs,
        )
    except Exception as exc:
        user = kwargs.get("user")
        if any(_is_auth_error(e) for e in (exc, *connecting)):
            who = f"user {user!r}" if user else "a connection without credentials"
            raise CredentialsRefused(
                f"the NATS server at {target} refused {who} (authorization violation)", target, user
            ) from None
        if isinstance(exc, (OSError, TimeoutError, nats.errors.NoServersError, nats.errors.TimeoutError)):
            cause = connecting[-1] if connecting else exc
            detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
            raise ServerUnreachable(f"nothing accepts NATS connections at {target} ({detail})", target) from None
        raise
    nc.options.update(later)  # nats-py reads these when it reconnects
    return nc


class Reply(msgspec.Struct, frozen=True):
    """A raw reply: status, headers and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


class ModelbusClient:
    """Send chat completions through modelbus."""

    def __init__(self, nc: Client, *, subject: str = CHAT_COMPLETIONS) -> None:
        self.nc = nc
        self.subject = subject
        self._mux = ReplyMux(nc, skip=(H.KEEPALIVE,))
        """Every reply on one subscription; keepalives only restart the silence clock."""

    @classmethod
    async def connect(
        cls, url: str | None = None, *, creds: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> ModelbusClient:
        """Connect to NATS and return a client.

        ``creds`` names a credentials file (``client.json`` of ``modelbus up``,
        or one from ``modelbus create client NAME``), which also gives the URL;
        otherwise ``url``, then ``NATS_URL``, with the identity found as
        :func:`open_connection` says. Raises :class:`ServerUnreachable` or
        :class:`CredentialsRefused` when the first attempt fails.
        """
        return cls(await open_connection(url, name="modelbus-client", creds=creds, **kwargs))

    @classmethod
    async def from_creds(cls, path: str | os.PathLike[str], **kwargs: Any) -> ModelbusClient:
        """Connect with the credentials file at ``path`` (``~`` is expanded)."""
        return await cls.connect(creds=path, **kwargs)

    async def close(self) -> None:
        """Drain and close the connection."""
        await self._mux.stop()
        await self.nc.drain()

    @staticmethod
    def _body(request: Mapping[str, Any] | bytes | msgspec.Struct) -> bytes:
        if isinstance(request, bytes):
            return request
        return _encoder.encode(request)

    def _headers(self, extra: Mapping[str, str] | None, timeout: float) -> dict[str, str]:
        hdrs = {H.REQUEST_ID: uuid.uuid4().hex, H.KEEPALIVE: "1"}
        if extra:
            hdrs.update(extra)
        if H.TIMEOUT_MS not in hdrs:  # the router's deadline is the caller's, so its 408 arrives in time
            hdrs[H.TIMEOUT_MS] = str(max(1, min(MAX_TIMEOUT_MS, int(timeout * 1000))))
        inject_headers(hdrs)
        return hdrs

    async def _send(self, request: Mapping[str, Any] | bytes | msgspec.Struct, hdrs: dict[str, str]) -> Waiter:
        if not self._mux.started:
            await self._mux.start()
        waiter = self._mux.open(MAX_SILENCE_S)
        await self.nc.publish(self.subject, self._body(request), reply=waiter.subject, headers=hdrs)
        return waiter

    async def _next(self, waiter: Waiter, until: float, timeout: float) -> tuple[dict[str, str], bytes]:
        """The next message that is not a keepalive, or the typed error for silence and deadline."""
        try:
            msg = await waiter.next(until)
        except Silence:
            raise RequestLost(
                f"modelbus sent nothing for {MAX_SILENCE_S:g}s, not even a keepalive: "
                "whoever held the request is gone (it may or may not have reached a provider)"
            ) from None
        except TimeoutError:
            raise DeadlineExceeded(f"no answer from modelbus within {timeout:g}s") from None
        hdrs = dict(msg.headers or {})
        if is_no_responders(hdrs, msg.data):
            raise NoRouteAvailable(f"no router serves {self.subject}", code="no_router")
        return hdrs, msg.data

    async def request_raw(
        self,
        request: Mapping[str, Any] | bytes | msgspec.Struct,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        """Send one non-streamed request and return the reply as it came.

        Raises :class:`RequestLost` after :data:`~shared.replies.MAX_SILENCE_S` of
        silence (keepalives are asked for), :class:`DeadlineExceeded` after
        ``timeout`` plus the router's grace, :class:`NoRouteAvailable` when no
        router listens.
        """
        with _tracer.start_as_current_span("chat.completions request"):
            hdrs = self._headers(headers, timeout)
            waiter = await self._send(request, hdrs)
            try:
                until = asyncio.get_running_loop().time() + timeout + CLIENT_GRACE_S
                reply_headers, body = await self._next(waiter, until, timeout)
            finally:
                self._mux.close(waiter)
        return Reply(status_of(reply_headers), reply_headers, body)

    async def complete(
        self,
        request: Mapping[str, Any] | bytes | msgspec.Struct,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[ChatCompletion, dict[str, str]]:
        """Send a request and return the completion and reply headers, or raise the typed error."""
        reply = await self.request_raw(request, headers=headers, timeout=timeout)
        if reply.status != 200:
            raise _error_of(reply.status, reply.headers, reply.body)
        try:
            return completion_decoder.decode(reply.body), reply.headers
        except msgspec.MsgspecError as exc:
            raise BadUpstreamResponse(f"modelbus sent an unreadable completion: {exc}") from exc

    async def stream(
        self,
        request: Mapping[str, Any] | bytes | msgspec.Struct,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Stream a request (its body must set ``"stream": true``) chunk by chunk.

        Raises the typed error if the stream ends with an error terminator (or
        the request was refused before it started), :class:`RequestLost` after
        :data:`~shared.replies.MAX_SILENCE_S` without even a keepalive, and
        :class:`DeadlineExceeded` past ``timeout``: a stream is never taken as
        complete without its clean ``end`` message.
        """
        # The span covers the whole stream but is current only around the
        # publish: an async generator must not leave context attached across yields.
        span = _tracer.start_span("chat.completions stream")
        waiter: Waiter | None = None
        try:
            with trace.use_span(span, end_on_exit=False):
                waiter = await self._send(request, self._headers(headers, timeout))
            until = asyncio.get_running_loop().time() + timeout + CLIENT_GRACE_S
            expected_seq = 0
            while True:
                hdrs, data = await self._next(waiter, until, timeout)
                status = status_of(hdrs, default=200)
                if status != 200:  # an error terminator, or an error before the stream began
                    raise _error_of(status, hdrs, data)
                seq = hdrs.get(H.SEQ, "")
                if seq != str(expected_seq):
                    raise BadUpstreamResponse(f"stream out of order: got seq {seq or 'none'}, expected {expected_seq}")
                expected_seq += 1
                if is_stream_end(hdrs):
                    if data:
                        yield chunk_decoder.decode(data)
                    return
                yield chunk_decoder.decode(data)
        except BaseException as exc:
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()
            if waiter is not None:
                self._mux.close(waiter)


def _error_of(status: int, headers: Mapping[str, str], body: bytes) -> ModelbusError:
    return error_from_wire(status, body, retry_after=retry_after_from(headers))
