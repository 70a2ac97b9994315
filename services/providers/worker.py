"""The provider worker: serve ``ProviderCall`` messages for each provider type.

One queue subscription per type (so adding workers adds capacity), one pooled
connection per endpoint spec, and one GenAI ``chat {model}`` span per call.
Every call gets exactly one final answer: a completion, an error reply, or a
stream that ends with ``Modelbus-Stream: end``.

Two rules keep a worker from being turned against the bus or its callers:

* **Reply subjects.** A call is answered only when its reply subject is a
  router's inbox (``_INBOX_router.``; plus nats-py's ``_INBOX.`` without
  identities), checked before anything else: a call whose reply names
  ``$JS.API...``, ``$KV...`` or any other subject gets no upstream request and
  no answer, only a rate-limited warning. ``deliver_to`` must be a requester's
  inbox (``_INBOX_client.``, ``_INBOX_admin.``, ``_INBOX_config.``); any other
  is ignored and the answer goes to the router, which relays it. The broker
  enforces the same (:mod:`shared.identities`); this is the second line.
* **Errors.** Every error that leaves the worker, and every traceback it logs,
  is scrubbed of every credential the call sent, including fragments and
  encodings of them (:mod:`services.providers.scrub`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import Span, SpanKind

from services.providers.base import ChatAdapter, EndpointConnection, call_credential, call_secrets
from services.providers.credentials import CredentialCache
from services.providers.registry import ADAPTERS
from services.providers.scrub import CredentialScrubber
from shared import headers as H
from shared import identities
from shared.bus import ReplyGuard, RequestServer, reply_error
from shared.chat import ChatCompletionChunk, ChatCompletionRequest, Usage, decode_request, encoder
from shared.envelopes import provider_call_decoder
from shared.errors import AuthFailed, InvalidRequest, ModelbusError
from shared.routing import endpoint_decoder
from shared.subjects import provider_queue, provider_subject
from shared.telemetry import extract_context, record_error, tracer

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
        self._adapters: dict[bytes, ChatAdapter] = {}
        self._retiring: set[ChatAdapter] = set()
        self._by_name: dict[str, bytes] = {}
        self.replies = ReplyGuard("providers", identities.requester_inboxes("providers"))
        """Reply subjects calls are answered on: routers' inboxes only."""
        self.deliveries = ReplyGuard("providers", identities.DELIVERY_INBOXES)
        """Where a completion may be delivered straight to its requester."""
        self.ignored_deliveries = 0
        self._last_delivery_warning = -WARN_EVERY_S
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
        for server in self._servers:
            await server.start()

    async def stop(self) -> None:
        """Finish calls in flight, then close pooled connections."""
        for server in self._servers:
            await server.stop()
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
        streaming = False
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
                request = decode_request(bytes(call.request))
                deliver_to = self._delivery(call.deliver_to)
                streaming = request.stream
                _describe_call(span, adapter, call.model, request)
                timeout_s = _timeout_s(in_headers, adapter.connection.endpoint.timeout_ms)
                if streaming:
                    await self._stream(reply, adapter, request, call.model, timeout_s, span, request_id, used)
                else:
                    completion = await adapter.complete(request, call.model, timeout_s=timeout_s)
                    _describe_response(
                        span,
                        completion.model,
                        completion.id,
                        completion.usage,
                        [c.finish_reason for c in completion.choices if c.finish_reason],
                    )
                    headers = {H.STATUS: "200", H.PROVIDER: provider_type, H.MODEL: completion.model}
                    body = encoder.encode(completion)
                    if deliver_to:
                        # Straight to the client; the router gets a notice for its
                        # statistics, breakers and budgets. Both go out in one flush.
                        await self.nc.publish(deliver_to, body, headers={**call.deliver_headers, **headers})
                        body = b""
                        headers[H.DELIVERED] = "1"
                    if completion.usage is not None:
                        headers[H.USAGE] = f"{completion.usage.prompt_tokens} {completion.usage.completion_tokens}"
                    await self.nc.publish(reply, body, headers=headers)
            except ModelbusError as err:
                _sanitize(err, adapter, used)
                record_error(span, err, err.http_status)
                if not streaming:
                    await reply_error(self.nc, reply, err, request_id=request_id)
            except Exception as exc:
                log.error(
                    "internal error in %s adapter\n%s", provider_type, _scrubber(adapter, used).scrub_traceback(exc)
                )
                record_error(span, exc, 500)
                if not streaming:
                    await reply_error(
                        self.nc,
                        reply,
                        ModelbusError(f"internal error in {provider_type} worker"),
                        request_id=request_id,
                    )

    async def _stream(
        self,
        reply: str,
        adapter: ChatAdapter,
        request: ChatCompletionRequest,
        model: str,
        timeout_s: float,
        span: Span,
        request_id: str | None,
        used: set[str],
    ) -> None:
        """Publish chunks as they arrive; end with a terminator whatever happens."""
        seq = 0
        started = time.monotonic()
        usage_chunk: ChatCompletionChunk | None = None
        last: ChatCompletionChunk | None = None
        finish_reasons: list[str] = []
        try:
            async for chunk in adapter.stream(request, model, timeout_s=timeout_s):
                if chunk.usage is not None:
                    # Usage always travels as its own final chunk (OpenAI's shape),
                    # in the terminator, and only when the client asked for it;
                    # some upstreams attach it to a content chunk instead.
                    usage_chunk = msgspec.structs.replace(chunk, choices=[])
                    if not chunk.choices:
                        continue
                    chunk = msgspec.structs.replace(chunk, usage=None)
                if seq == 0:
                    span.set_attribute("gen_ai.response.time_to_first_chunk", time.monotonic() - started)
                finish_reasons.extend(c.finish_reason for c in chunk.choices if c.finish_reason)
                last = chunk
                await self.nc.publish(reply, encoder.encode(chunk), headers={H.SEQ: str(seq)})
                seq += 1
        except ModelbusError as err:
            _sanitize(err, adapter, used)
            record_error(span, err, err.http_status)
            await reply_error(
                self.nc, reply, err, request_id=request_id, extra={H.STREAM: H.STREAM_END, H.SEQ: str(seq)}
            )
            return
        except Exception as exc:
            log.error("internal error while streaming\n%s", _scrubber(adapter, used).scrub_traceback(exc))
            record_error(span, exc, 500)
            await reply_error(
                self.nc,
                reply,
                ModelbusError("internal error while streaming"),
                request_id=request_id,
                extra={H.STREAM: H.STREAM_END, H.SEQ: str(seq)},
            )
            return
        response_model = last.model if last is not None else model
        _describe_response(
            span, response_model, last.id if last else None, usage_chunk.usage if usage_chunk else None, finish_reasons
        )
        body = encoder.encode(usage_chunk) if usage_chunk is not None and request.include_usage else b""
        end = {
            H.STATUS: "200",
            H.STREAM: H.STREAM_END,
            H.SEQ: str(seq),
            H.PROVIDER: adapter.connection.endpoint.provider,
            H.MODEL: response_model,
        }
        if usage_chunk is not None and usage_chunk.usage is not None:
            end[H.USAGE] = f"{usage_chunk.usage.prompt_tokens} {usage_chunk.usage.completion_tokens}"
        await self.nc.publish(reply, body, headers=end)


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


def _timeout_s(headers: Mapping[str, str], endpoint_timeout_ms: int) -> float:
    """The tighter of the endpoint's timeout and the time the router says is left."""
    left = headers.get(H.TIMEOUT_MS)
    ms = endpoint_timeout_ms
    if left is not None:
        try:
            ms = min(ms, max(1, int(left)))
        except ValueError:
            pass
    return ms / 1000


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
