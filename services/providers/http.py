"""HTTP helpers every network adapter uses at its boundary, and its pooled client."""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import NamedTuple, Protocol
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from services.providers.h1 import H1Connection, NotSent, request_head
from services.providers.netio import Connector, Origin, environment_proxy, parse_proxy
from services.providers.pool import ConnectionPool
from services.providers.response import MAX_BODY_BYTES, UpstreamResponse
from services.providers.ssrf import SsrfGuard
from services.providers.transport_errors import Explained, UpstreamProtocolError
from shared.errors import ProviderError, UpstreamTimeout, UpstreamUnavailable, error_from_status


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date); vendor
    rate-limit reset headers are read by their adapters (Anthropic's, Azure's)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None


_error_decoder = msgspec.json.Decoder(_ErrorBody)


def upstream_message(body: bytes, status: int) -> str:
    """The provider's own error message from a JSON error body, or a short fallback."""
    try:
        parsed = _error_decoder.decode(body)
    except msgspec.MsgspecError:
        text = body[:200].decode("utf-8", "replace").strip()
        return text or f"HTTP {status}"
    if isinstance(parsed.error, _ErrorDetail) and parsed.error.message:
        return parsed.error.message
    if isinstance(parsed.error, str):
        return parsed.error
    return parsed.message or f"HTTP {status}"


class Answer(Protocol):
    """What the error mapping reads of an answer (an :class:`UpstreamResponse`, or an ``httpx.Response``)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def status_error(response: Answer, body: bytes, *, provider: str, model: str) -> ProviderError:
    """Map a non-2xx upstream response to the error tree."""
    return error_from_status(
        response.status_code,
        f"{provider} returned {response.status_code}: {upstream_message(body, response.status_code)}",
        provider=provider,
        model=model,
        retry_after=parse_retry_after(response.headers),
    )


def transport_error(exc: httpx.HTTPError, *, endpoint: str, provider: str, model: str) -> ProviderError:
    """Map a transport failure. The text of an httpx exception is not included (it can carry
    the request URL, and some providers put keys in URLs); the upstream client's own errors
    (:class:`services.providers.h1.Explained`) name no URL, and their reason is kept."""
    kind = UpstreamTimeout if isinstance(exc, httpx.TimeoutException) else UpstreamUnavailable
    if isinstance(exc, Explained):
        return kind(f"{endpoint}: {exc}", provider=provider, model=model)
    if kind is UpstreamTimeout:
        return kind(f"{endpoint}: upstream timed out ({type(exc).__name__})", provider=provider, model=model)
    return kind(f"{endpoint}: cannot reach upstream ({type(exc).__name__})", provider=provider, model=model)


DEFAULT_HEADERS = {"accept": "*/*", "accept-encoding": "gzip, deflate", "user-agent": "modelbus"}
"""Sent on every upstream request unless the adapter sets its own."""

_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})
"""Headers the client writes itself; an adapter's are dropped rather than sent twice."""
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


class _Target(NamedTuple):
    """A URL parsed once: its pool, request-target and ``Host``."""

    pool: ConnectionPool
    path: str
    host: str
    proxy_authorization: str | None


class _PooledBody:
    """An answer's body on a pooled connection; gives the connection back when done."""

    __slots__ = ("_client", "_conn", "_limit", "_pool", "_timeout")

    def __init__(
        self, client: UpstreamClient, pool: ConnectionPool, conn: H1Connection, timeout: float, limit: int
    ) -> None:
        self._client, self._pool, self._conn, self._timeout, self._limit = client, pool, conn, timeout, limit

    async def read_all(self) -> bytes:
        return await self._conn.read_all(self._limit, self._timeout)

    async def read_chunk(self) -> bytes:
        return await self._conn.read_chunk(self._timeout)

    async def release(self, *, graceful: bool) -> None:
        self._client._in_flight -= 1
        conn = self._conn
        if graceful and not conn.complete:
            self._pool.release_after_drain(conn)
            return
        if not graceful:
            conn.abort()
        self._pool.release(conn)


class _TransportBody:
    """An answer's body streamed from an ``httpx`` transport (tests): raw bytes, decoded like the network's."""

    def __init__(self, response: httpx.Response, client: UpstreamClient, limit: int) -> None:
        self._response = response
        self._chunks = response.aiter_raw().__aiter__()
        self._client = client
        self._limit = limit

    async def read_all(self) -> bytes:
        body = b"".join([chunk async for chunk in self._chunks])
        if len(body) > self._limit:
            raise UpstreamProtocolError(f"answer body larger than {self._limit} bytes")
        return body

    async def read_chunk(self) -> bytes:
        async for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    async def release(self, *, graceful: bool) -> None:
        self._client._in_flight -= 1
        await self._response.aclose()


class UpstreamClient:
    """The pooled HTTP/1.1 client of one endpoint: ``httptools`` (llhttp) on asyncio protocols.

    Adapters send one kind of request (a POST with a body and explicit
    headers) and need none of what a general client adds per request: cookie
    jars (a provider's cookies must not leak from one tenant's call to the
    next anyway), auth flows, redirects (never followed: a 3xx is returned as
    it is, so a public URL cannot bounce a request into private space), event
    hooks. This client parses each URL once, writes the request in one
    transport write (:mod:`services.providers.h1`), keeps a bounded keep-alive
    pool per origin (:mod:`services.providers.pool`) and answers with an
    :class:`~services.providers.response.UpstreamResponse` read the way an
    ``httpx.Response`` is. Its errors are httpx's exception classes (the
    adapters catch ``httpx.HTTPError``; :func:`transport_error` maps them).

    Every new connection passes the endpoint's SSRF ``guard`` at the address
    it connects to (:mod:`services.providers.netio`). Proxies come from the
    environment (``HTTP(S)_PROXY``, ``NO_PROXY``); TLS is verified with httpx's
    default context (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``) unless an
    ``ssl_context`` is given. A request that found its kept-alive connection
    closed before it could be written is sent once more on a new one; a
    request already written is never resent (a POST may have been acted on).
    Tests pass an ``httpx`` ``transport`` instead of the network.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        guard: SsrfGuard | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 256,
        keepalive_expiry_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._timeout_s = timeout_s
        self._guard = guard
        self._transport = transport
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._ssl_context = ssl_context
        self._max_body_bytes = max_body_bytes
        self._pools: dict[Origin, ConnectionPool] = {}
        self._targets: dict[str, _Target] = {}
        self._in_flight = 0
        self._closed = False

    # ------------------------------------------------------------ what adapters call

    async def post(
        self,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request and read the whole response body."""
        timeout_s = self._timeout_s if timeout is None else timeout
        if self._transport is not None:
            response = await self._send_to_transport("POST", url, content, headers, timeout_s)
            await response.aread()
            return response
        pool, conn = await self._start("POST", url, content, headers, timeout_s)
        try:  # no wake-up for the head: the call resumes once, when the whole answer is in
            body = await conn.read_all(self._max_body_bytes, timeout_s)
        except BaseException:
            conn.abort()
            raise
        finally:
            self._in_flight -= 1
            pool.release(conn)
        return UpstreamResponse.read(conn.status, conn.raw_headers, body, limit=self._max_body_bytes)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[UpstreamResponse]:
        """Send a request; the body is read by the caller (``aiter_lines``, ``aiter_bytes``, ``aread``).

        Leaving the block normally before the end of the body reads the rest
        briefly to keep the connection; leaving it with an exception (the
        caller gave up, or was cancelled) closes the connection at once.
        """
        timeout_s = self._timeout_s if timeout is None else timeout
        if self._transport is not None:
            response = await self._send_to_transport(method, url, content, headers, timeout_s)
        else:
            pool, conn = await self._start(method, url, content, headers, timeout_s)
            try:
                await conn.receive_head(timeout_s)
            except BaseException:
                self._in_flight -= 1
                conn.abort()
                pool.release(conn)
                raise
            body = _PooledBody(self, pool, conn, timeout_s, self._max_body_bytes)
            response = UpstreamResponse(conn.status, conn.raw_headers, source=body, limit=self._max_body_bytes)
        try:
            yield response
        except BaseException:
            await response.aclose(abandon=True)
            raise
        await response.aclose()

    @property
    def in_flight(self) -> int:
        """Requests sent whose response is not closed yet."""
        return self._in_flight

    async def aclose(self) -> None:
        """Close pooled connections; the client cannot be used again."""
        self._closed = True
        for pool in self._pools.values():
            await pool.aclose()
        if self._transport is not None:
            await self._transport.aclose()

    # ------------------------------------------------------------ plumbing

    def _merged(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        merged = dict(DEFAULT_HEADERS)
        if headers:
            for name, value in headers.items():
                lowered = name.lower()
                if lowered not in _FRAMING:
                    merged[lowered] = value
        return merged

    async def _start(
        self, method: str, url: str, content: bytes | None, headers: Mapping[str, str] | None, timeout_s: float
    ) -> tuple[ConnectionPool, H1Connection]:
        """Write the request on a pooled connection; the caller reads the answer, then releases it."""
        if method == "HEAD":
            raise ValueError("HEAD is not supported: its answer has no body to frame by")
        merged = self._merged(headers)
        target = self._targets.get(url) or self._target(url)
        if target.proxy_authorization is not None:
            merged["proxy-authorization"] = target.proxy_authorization
        length = len(content) if content is not None else (None if method in _BODYLESS else 0)
        head = request_head(method, target.path, target.host, merged, length)
        pool = target.pool
        conn: H1Connection | None = None
        self._in_flight += 1
        try:
            conn = await pool.acquire(url, timeout_s)
            try:
                await conn.send(head, content, timeout_s)
            except NotSent:  # closed while idle, not yet noticed: nothing was sent, so send it once more
                pool.release(conn)
                conn = None
                conn = await pool.acquire(url, timeout_s)
                await conn.send(head, content, timeout_s)
        except BaseException as exc:
            self._in_flight -= 1
            if conn is not None:
                conn.abort()
                pool.release(conn)
            if isinstance(exc, NotSent):
                raise UpstreamProtocolError("the upstream closed two connections before the request was sent") from None
            raise
        return pool, conn

    def _target(self, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {parts.scheme!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise httpx.UnsupportedProtocol("the URL's port is not a number") from None
        if not parts.hostname:
            raise httpx.UnsupportedProtocol("the URL has no host")
        origin = Origin(parts.scheme, parts.hostname, port)
        pool = self._pools.get(origin)
        proxy_url = environment_proxy(url)
        proxy = parse_proxy(proxy_url) if proxy_url else None
        if pool is None:
            needs_tls = origin.tls or (proxy is not None and proxy.tls)
            tls = self._tls_context() if needs_tls else None
            connector = Connector(origin, guard=self._guard, ssl_context=tls, proxy=proxy)
            pool = self._pools[origin] = ConnectionPool(
                connector.open, max_connections=self._max_connections, keepalive_expiry_s=self._keepalive_expiry_s
            )
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_QUERY_SAFE)
        forwarded = proxy is not None and not origin.tls  # plain http through a proxy: the absolute URL
        target = _Target(
            pool,
            f"{origin.scheme}://{origin.authority}{path}" if forwarded else path,
            origin.authority,
            proxy.authorization if forwarded and proxy is not None else None,
        )
        if len(self._targets) > 256:  # URLs carry the model name; keep the cache bounded
            self._targets.clear()
        self._targets[url] = target
        return target

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
            self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    async def _send_to_transport(
        self, method: str, url: str, content: bytes | None, headers: Mapping[str, str] | None, timeout_s: float
    ) -> UpstreamResponse:
        """The test path: the same request through an ``httpx`` transport, guard included."""
        assert self._transport is not None
        merged = self._merged(headers)
        if self._guard is not None:
            await self._guard.check_url(url)
        request = httpx.Request(method, url, content=content, headers=merged)
        request.extensions["timeout"] = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
        response = await self._transport.handle_async_request(request)
        raw_headers = list(response.headers.raw)
        if response.is_stream_consumed:  # built with its content: httpx has read and decoded it already
            return UpstreamResponse(response.status_code, raw_headers, content=response.content)
        self._in_flight += 1
        body = _TransportBody(response, self, self._max_body_bytes)
        return UpstreamResponse(response.status_code, raw_headers, source=body, limit=self._max_body_bytes)
