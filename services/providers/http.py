"""HTTP helpers every network adapter uses at its boundary, and its pooled client."""

from __future__ import annotations

import datetime
import email.utils
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpcore
import httpx
import msgspec

from services.providers.netio import AsyncioBackend
from shared.errors import ProviderError, UpstreamTimeout, UpstreamUnavailable, error_from_status

ANTHROPIC_RESETS = (
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, ``retry-after`` (seconds or HTTP date), or
    Anthropic's ``anthropic-ratelimit-*-reset`` RFC 3339 times (the latest one) as a fallback."""
    hint = _standard_retry_after(headers)
    if hint is not None:
        return hint
    resets = [_rfc3339_in(headers.get(name)) for name in ANTHROPIC_RESETS]
    known = [r for r in resets if r is not None]
    return max(known) if known else None


def _rfc3339_in(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _standard_retry_after(headers: Mapping[str, str]) -> float | None:
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


def status_error(response: httpx.Response, body: bytes, *, provider: str, model: str) -> ProviderError:
    """Map a non-2xx upstream response to the error tree."""
    return error_from_status(
        response.status_code,
        f"{provider} returned {response.status_code}: {upstream_message(body, response.status_code)}",
        provider=provider,
        model=model,
        retry_after=parse_retry_after(response.headers),
    )


def transport_error(exc: httpx.HTTPError, *, endpoint: str, provider: str, model: str) -> ProviderError:
    """Map an httpx transport failure. The exception text is not included: it can
    carry the request URL, and some providers put keys in URLs."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{endpoint}: upstream timed out ({type(exc).__name__})", provider=provider, model=model)
    return UpstreamUnavailable(
        f"{endpoint}: cannot reach upstream ({type(exc).__name__})", provider=provider, model=model
    )


DEFAULT_HEADERS = {"accept": "*/*", "accept-encoding": "gzip, deflate", "user-agent": "modelbus"}
"""Sent on every upstream request unless the adapter sets its own."""

Check = Callable[[str], Awaitable[None]]
"""Called with each request's URL before it is sent (the SSRF guard); raises to refuse."""

_CORE_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _as_httpx_error(exc: Exception) -> Exception:
    """The ``httpx`` exception adapters catch for an ``httpcore`` one (what httpx's transport raises)."""
    for core, ours in _CORE_ERRORS:
        if isinstance(exc, core):
            return ours(str(exc))
    return exc


class _Target(NamedTuple):
    """A URL parsed once: what httpcore needs to send a request to it."""

    url: httpcore.URL
    host: bytes


class _BodyStream(httpx.AsyncByteStream):
    """An httpcore response body as an ``httpx`` stream, with httpx's exceptions."""

    def __init__(self, stream: Any, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _as_httpx_error(exc) from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()
            await self._stream.aclose()


class UpstreamClient:
    """A pooled HTTP/1.1 client for one endpoint, on httpcore (the engine under httpx).

    Adapters send one kind of request (a POST with a body and explicit headers)
    and need none of what ``httpx.AsyncClient`` adds per request: cookie jars (a
    provider's cookies must not leak from one tenant's call to the next anyway),
    auth flows, redirects (never followed: a public URL must not bounce a request
    into private space), event hooks, URL re-parsing and its transport's second
    wrapping of every request and response. This client sends the request on
    httpcore's connection pool and hands the adapter an ordinary
    ``httpx.Response`` (status, headers, ``content``/``aread``/``aiter_lines``,
    gzip decoding) and ``httpx`` exceptions, so adapters are written against
    httpx as usual. Parsed URLs are cached (an endpoint calls few).

    Connections live in ``shards`` independent pools and each request goes to
    the least busy one. httpcore re-examines every connection of a pool (a
    socket poll for each idle one) whenever a request starts or ends, so one
    pool of 32 busy connections spent most of a provider worker's CPU at 32
    requests in flight; shards keep each pool small. With one request in flight
    only the first shard is used, so its connection stays warm.

    Connections are asyncio streams (:mod:`services.providers.netio`), not
    anyio's. Proxies come from the environment (``HTTPS_PROXY``, ``NO_PROXY``),
    as with httpx; TLS is verified with httpx's default context (certifi) unless
    an ``ssl_context`` is given. Tests pass an ``httpx`` ``transport`` instead
    of the pools.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        check: Check | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 256,
        shards: int = 32,
        keepalive_expiry_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = httpx.Timeout(timeout_s).as_dict()
        self._check = check
        self._transport = transport
        self._shard_count = shards
        self._per_shard = max(1, -(-max_connections // shards))
        self._keepalive_expiry_s = keepalive_expiry_s
        self._ssl_context = ssl_context
        self._pools: list[httpcore.AsyncConnectionPool] = []
        self._busy: list[int] = [0] * shards
        self._targets: dict[str, _Target] = {}
        self._closed = False

    # ------------------------------------------------------------ plumbing

    def _open_pools(self, url: str) -> None:
        # One endpoint talks to one host, so the proxy decision is made once.
        proxy_url = _environment_proxy(url)
        proxy = httpcore.Proxy(proxy_url) if proxy_url else None
        ssl_context = self._ssl_context or httpx.create_ssl_context()
        backend = AsyncioBackend()
        self._pools = [
            httpcore.AsyncConnectionPool(
                ssl_context=ssl_context,
                proxy=proxy,
                max_connections=self._per_shard,
                max_keepalive_connections=self._per_shard,
                keepalive_expiry=self._keepalive_expiry_s,
                network_backend=backend,
            )
            for _ in range(self._shard_count)
        ]

    def _pick(self, url: str) -> int:
        """The least busy shard, creating the pools on first use."""
        if not self._pools:
            self._open_pools(url)
        busy = self._busy
        index = busy.index(min(busy))
        busy[index] += 1
        return index

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parsed = httpcore.URL(url)
            default_port = 443 if parsed.scheme == b"https" else 80
            host = parsed.host if parsed.port in (None, default_port) else b"%b:%d" % (parsed.host, parsed.port)
            if len(self._targets) > 256:  # URLs carry the model name; keep the cache bounded
                self._targets.clear()
            target = self._targets[url] = _Target(parsed, host)
        return target

    def _timeout_for(self, timeout_s: float | None) -> dict[str, float | None]:
        if timeout_s is None:
            return self._timeout
        return {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}

    async def _send(
        self, method: str, url: str, content: bytes | None, headers: Mapping[str, str] | None, timeout: float | None
    ) -> httpx.Response:
        """Send; the response body is left to read. The caller must ``aclose`` the response."""
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        if self._check is not None:
            await self._check(url)
        merged = {**DEFAULT_HEADERS, **headers} if headers else DEFAULT_HEADERS
        if self._transport is not None:
            request = httpx.Request(method, url, content=content, headers=merged)
            request.extensions["timeout"] = self._timeout_for(timeout)
            response = await self._transport.handle_async_request(request)
            response.request = request
            return response
        target = self._target(url)
        raw_headers = [(b"Host", target.host)]
        raw_headers.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in merged.items())
        if content is not None:
            raw_headers.append((b"Content-Length", b"%d" % len(content)))
        core_request = httpcore.Request(
            method.encode("ascii"),
            target.url,
            headers=raw_headers,
            content=content,
            extensions={"timeout": self._timeout_for(timeout)},
        )
        shard = self._pick(url)
        try:
            core = await self._pools[shard].handle_async_request(core_request)
        except Exception as exc:
            self._busy[shard] -= 1
            raise _as_httpx_error(exc) from exc
        except BaseException:
            self._busy[shard] -= 1
            raise

        def release() -> None:
            self._busy[shard] -= 1

        return httpx.Response(core.status, headers=core.headers, stream=_BodyStream(core.stream, release))

    # ------------------------------------------------------------ what adapters call

    async def post(
        self,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send a request and read the whole response body."""
        response = await self._send("POST", url, content, headers, timeout)
        stream = response.stream
        if not isinstance(stream, _BodyStream):  # an httpx transport (tests)
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response
        try:
            body = b"".join([chunk async for chunk in stream])
        finally:
            await stream.aclose()
        # A complete body: httpx decodes it (gzip, ...) once, without its async chunking chain.
        return httpx.Response(response.status_code, headers=response.headers, content=body)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request; the body is read by the caller (``aiter_lines``, ``aiter_bytes``, ``aread``)."""
        response = await self._send(method, url, content, headers, timeout)
        try:
            yield response
        finally:
            await response.aclose()

    @property
    def in_flight(self) -> int:
        """Requests sent whose response is not closed yet."""
        return sum(self._busy)

    async def aclose(self) -> None:
        """Close pooled connections; the client cannot be used again."""
        self._closed = True
        for pool in self._pools:
            await pool.aclose()
        if self._transport is not None:
            await self._transport.aclose()


def _environment_proxy(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY``/``ALL_PROXY`` name for ``url``, unless ``NO_PROXY`` exempts its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxy
