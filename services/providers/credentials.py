"""Credentials from the secrets service, cached in memory for their TTL.

Values live only in this process's memory. They are never logged, put on
spans, or included in errors: errors name the reference, never the value.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
from nats.aio.client import Client
from opentelemetry.trace import SpanKind

from shared import headers as H
from shared.envelopes import Credential, CredentialRequest
from shared.errors import ProviderError, error_from_wire
from shared.subjects import SECRETS_GET
from shared.telemetry import inject_headers, record_error, tracer

_tracer = tracer("modelbus.providers.credentials")
_encoder = msgspec.json.Encoder()
_credential_decoder = msgspec.json.Decoder(Credential)


class CredentialUnavailable(ProviderError):
    """The endpoint's credential could not be obtained; other targets may still work."""

    status = 502
    default_code = "credential_unavailable"
    default_retryable = True


class CredentialCache:
    """Fetch by reference over request/reply; coalesce concurrent misses."""

    def __init__(self, nc: Client, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._values: dict[str, tuple[str, float]] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}

    def invalidate(self, ref: str | None = None) -> None:
        """Drop one cached credential, or all of them."""
        if ref is None:
            self._values.clear()
        else:
            self._values.pop(ref, None)

    async def get(self, ref: str, endpoint: str) -> str:
        """The secret for ``ref``, from cache or the secrets service."""
        cached = self._values.get(ref)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        pending = self._pending.get(ref)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            value = await self._fetch(ref, endpoint)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it
            raise
        finally:
            del self._pending[ref]

    async def _fetch(self, ref: str, endpoint: str) -> str:
        with _tracer.start_as_current_span("secrets.get", kind=SpanKind.CLIENT) as span:
            span.set_attribute("modelbus.secret_ref", ref)
            headers = inject_headers({})
            try:
                msg = await self._nc.request(
                    SECRETS_GET,
                    _encoder.encode(CredentialRequest(ref=ref, endpoint=endpoint)),
                    timeout=self._timeout_s,
                    headers=dict(headers),
                )
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
                err = CredentialUnavailable(
                    f"credential {ref!r} for endpoint {endpoint!r}: secrets service did not answer"
                )
                record_error(span, err, err.http_status)
                raise err from exc
            status = int((msg.headers or {}).get(H.STATUS, "0") or 0)
            if status != 200:
                inner = error_from_wire(status, msg.data)
                err = CredentialUnavailable(f"credential for endpoint {endpoint!r}: {inner.message}")
                record_error(span, err, status)
                raise err
            cred = _credential_decoder.decode(msg.data)
            self._values[ref] = (cred.value, time.monotonic() + cred.ttl_s)
            return cred.value
