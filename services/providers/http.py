"""HTTP helpers every network adapter uses at its boundary, and its pooled client."""

from __future__ import annotations

import datetime
import email.utils
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import msgspec

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


class UpstreamClient:
    """A pooled HTTP client for one endpoint: ``httpx`` transports without ``AsyncClient``.

    Adapters send one kind of request (a POST with a body and explicit headers)
    and need none of what ``AsyncClient`` adds per request: cookie jars (a
    provider's cookies must not leak from one tenant's call to the next anyway),
    auth flows, redirects (never followed: a public URL must not bounce a request
    into private space), event hooks and URL merging.

    Connections live in ``shards`` independent ``httpx.AsyncHTTPTransport`` pools
    and each request goes to the least busy one. httpcore re-examines every
    connection of a pool (a socket poll for each idle one) whenever a request
    starts or ends, so one pool of 32 busy connections spent most of a provider
    worker's CPU at 32 requests in flight; shards keep each pool small. At one
    request in flight only the first shard is used, so its connection stays warm.

    Keep-alive, timeouts, proxies from the environment (``HTTPS_PROXY``,
    ``NO_PROXY``) and ``httpx`` exceptions are those of ``httpx`` itself.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        check: Check | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 256,
        shards: int = 8,
    ) -> None:
        self._timeout = httpx.Timeout(timeout_s).as_dict()
        self._timeouts: dict[float, dict[str, float | None]] = {}
        self._check = check
        per_shard = max(1, -(-max_connections // shards))
        self._limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self._shards: list[httpx.AsyncBaseTransport] = [transport] if transport is not None else []
        self._shard_count = 1 if transport is not None else shards
        self._busy: list[int] = [0] * self._shard_count
        self._closed = False

    def _pick(self, url: str) -> int:
        """The least busy shard, creating the pools on first use."""
        if not self._shards:
            # One endpoint talks to one host, so the proxy decision is made once.
            proxy = _environment_proxy(url)
            self._shards = [
                httpx.AsyncHTTPTransport(limits=self._limits, proxy=proxy) for _ in range(self._shard_count)
            ]
        busy = self._busy
        index = busy.index(min(busy))
        busy[index] += 1
        return index

    def _timeout_for(self, timeout_s: float | None) -> dict[str, float | None]:
        if timeout_s is None:
            return self._timeout
        cached = self._timeouts.get(timeout_s)
        if cached is None:
            if len(self._timeouts) > 256:  # deadlines vary per call; keep the cache small
                self._timeouts.clear()
            cached = self._timeouts[timeout_s] = httpx.Timeout(timeout_s).as_dict()
        return cached

    async def _send(
        self, method: str, url: str, content: bytes | None, headers: Mapping[str, str] | None, timeout: float | None
    ) -> tuple[httpx.Response, int]:
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        if self._check is not None:
            await self._check(url)
        request = httpx.Request(
            method,
            url,
            content=content,
            headers={**DEFAULT_HEADERS, **headers} if headers else DEFAULT_HEADERS,
            extensions={"timeout": self._timeout_for(timeout)},
        )
        shard = self._pick(url)
        try:
            response = await self._shards[shard].handle_async_request(request)
        except BaseException:
            self._busy[shard] -= 1
            raise
        response.request = request
        return response, shard

    async def post(
        self,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send a request and read the whole response body."""
        response, shard = await self._send("POST", url, content, headers, timeout)
        try:
            await response.aread()
        finally:
            self._busy[shard] -= 1
            await response.aclose()
        return response

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
        response, shard = await self._send(method, url, content, headers, timeout)
        try:
            yield response
        finally:
            self._busy[shard] -= 1
            await response.aclose()

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet finished."""
        return sum(self._busy)

    async def aclose(self) -> None:
        """Close pooled connections; the client cannot be used again."""
        self._closed = True
        for shard in self._shards:
            await shard.aclose()


def _environment_proxy(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY``/``ALL_PROXY`` name for ``url``, unless ``NO_PROXY`` exempts its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxy
