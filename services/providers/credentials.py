"""Credentials from the secrets service, cached in memory for their TTL.

Values live only in this process's memory. They are never logged, put on
spans, or included in errors: errors name the reference, never the value.
A cached value is dropped early when the secrets service announces that the
stored secret behind it changed (``modelbus.v1.secrets.changed``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import SpanKind

from shared import headers as H
from shared.envelopes import Credential, CredentialRequest, SecretChanged
from shared.errors import ProviderError, error_from_wire
from shared.subjects import SECRETS_CHANGED, SECRETS_GET
from shared.telemetry import inject_headers, record_error, tracer

_tracer = tracer("modelbus.providers.credentials")
_encoder = msgspec.json.Encoder()
_credential_decoder = msgspec.json.Decoder(Credential)
_change_decoder = msgspec.json.Decoder(SecretChanged)
log = logging.getLogger("modelbus.providers.credentials")


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
        self._generation = 0
        """Bumped by every invalidation; a fetch that raced one does not cache its answer."""
        self._watching: asyncio.Future[Subscription] | None = None

    def invalidate(self, ref: str | None = None) -> None:
        """Drop one cached credential, or all of them."""
        self._generation += 1
        if ref is None:
            self._values.clear()
        else:
            self._values.pop(ref, None)

    async def watch_invalidations(self) -> None:
        """Drop cached credentials whose stored secret changes; idempotent.

        Subscribes (no queue group: every worker holds its own cache) to
        ``modelbus.v1.secrets.changed`` and returns once the server has the
        subscription. ``secret:<name>`` and the bare ``<name>`` both refer to a
        stored secret, so both are dropped.
        """
        if self._watching is None:
            # One shared task, so concurrent first callers subscribe once.
            self._watching = asyncio.ensure_future(self._subscribe_changes())
        try:
            await asyncio.shield(self._watching)
        except Exception:
            self._watching = None
            raise

    async def _subscribe_changes(self) -> Subscription:
        sub = await self._nc.subscribe(SECRETS_CHANGED, cb=self._on_change)
        await self._nc.flush()
        return sub

    async def _on_change(self, msg: Msg) -> None:
        try:
            change = _change_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            # Unreadable, so we cannot tell which secret changed: drop them all.
            log.warning("unreadable secrets change event; dropping every cached credential")
            self.invalidate()
            return
        self.invalidate(f"secret:{change.name}")
        self.invalidate(change.name)

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
            await self._ensure_watching()
            value = await self._fetch(ref, endpoint)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it
            raise
        finally:
            del self._pending[ref]

    async def _ensure_watching(self) -> None:
        # Normally started with the worker; this covers a cache used on its own, and
        # runs before the first value is cached, so no later change can be missed.
        try:
            await self.watch_invalidations()
        except Exception as exc:
            # Still serve: without the watch a changed secret is only picked up at its TTL.
            log.warning("cannot watch %s (%s); cached credentials expire by TTL only", SECRETS_CHANGED, exc)

    async def _fetch(self, ref: str, endpoint: str) -> str:
        generation = self._generation
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
            if generation == self._generation:
                self._values[ref] = (cred.value, time.monotonic() + cred.ttl_s)
            return cred.value
