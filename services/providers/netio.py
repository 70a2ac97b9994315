"""Opening upstream connections: the SSRF check at the address connected to, TCP, TLS and proxies.

A direct connection resolves the host itself, refuses it if **any** address
is off limits for the endpoint (:func:`services.providers.ssrf.blocked_reason`,
unless it allows private addresses), and connects to exactly the addresses it
checked, so a DNS answer that changes between the check and the connect
(rebinding) cannot steer it inward. Through a proxy the proxy resolves the
name; the guard then checks the name as this host resolves it, which is all it
can see.

Proxies come from the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``,
``NO_PROXY``) as with httpx: an ``https`` upstream is reached through a
``CONNECT`` tunnel with TLS end to end, a plain ``http`` one by sending the
absolute URL to the proxy. Credentials in the proxy URL travel as
``Proxy-Authorization: Basic`` and never appear in an error.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import httptools

from services.providers.h1 import H1Connection
from services.providers.ssrf import PrivateAddressRefused, SsrfGuard, blocked_reason, system_resolver
from services.providers.transport_errors import ConnectFailed, ConnectTimedOut, ProxyFailed, TLSVerifyFailed


class Origin(NamedTuple):
    """Where requests go: scheme, host (IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """``host[:port]`` as the ``Host`` header names it (the port only when not the default)."""
        default = 443 if self.tls else 80
        return self._bracketed if self.port == default else f"{self._bracketed}:{self.port}"

    @property
    def host_port(self) -> str:
        """``host:port`` as ``CONNECT`` names it."""
        return f"{self._bracketed}:{self.port}"

    @property
    def _bracketed(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


class Proxy(NamedTuple):
    """An HTTP proxy: where it listens and the ``Proxy-Authorization`` its URL implies."""

    host: str
    port: int
    tls: bool
    authorization: str | None

    @property
    def label(self) -> str:
        """How errors name it (never with its credentials)."""
        return f"proxy {self.host}:{self.port}"


def environment_proxy(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY``/``ALL_PROXY`` name for ``url``, unless ``NO_PROXY`` exempts its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxy


def parse_proxy(url: str) -> Proxy:
    """A proxy URL (``http://user:pass@host:port``, the scheme defaulting to ``http``)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProxyFailed(f"unsupported proxy URL scheme {parts.scheme!r} (http and https proxies are supported)")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Proxy(parts.hostname, port, parts.scheme == "https", authorization)


class Connector:
    """Opens :class:`H1Connection` s to one origin, directly or through a proxy."""

    def __init__(
        self, origin: Origin, *, guard: SsrfGuard | None, ssl_context: ssl.SSLContext | None, proxy: Proxy | None
    ) -> None:
        """``ssl_context`` is required when the origin or the proxy speaks TLS."""
        self.origin = origin
        self.proxy = proxy
        self._guard = guard
        self._ssl_context = ssl_context

    async def open(self, url: str, timeout: float | None) -> H1Connection:
        """A new connection for a request to ``url`` (of this origin), within ``timeout`` all told."""
        try:
            async with asyncio.timeout(timeout):
                if self.proxy is not None:
                    if self._guard is not None:
                        await self._guard.check_url(url)
                    return await self._through_proxy(self.proxy)
                return await self._direct()
        except TimeoutError:
            where = f"{self.origin.host} port {self.origin.port}"
            if self.proxy is not None:
                where += f" through {self.proxy.label}"
            raise ConnectTimedOut(f"no connection to {where} within {timeout:g}s") from None

    async def _direct(self) -> H1Connection:
        origin = self.origin
        addresses = await self._vetted_addresses()
        last: OSError | None = None
        for address in addresses:
            try:
                return await self._connect(address, origin.port, tls_host=origin.host if origin.tls else None)
            except ssl.SSLCertVerificationError as exc:
                raise TLSVerifyFailed(
                    f"TLS certificate of {origin.host} did not verify: {exc.verify_message or exc.reason}"
                ) from None
            except ssl.SSLError as exc:
                raise ConnectFailed(f"TLS handshake with {origin.host} failed: {exc.reason or exc}") from None
            except OSError as exc:
                last = exc
        reason = (last.strerror or type(last).__name__) if last is not None else "no address"
        raise ConnectFailed(f"cannot connect to {origin.host} port {origin.port}: {reason}")

    async def _vetted_addresses(self) -> Sequence[str]:
        host, port = self.origin.host, self.origin.port
        guard = self._guard
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses: Sequence[str] = [host]
        except ValueError:
            resolve = guard.resolver if guard is not None else system_resolver
            try:
                addresses = list(dict.fromkeys(await resolve(host, port)))
            except OSError as exc:
                raise ConnectFailed(f"cannot resolve {host}: {exc.strerror or type(exc).__name__}") from None
        if guard is not None and not guard.allow_private:
            for address in addresses:
                reason = blocked_reason(address)
                if reason is not None:
                    what = f"is {reason}" if address == host else f"resolves to {address}, {reason}"
                    raise PrivateAddressRefused(
                        f"endpoint {guard.endpoint_name!r}: {host} {what}; "
                        "set allowPrivate: true on the endpoint if this is intended"
                    )
        return addresses

    async def _connect(self, host: str, port: int, *, tls_host: str | None) -> H1Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: H1Connection(loop),
            host,
            port,
            ssl=self._ssl_context if tls_host is not None else None,
            server_hostname=tls_host,
        )
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def _through_proxy(self, proxy: Proxy) -> H1Connection:
        loop = asyncio.get_running_loop()
        try:
            if not self.origin.tls:  # plain http: the proxy forwards each request (absolute URL)
                return await self._connect(proxy.host, proxy.port, tls_host=proxy.host if proxy.tls else None)
            transport, tunnel = await loop.create_connection(
                lambda: _Tunnel(loop),
                proxy.host,
                proxy.port,
                ssl=self._ssl_context if proxy.tls else None,
                server_hostname=proxy.host if proxy.tls else None,
            )
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS with {proxy.label} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {proxy.label}: {exc.strerror or type(exc).__name__}") from None
        try:
            authority = self.origin.host_port
            head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
            if proxy.authorization:
                head += f"Proxy-Authorization: {proxy.authorization}\r\n"
            transport.write((head + "\r\n").encode("latin-1"))
            status = await tunnel.answered
            if status != 200:
                raise ProxyFailed(f"{proxy.label} answered {status} to CONNECT {authority}")
            if tunnel.early_bytes:
                raise ProxyFailed(f"{proxy.label} sent data into the tunnel before the TLS handshake")
            conn = H1Connection(loop)
            try:
                assert self._ssl_context is not None  # an https origin always gets one
                tls = await loop.start_tls(transport, conn, self._ssl_context, server_hostname=self.origin.host)
            except ssl.SSLCertVerificationError as exc:
                raise TLSVerifyFailed(
                    f"TLS certificate of {self.origin.host} did not verify: {exc.verify_message or exc.reason}"
                ) from None
            except (ssl.SSLError, OSError) as exc:
                reason = (exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror) or type(exc).__name__
                raise ConnectFailed(
                    f"TLS handshake with {self.origin.host} through {proxy.label} failed: {reason}"
                ) from None
            if tls is None:  # the loop closed the connection during the handshake
                raise ConnectFailed(f"TLS handshake with {self.origin.host} through {proxy.label} was cut off")
            conn.connection_made(tls)  # start_tls hands the new transport over without calling it
            return conn
        except BaseException:
            transport.abort()
            raise


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to ``CONNECT``: a head and no body, then the bytes are the upstream's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answered: asyncio.Future[int] = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._head_bytes = 0
        self.early_bytes = False
        """Bytes came after a 200 answer, before the client spoke TLS: not a clean tunnel."""

    def data_received(self, data: bytes) -> None:
        if self.answered.done():  # the TLS handshake has not started: nothing may arrive yet
            self.early_bytes = True
            return
        self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed answer to CONNECT: {exc}")
            return
        if not self.answered.done() and self._head_bytes > 64 * 1024:
            self._fail("answer to CONNECT larger than 64 KiB")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200 and not self.answered.done():
            self.answered.set_result(status)

    def on_body(self, body: bytes) -> None:
        if self.answered.done():  # after a 200 head: not the proxy's answer any more
            self.early_bytes = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("the proxy closed the connection before answering CONNECT")

    def _fail(self, reason: str) -> None:
        if not self.answered.done():
            self.answered.set_exception(ProxyFailed(reason))
