"""Where and how the HTTP admin API listens: settings, the socket, the embedded uvicorn server.

The listening socket is bound before the config service connects to NATS. If
the configured port (``MODELBUS_ADMIN_HTTP``, default ``127.0.0.1:8790``) is
taken, another process could be squatting on it to collect the CLI's bearer
token, so the service binds a free port on the same host instead, logs it,
and reports the URL it actually serves in its ready line
(``admin=http://HOST:PORT``), which ``modelbus up`` records for the CLI. If no
port on that host can be bound, start-up fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger("modelbus.config.http")

ADDRESS_ENV = "MODELBUS_ADMIN_HTTP"
"""``host:port`` to serve on, ``off`` to disable."""
TOKEN_ENV = "MODELBUS_ADMIN_TOKEN"
TOKEN_FILE_ENV = "MODELBUS_ADMIN_TOKEN_FILE"
DEFAULT_ADDRESS = "127.0.0.1:8790"


class AdminHttpError(Exception):
    """The HTTP admin API is misconfigured; the message names the variable, never a token."""


# ------------------------------------------------------------------ settings


def parse_address(value: str | None) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` for IPv6) from ``MODELBUS_ADMIN_HTTP``; ``None`` for ``off``.

    Unset or empty means the default, loopback only.
    """
    text = (value or "").strip() or DEFAULT_ADDRESS
    if text.lower() == "off":
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise AdminHttpError(f"{ADDRESS_ENV}: expected host:port (e.g. {DEFAULT_ADDRESS}) or off, got {text!r}")
    return host, int(port_text)


def load_token(env: Mapping[str, str]) -> bytes | None:
    """The admin token from ``MODELBUS_ADMIN_TOKEN`` or the file ``MODELBUS_ADMIN_TOKEN_FILE``.

    ``None`` when neither is set (every authenticated endpoint then answers
    401); both set is an error, as for the master key.
    """
    value = env.get(TOKEN_ENV) or None
    path = env.get(TOKEN_FILE_ENV) or None
    if value and path:
        raise AdminHttpError(f"set {TOKEN_ENV} or {TOKEN_FILE_ENV}, not both")
    if path:
        try:
            mode = os.stat(path).st_mode
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise AdminHttpError(f"{TOKEN_FILE_ENV}: cannot read {path}: {reason}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s %s is readable by group or others; chmod 600 it", TOKEN_FILE_ENV, path)
        if not value:
            log.warning("%s %s is empty", TOKEN_FILE_ENV, path)
    return value.encode() if value else None


# ------------------------------------------------------------------ the server


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process's signals belong to
    :func:`shared.runtime.serve`, which stops this server through :meth:`AdminHttpServer.stop`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``.

    It listens at once: on Linux two SO_REUSEADDR sockets may share a port
    until one listens, so a socket that is only bound does not hold the port
    against a squatter. Connections made before uvicorn serves wait in the backlog.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AdminHttpServer:
    """The HTTP admin API served as a task on the running event loop."""

    def __init__(self, app: Starlette, sock: socket.socket) -> None:
        self.sock = sock
        self.url = _url(sock)
        config = uvicorn.Config(
            app,
            loop="none",  # the config service's loop is already running; uvicorn only adds a task
            lifespan="off",
            log_config=None,
            access_log=False,  # paths only would be safe, but mutations are logged by the manager
            server_header=False,
            limit_concurrency=64,
            timeout_graceful_shutdown=3,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 5.0) -> None:
        """Start serving and return once connections are accepted."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]), name="admin-http")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it stopped
                raise AdminHttpError("the admin HTTP server stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise AdminHttpError(f"the admin HTTP server did not start within {timeout_s:g}s")
            await asyncio.sleep(0.01)
        log.info("admin http listening on %s", self.url)

    async def stop(self) -> None:
        """Finish requests in flight (briefly) and close the socket."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5.0)
        except TimeoutError:
            log.warning("admin http did not stop in time")
        self.sock.close()


class AdminListener:
    """The bound (not yet serving) socket of the admin API and its settings."""

    def __init__(self, sock: socket.socket, token: bytes | None) -> None:
        self.sock = sock
        self.token = token
        self.url = _url(sock)

    def close(self) -> None:
        """Release the socket (when start-up fails before serving)."""
        self.sock.close()


def open_admin_listener(env: Mapping[str, str]) -> AdminListener | None:
    """Bind the admin API's socket as ``MODELBUS_ADMIN_HTTP`` says; ``None`` when it is off.

    A taken (or otherwise refused) port falls back to a free port on the same
    host, with a warning naming both. :class:`AdminHttpError` for a malformed
    setting, a bad token setting, or when no port on that host can be bound.
    """
    address = parse_address(env.get(ADDRESS_ENV))
    token = load_token(env)
    if address is None:
        log.info("admin http off (%s=off)", ADDRESS_ENV)
        return None
    host, port = address
    try:
        return AdminListener(_bind(host, port), token)
    except OSError as exc:
        first = exc
    if port == 0:
        raise AdminHttpError(f"admin http: cannot listen on {host}: {first.strerror or first}")
    try:
        sock = _bind(host, 0)
    except OSError as exc:
        raise AdminHttpError(
            f"admin http: cannot listen on {host}:{port} ({first.strerror or first}) nor on any free port of "
            f"{host} ({exc.strerror or exc}); set {ADDRESS_ENV} to an address of this host, or off"
        ) from None
    listener = AdminListener(sock, token)
    taken = "is taken by another process" if first.errno == errno.EADDRINUSE else f"refused: {first.strerror}"
    log.warning(
        "admin http: %s:%d %s; serving on %s instead (the ready line and `modelbus up` report it; "
        "do not send the admin token to the other port)",
        host,
        port,
        taken,
        listener.url,
    )
    return listener


def is_loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False
