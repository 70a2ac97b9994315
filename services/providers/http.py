"""HTTP helpers every network adapter uses at its boundary."""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Mapping

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
