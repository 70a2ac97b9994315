"""The gateway's settings from the environment, and its listening socket.

=========================== =============================================================
``MODELBUS_HTTP``           ``host:port`` to listen on (``[v6]:port`` for IPv6); default
                            ``127.0.0.1:8787``; port ``0`` picks a free port
``MODELBUS_HTTP_MAX_BODY``  largest request body accepted, in bytes; default 4 MiB
                            (4194304); a larger body is answered 413
``MODELBUS_GATEWAY_KEYS``   an optional key file of extra, unbound keys
                            (:mod:`services.gateway.keys`); the keys ``modelbus
                            create key`` makes are in JetStream and need no setting
=========================== =============================================================

A setting that cannot work ends the process with status 2 and one line naming
the variable (:class:`GatewaySetupError`). The socket is bound and listening
before the gateway connects to NATS, so its ready line names the address it
really serves; a taken port is an error, not a silent move to another port
(clients are pointed at the configured one).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

ADDRESS_ENV = "MODELBUS_HTTP"
MAX_BODY_ENV = "MODELBUS_HTTP_MAX_BODY"
KEYS_ENV = "MODELBUS_GATEWAY_KEYS"
DEFAULT_ADDRESS = "127.0.0.1:8787"
DEFAULT_MAX_BODY = 4 * 1024 * 1024
"""The router's default ``max_request_bytes``: a body the gateway takes, a router takes too."""
BACKLOG = 1024


class GatewaySetupError(Exception):
    """A setting of the gateway cannot work; the message names the variable, never a key."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the gateway reads from the environment at start."""

    host: str
    """Address to listen on."""
    port: int
    """Port to listen on; 0 picks a free one."""
    max_body: int
    """Largest request body, in bytes."""
    keys_path: str | None
    """The key file, when one is set."""


def parse_address(value: str | None) -> tuple[str, int]:
    """``host:port`` from ``MODELBUS_HTTP`` (unset or empty: the default, loopback only)."""
    text = (value or "").strip() or DEFAULT_ADDRESS
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise GatewaySetupError(f"{ADDRESS_ENV}: expected host:port (e.g. {DEFAULT_ADDRESS}), got {text!r}")
    return host, int(port_text)


def parse_max_body(value: str | None) -> int:
    """Bytes from ``MODELBUS_HTTP_MAX_BODY`` (unset or empty: :data:`DEFAULT_MAX_BODY`)."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_MAX_BODY
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise GatewaySetupError(f"{MAX_BODY_ENV}: expected a whole number of bytes above 0, got {text[:40]!r}")
    return int(text)


def load_settings(env: Mapping[str, str]) -> Settings:
    """All settings, checked; :class:`GatewaySetupError` names the first bad one."""
    host, port = parse_address(env.get(ADDRESS_ENV))
    max_body = parse_max_body(env.get(MAX_BODY_ENV))
    keys_path = (env.get(KEYS_ENV) or "").strip() or None
    return Settings(host=host, port=port, max_body=max_body, keys_path=keys_path)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; :class:`GatewaySetupError` when it cannot be had.

    It listens at once, so the port is held from here on (connections made
    before the HTTP server runs wait in the backlog).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise GatewaySetupError(f"{ADDRESS_ENV}: cannot resolve {host!r}: {exc.strerror or exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise GatewaySetupError(f"{ADDRESS_ENV}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The ``http://HOST:PORT`` a bound socket serves."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
