"""The provider worker: serve ``ProviderCall`` messages for each provider type.

One queue subscription per type (so adding workers adds capacity), one pooled
connection per endpoint spec, and one GenAI ``chat {model}`` span per call.
Every call gets exactly one outcome on the router's reply subject, and the
answer itself goes straight to the client (:mod:`services.providers.delivery`);
heartbeats and keepalives come from one timer (:class:`shared.mux.Beats`).

Two rules keep a worker from being turned against the bus or its callers:

* **Reply subjects.** A call is answered only when its reply subject is a
  router's inbox (``_INBOX_router.``; plus nats-py's ``_INBOX.`` without
  identities), checked before anything else: a call whose reply names
  ``$JS.API...``, ``$KV...`` or any other subject gets no upstream request and
  no answer, only a rate-limited warning. ``deliver_to`` must be a requester's
  inbox (``_INBOX_client.``, ``_INBOX_admin.``, ``_INBOX_config.``); any other
  is ignored and a completion goes to the router, which relays it (a stream
  without a valid ``deliver_to`` is refused with a 400). The broker
  enforces the same (:mod:`shared.identities`); this is the second line.
* **Errors.** Every error that leaves the worker, and every traceback it logs,
  is scrubbed of every credential the call sent, including fragments and
  encodings of them (:mod:`services.providers.scrub`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import Span, SpanKind

from services.providers.base import ChatAdapter, EndpointConnection, call_credential, call_secrets
from services.providers.credentials import CredentialCache
from services.providers.delivery import Delivery, stream_to_client
from services.providers.metrics import ProviderMetrics
from services.providers.outcomes import Outcomes
from services.providers.registry import ADAPTERS
from services.providers.scrub import CredentialScrubber
from services.providers.text_record import TextRecorder
from shared import headers as H
from shared import identities
from shared import metrics as M
from shared.bus import ReplyGuard, RequestServer, reply_error
from shared.chat import ChatCompletionRequest, Usage, encoder
from shared.envelopes import provider_call_decoder
from shared.errors import AuthFailed, InvalidRequest, ModelbusError, UpstreamTimeout, WorkerLost
from shared.formats.native import request_translated, request_view
from shared.mux import Beats
from shared.replies import time_left_s
from shared.routing import endpoint_decoder
from shared.subjects import provider_queue, provider_subject
from shared.telemetry import extract_context, record_error, tracer
from shared.usage import for_client, usage_header

log = logging.getLogger("modelbus.providers")
_tracer = tracer("modelbus.providers")

RETIRE_GRACE_S = 5.0
"""Extra time an old endpoint connection stays open after its spec changes."""
MAX_ADAPTERS = 512
"""Endpoint connections kept per worker; the least recently created go first (BYO hosts add up)."""
WARN_EVERY_S = 10.0
"""At most one warning per this many seconds about ignored ``deliver_to`` subjects."""


class ProviderWorker:
    """Serves the given provider types on their subjects."""

    def __init__(self, nc: Client, types: list[str], *, max_inflight: int = 256) -> None:
        unknown = [t for t in types if t not in ADAPTERS]
        if unknown:
            raise ValueError(f"no adapter for provider type(s) {', '.join(unknown)}; known: {', '.join(ADAPTERS)}")
        self.nc = nc
        self.types = types
        self.credentials = CredentialCache(nc)
        self.beats = Beats(nc)
        """Heartbeats to routers and keepalives to clients for the calls in flight."""
        self._adapters: dict[bytes, ChatAdapter] = {}
        self._retiring: set[ChatAdapter] = set()
        self._by_name: dict[str, bytes] = {}
        self.replies = ReplyGuard("providers", identities.requester_inboxes("providers"))
        """Reply subjects calls are answered on: routers' inboxes only."""
        self.deliveries = ReplyGuard("providers", identities.DELIVERY_INBOXES)
        """Where a completion may be delivered straight to its requester."""
        self.outcomes = Outcomes(nc, types, self.replies)
        """Calls in flight and just ended, for a router that missed their outcome and asks."""
        self.ignored_deliveries = 0
        self._last_delivery_warning = -WARN_EVERY_S
        self.metrics = ProviderMetrics(lambda: len(self.beats.held)) if M.metrics_enabled() else None
        """Prometheus metrics per call (``None``: MODELBUS_METRICS=off, no work at all)."""
        self.text = TextRecorder(nc)
        """Prompt and completion text of the calls routers mark (agents with ``record_text``)."""
        self._servers = [
            RequestServer(
                nc,
                provider_subject(t),
                self._serve_for(t),
                queue=provider_queue(t),
                max_inflight=max_inflight,
            )
            for t in types
        ]

    async def start(self) -> None:
        """Subscribe to secret invalidations, then to every type's subject."""
        await self.credentials.watch_invalidations()
        self.beats.start()
        await self.outcomes.start()
        for server in self._servers:
            await server.start()

    async def stop(self) -> None:
        """Finish calls in flight, then close pooled connections."""
        for server in self._servers:
            await server.stop()
        await self.outcomes.stop()
        await self.text.stop()
        await self.beats.stop()
        for adapter in self._adapters.values():
            await adapter.connection.aclose()

    def _adapter_for(self, raw_endpoint: bytes) -> ChatAdapter:
        """The adapter for an exact endpoint spec; built once and reused."""
        adapter = self._adapters.get(raw_endpoint)
        if adapter is not None:
            return adapter
        endpoint = endpoint_decoder.decode(raw_endpoint)
        adapter_type = ADAPTERS.get(endpoint.provider)
        if adapter_type is None:
            raise InvalidRequest(f"this worker has no adapter for provider {endpoint.provider!r}")
        adapter = adapter_type(EndpointConnection(endpoint, self.credentials.get))
        self._adapters[raw_endpoint] = adapter
        old = self._by_name.get(endpoint.name)
        self._by_name[endpoint.name] = raw_endpoint
        if old is not None and old != raw_endpoint:
            self._retire(old)  # the spec changed
        while len(self._adapters) > MAX_ADAPTERS:
            self._retire(next(iter(self._adapters)))
        return adapter

    def _retire(self, raw_endpoint: bytes) -> None:
        """Forget a connection and close its pool once calls on it have had time to end."""
        retired = self._adapters.pop(raw_endpoint, None)
        if retired is None:
            return
        name = retired.connection.endpoint.name
        if self._by_name.get(name) == raw_endpoint:
            del self._by_name[name]
        self._retiring.add(retired)
        delay = retired.connection.endpoint.timeout_ms / 1000 + RETIRE_GRACE_S
        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(self._close(retired)))

    async def _close(self, adapter: ChatAdapter) -> None:
        self._retiring.discard(adapter)
        await adapter.connection.aclose()

    def _delivery(self, deliver_to: str | None) -> str | None:
        """``deliver_to`` when it is a requester's inbox; otherwise ``None`` (answer via the router)."""
        if not deliver_to or self.deliveries.allows(deliver_to):
            return deliver_to
        self.ignored_deliveries += 1
        now = time.monotonic()
        if now - self._last_delivery_warning >= WARN_EVERY_S:
            self._last_delivery_warning = now
            log.warning(
                "ignored deliver_to %r: not a requester's inbox (%s); answering via the router (%d ignored so far)",
                deliver_to[:120],
                ", ".join(self.deliveries.prefixes),
                self.ignored_deliveries,
            )
        return None

    def _serve_for(self, provider_type: str):  # type: ignore[no-untyped-def]
        async def serve(msg: Msg) -> None:
            await self.serve_call(msg, provider_type)

        return serve

    async def serve_call(self, msg: Msg, provider_type: str) -> None:
        """Answer one ProviderCall, if its reply subject is a router's inbox."""
        reply = msg.reply
        if not self.replies.allows(reply):
            self.replies.refuse(msg.subject, reply)  # before any upstream call: no answer at all
            return
        used: set[str] = set()
        call_secrets.set(used)  # this task only, like call_credential
        in_headers = msg.headers or {}
        request_id = in_headers.get(H.REQUEST_ID)
        delivery: Delivery | None = None
        status = 500
        with _tracer.start_as_current_span("chat", context=extract_context(in_headers), kind=SpanKind.CLIENT) as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            adapter: ChatAdapter | None = None
            try:
                try:
                    call = provider_call_decoder.decode(msg.data)
                    adapter = self._adapter_for(bytes(call.endpoint))
                except msgspec.MsgspecError as exc:
                    raise InvalidRequest(f"malformed provider call: {exc}", code="invalid_provider_call") from exc
                if call.credential is not None:
                    used.add(call.credential)  # scrubbed even from errors raised before it is sent
                    call_credential.set(call.credential)  # this task only: never cached on the adapter
                body = bytes(call.request)
                fmt = call.format
                native = fmt is not None and getattr(adapter, "native_format", None) == fmt
                counting = call.operation is not None
                if counting and not (native and hasattr(adapter, "count_tokens_native")):
                    raise InvalidRequest(
                        f"{provider_type} endpoints do not count tokens, or not for this format",
                        code="count_unsupported",
                    )
                # A client's own body goes on as it came to an upstream of its API; any other is translated.
                request = request_view(fmt, body, count=counting) if native else request_translated(fmt, body)
                deliver_to = self._delivery(call.deliver_to)
                if request.stream and deliver_to is None:
                    raise InvalidRequest(
                        "a streamed call needs deliver_to, a requester's inbox", code="invalid_provider_call"
                    )
                delivery = Delivery.open(
                    self.nc,
                    reply,  # checked by the reply guard
                    deliver_to,
                    call.deliver_headers,
                    in_headers,
                    keepalive=call.keepalive or request.stream,
                )
                self.outcomes.begin(delivery)
                if not counting:
                    delivery.text = self.text.capture(
                        in_headers,
                        request=body,
                        endpoint=adapter.connection.endpoint.name,
                        provider=provider_type,
                        model=call.model,
                        stream=request.stream,
                        fmt=fmt,
                    )
                if delivery.stale:
                    raise WorkerLost("the call waited in this worker's queue past the router's patience; not started")
                _describe_call(span, adapter, call.model, request)
                timeout_s = time_left_s(in_headers, adapter.connection.endpoint.timeout_ms)
                self.beats.held.add(delivery.signal)
                if counting:
                    await self._count(delivery, adapter, body, call.model, timeout_s, provider_type)
                elif request.stream:
                    idle_s = (call.idle_timeout_ms or adapter.connection.endpoint.timeout_ms) / 1000
                    passthrough = (fmt, body) if native and fmt is not None else None
                    await self._stream(
                        delivery, adapter, request, call.model, timeout_s, idle_s, span, used, passthrough
                    )
                else:
                    own = (fmt, body) if native and fmt is not None else None
                    await self._complete(delivery, adapter, request, call.model, timeout_s, span, provider_type, own)
                status = 200
            except ModelbusError as err:
                status = err.http_status
                _sanitize(err, adapter, used)
                record_error(span, err, err.http_status)
                await self._failed(reply, delivery, err, request_id)
            except Exception as exc:
                log.error(
                    "internal error in %s adapter\n%s", provider_type, _scrubber(adapter, used).scrub_traceback(exc)
                )
                record_error(span, exc, 500)
                internal = ModelbusError(f"internal error in {provider_type} worker")
                await self._failed(reply, delivery, internal, request_id)
            finally:
                if delivery is not None:
                    self.beats.held.discard(delivery.signal)
                    self.outcomes.end(delivery)
                    if delivery.text is not None:
                        self.text.submit(delivery.text)  # the answer is out; published in the background
                    if self.metrics is not None and adapter is not None:
                        self.metrics.observe(
                            provider_type,
                            adapter.connection.endpoint.name,
                            call.model,
                            status,
                            time.perf_counter() - delivery.arrived,
                            delivery.overhead,
                        )

    async def _failed(self, reply: str, delivery: Delivery | None, err: ModelbusError, request_id: str | None) -> None:
        """The call's error outcome to the router (kept with the delivery once there is one)."""
        if delivery is not None:
            await delivery.failed(err)
        else:
            await reply_error(self.nc, reply, err, request_id=request_id)

    async def _complete(
        self,
        d: Delivery,
        adapter: ChatAdapter,
        request: ChatCompletionRequest,
        model: str,
        timeout_s: float,
        span: Span,
        provider_type: str,
        native: tuple[str, bytes] | None,
    ) -> None:
        """One non-streamed call: the completion to the client, a notice to the router.

        The whole call, not each socket operation, is bounded by the time left, so a
        completion is never delivered after the deadline the router keeps. With ``native``
        (``(format, body)``: the client's own body, to an upstream of its API) the client gets
        the upstream's answer as it came, marked with ``Modelbus-Format``.
        """
        raw: bytes | None = None
        before = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                if native is not None:
                    raw, completion = await adapter.complete_native(native[1], model, timeout_s=timeout_s)  # type: ignore[attr-defined]
                else:
                    completion = await adapter.complete(request, model, timeout_s=timeout_s)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{adapter.connection.endpoint.name!r} did not answer within {timeout_s:g}s", provider=provider_type
            ) from None
        d.upstream_s = time.perf_counter() - before
        _describe_response(
            span,
            completion.model,
            completion.id,
            completion.usage,
            [c.finish_reason for c in completion.choices if c.finish_reason],
        )
        headers = {H.STATUS: "200", H.PROVIDER: provider_type, H.MODEL: completion.model}
        if native is not None:
            headers[H.FORMAT] = native[0]
        usage = completion.usage
        if raw is None:
            shown = for_client(usage) if usage is not None else None
            body = encoder.encode(completion if shown is usage else msgspec.structs.replace(completion, usage=shown))
        else:
            body = raw
        await _deliver(d, body, headers, usage_header(usage) if usage else None)

    async def _count(
        self, d: Delivery, adapter: ChatAdapter, body: bytes, model: str, timeout_s: float, provider_type: str
    ) -> None:
        """A token count from the upstream (``Modelbus-Operation: count_tokens``), delivered as a completion is."""
        before = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                answer = await adapter.count_tokens_native(body, model, timeout_s=timeout_s)  # type: ignore[attr-defined]
        except TimeoutError:
            raise UpstreamTimeout(
                f"{adapter.connection.endpoint.name!r} did not count within {timeout_s:g}s", provider=provider_type
            ) from None
        d.upstream_s = time.perf_counter() - before
        headers = {H.STATUS: "200", H.PROVIDER: provider_type, H.MODEL: model, H.FORMAT: "anthropic"}
        await _deliver(d, answer, headers, None)

    async def _stream(
        self,
        d: Delivery,
        adapter: ChatAdapter,
        request: ChatCompletionRequest,
        model: str,
        timeout_s: float,
        idle_s: float,
        span: Span,
        used: set[str],
        native: tuple[str, bytes] | None,
    ) -> None:
        """Stream straight to the client (:func:`services.providers.delivery.stream_to_client`)."""

        def safe(exc: Exception) -> ModelbusError:
            if isinstance(exc, ModelbusError):
                _sanitize(exc, adapter, used)
                record_error(span, exc, exc.http_status)
                return exc
            log.error("internal error while streaming\n%s", _scrubber(adapter, used).scrub_traceback(exc))
            record_error(span, exc, 500)
            return ModelbusError("internal error while streaming")

        result = await stream_to_client(
            d, adapter, request, model, timeout_s=timeout_s, idle_s=idle_s, span=span, on_error=safe, native=native
        )
        if result is not None:
            _describe_response(
                span,
                result.model,
                result.response_id,
                result.usage_chunk.usage if result.usage_chunk else None,
                result.finish_reasons,
            )


async def _deliver(d: Delivery, body: bytes, headers: dict[str, str], usage: str | None) -> None:
    """An answer to the client (direct) with a notice to the router, or to the router alone."""
    if d.direct():
        # Straight to the client; the router gets a notice for its statistics,
        # breakers and budgets. Both go out in one flush.
        await d.to_client(body, {**d.deliver_headers, **headers, H.OVERHEAD_MS: d.overhead_ms()})
        body = b""
        headers[H.DELIVERED] = "1"
    elif d.text is not None:
        d.text.sent(body, headers)  # the router relays it
    if usage is not None:
        headers[H.USAGE] = usage
    await d.to_router(body, headers)


def _scrubber(adapter: ChatAdapter | None, used: set[str]) -> CredentialScrubber:
    """A scrubber of every credential the call sent, and of the endpoint's own ones."""
    if adapter is None:
        return CredentialScrubber(used)
    return adapter.connection.scrubber(used)


def _sanitize(err: ModelbusError, adapter: ChatAdapter | None, used: set[str]) -> None:
    """Make an adapter error safe to send: no credential may leave in it.

    Every credential the call sent (``used``, the BYO one included) and the
    endpoint's own are removed, whole, as any fragment of 8 or more characters,
    and in their common encodings (:mod:`services.providers.scrub`). An upstream
    auth failure loses the upstream's text entirely: providers quote keys in
    them, sometimes the one they *expected* (which we never sent, so scrubbing
    cannot catch it).
    """
    _scrubber(adapter, used).scrub_error(err)
    if adapter is not None and isinstance(err, AuthFailed):
        endpoint = adapter.connection.endpoint
        ref = f" (credential {endpoint.auth_ref})" if endpoint.auth_ref else ""
        err.message = (
            f"endpoint {endpoint.name!r}: the provider rejected the credential with {err.http_status}{ref}; "
            "its own message is withheld because it can quote keys"
        )
        err.args = (err.message,)


def _describe_call(span: Span, adapter: ChatAdapter, model: str, request: ChatCompletionRequest) -> None:
    span.update_name(f"chat {model}")
    span.set_attribute("gen_ai.provider.name", adapter.gen_ai_provider)
    span.set_attribute("gen_ai.request.model", model)
    endpoint = adapter.connection.endpoint
    span.set_attribute("modelbus.endpoint", endpoint.name)
    if request.output_token_limit is not None:
        span.set_attribute("gen_ai.request.max_tokens", request.output_token_limit)
    if request.temperature is not None:
        span.set_attribute("gen_ai.request.temperature", request.temperature)
    if request.top_p is not None:
        span.set_attribute("gen_ai.request.top_p", request.top_p)


def _describe_response(span: Span, model: str, response_id: str | None, usage: Usage | None, finish: list[str]) -> None:
    span.set_attribute("gen_ai.response.model", model)
    if response_id:
        span.set_attribute("gen_ai.response.id", response_id)
    if finish:
        span.set_attribute("gen_ai.response.finish_reasons", finish)
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
