"""The router worker: resolve each request and forward it to a provider worker.

Configuration arrives from the config service's KV bucket (current value, then
every change, with no gap between them) and is swapped in as a new immutable
:class:`RoutingTable` in one assignment. Requests are served by a raw nats-py
queue subscription (see :mod:`shared.bus` for why), and every request gets
exactly one final answer: a reply, an error reply, or a stream terminator.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from services.router.follower import TableFollower
from services.router.pins import RunPins
from services.router.table import ResolvedTarget, Route, RoutingTable
from shared import headers as H
from shared.bus import RequestServer, reply_error, retry_after_from
from shared.chat import ChatCompletionRequest, decode_request
from shared.envelopes import ProviderCall, provider_call_encoder
from shared.errors import (
    BadUpstreamResponse,
    DeadlineExceeded,
    InvalidRequest,
    ModelbusError,
    NoRouteAvailable,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_wire,
)
from shared.subjects import CHAT_COMPLETIONS, ROUTER_QUEUE
from shared.telemetry import extract_context, inject_headers, record_error, tracer

log = logging.getLogger("modelbus.router")
_tracer = tracer("modelbus.router")

STREAM_STALL_S = 60.0
"""Longest silence tolerated between two stream messages from a provider."""


class _Attempt(Exception):
    """Internal: an attempt failed before anything reached the client."""

    def __init__(self, error: ModelbusError) -> None:
        self.error = error


class Router:
    """One router worker."""

    def __init__(self, nc: Client, *, max_inflight: int = 512) -> None:
        self.nc = nc
        self.router_id = uuid.uuid4().hex[:12]
        self._server = RequestServer(
            nc, CHAT_COMPLETIONS, self.serve_request, queue=ROUTER_QUEUE, max_inflight=max_inflight
        )
        self.follower = TableFollower(nc, self.router_id, lambda: self._server.in_flight)
        self.pins = RunPins(nc)

    @property
    def table(self) -> RoutingTable | None:
        """The routing table of the newest revision."""
        return self.follower.current

    # ------------------------------------------------------------ life cycle

    async def start(self, config_timeout_s: float = 60.0) -> None:
        """Load the current configuration, then start serving requests."""
        await self.follower.start(config_timeout_s)
        await self._server.start()

    async def stop(self) -> None:
        """Stop taking requests and let those in flight finish."""
        await self._server.stop()
        await self.follower.stop()

    async def _table_for(self, table: RoutingTable, headers: Mapping[str, str]) -> RoutingTable:
        """The table a request routes on: its run's pinned revision, or the current one."""
        run_id = headers.get(H.RUN_ID)
        if run_id is None:
            return table
        revision = await self.pins.revision_for(run_id, table.revision, table.defaults.run_pin_ttl_s)
        if revision == table.revision:
            return table
        pinned = await self.follower.table_at(revision)
        if pinned is None:
            log.warning("run pinned to revision %d, which is no longer in history; using %d", revision, table.revision)
            return table
        return pinned

    # ------------------------------------------------------------ hot path

    async def serve_request(self, msg: Msg) -> None:
        """Answer one client request, whatever happens."""
        reply = msg.reply
        in_headers = msg.headers or {}
        request_id = in_headers.get(H.REQUEST_ID) or uuid.uuid4().hex
        if not reply:
            log.warning("dropping request %s with no reply subject", request_id)
            return
        with _tracer.start_as_current_span(
            "route chat.completions", context=extract_context(in_headers), kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("modelbus.request_id", request_id)
            streaming = False
            try:
                table = self.follower.current
                if table is None:
                    raise NoRouteAvailable("router has no configuration yet")
                if len(msg.data) > table.defaults.max_request_bytes:
                    raise PayloadTooLarge(
                        f"request body is {len(msg.data)} bytes; the limit is {table.defaults.max_request_bytes}"
                    )
                request = decode_request(msg.data)
                streaming = request.stream
                deadline = time.monotonic() + _timeout_s(in_headers, table.defaults.timeout_ms)
                _check_sensitivity(in_headers)
                table = await self._table_for(table, in_headers)
                agent = in_headers.get(H.AGENT)
                route = table.resolve_agent(agent) if agent else table.resolve(request.model)
                if not route.targets:
                    raise NoRouteAvailable(f"{route.name!r} has no usable targets")
                span.set_attribute("modelbus.model_requested", request.model or "")
                span.set_attribute("modelbus.config_revision", table.revision)
                if streaming:
                    await self._stream(msg, reply, request_id, route, deadline, table.revision)
                else:
                    await self._complete(msg, reply, request_id, route, deadline, table.revision)
            except ModelbusError as err:
                record_error(span, err, err.http_status)
                extra = {H.STREAM: H.STREAM_END, H.SEQ: "0"} if streaming else None
                await reply_error(self.nc, reply, err, request_id=request_id, extra=extra)
            except Exception as exc:
                log.exception("internal error on request %s", request_id)
                record_error(span, exc, 500)
                extra = {H.STREAM: H.STREAM_END, H.SEQ: "0"} if streaming else None
                await reply_error(
                    self.nc, reply, ModelbusError("internal router error"), request_id=request_id, extra=extra
                )

    def _call(
        self, target: ResolvedTarget, msg: Msg, attempt: int, deadline: float, request_id: str
    ) -> tuple[bytes, dict[str, str]]:
        body = provider_call_encoder.encode(
            ProviderCall(
                endpoint=target.endpoint_raw, model=target.model, request=msgspec.Raw(msg.data), attempt=attempt
            )
        )
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        hdrs = {H.TIMEOUT_MS: str(left_ms), H.REQUEST_ID: request_id}
        inject_headers(hdrs)
        return body, hdrs

    async def _complete(
        self, msg: Msg, reply: str, request_id: str, route: Route, deadline: float, revision: int
    ) -> None:
        last: ModelbusError | None = None
        attempt = 0
        for attempt, target in enumerate(route.targets, start=1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise _deadline_error(route, attempt - 1)
            with _tracer.start_as_current_span(f"attempt {target.endpoint.name}", kind=SpanKind.CLIENT) as span:
                _describe_attempt(span, target, attempt)
                body, hdrs = self._call(target, msg, attempt, deadline, request_id)
                try:
                    resp = await self.nc.request(target.subject, body, timeout=left, headers=hdrs)
                except nats.errors.NoRespondersError:
                    last = UpstreamUnavailable(
                        f"no provider worker serves provider type {target.endpoint.provider!r}",
                        provider=target.endpoint.provider,
                        code="no_provider_worker",
                    )
                    record_error(span, last, last.http_status)
                    continue
                except nats.errors.TimeoutError:
                    raise _deadline_error(route, attempt) from None
                resp_headers = resp.headers or {}
                status = int(resp_headers.get(H.STATUS, "0") or 0)
                span.set_attribute("modelbus.status", status)
                if status == 200:
                    out = _success_headers(resp_headers, target, attempt, request_id, revision)
                    out[H.ROUTER] = self.router_id
                    await self.nc.publish(reply, resp.data, headers=out)
                    return
                last = error_from_wire(status, resp.data, retry_after=retry_after_from(resp_headers))
                record_error(span, last, status)
                if not last.retryable:
                    break
        assert last is not None
        await reply_error(self.nc, reply, last, request_id=request_id, extra={H.ATTEMPTS: str(attempt)})

    async def _stream(
        self, msg: Msg, reply: str, request_id: str, route: Route, deadline: float, revision: int
    ) -> None:
        last: ModelbusError | None = None
        attempt = 0
        for attempt, target in enumerate(route.targets, start=1):
            if deadline - time.monotonic() <= 0:
                raise _deadline_error(route, attempt - 1)
            with _tracer.start_as_current_span(f"attempt {target.endpoint.name}", kind=SpanKind.CLIENT) as span:
                _describe_attempt(span, target, attempt)
                try:
                    await self._relay_stream(msg, reply, request_id, target, attempt, deadline, revision)
                    return
                except _Attempt as failed:
                    last = failed.error
                    record_error(span, last, last.http_status)
                    if not last.retryable:
                        break
        assert last is not None
        await reply_error(
            self.nc,
            reply,
            last,
            request_id=request_id,
            extra={H.STREAM: H.STREAM_END, H.SEQ: "0", H.ATTEMPTS: str(attempt)},
        )

    async def _relay_stream(
        self,
        msg: Msg,
        reply: str,
        request_id: str,
        target: ResolvedTarget,
        attempt: int,
        deadline: float,
        revision: int,
    ) -> None:
        """Relay one attempt's stream to the client.

        Until the first chunk is relayed, a failure raises :class:`_Attempt` so
        the caller may try the next target. After it, any failure (error
        terminator, stall, gap in the sequence) ends the client's stream with
        an error terminator; a broken stream never ends like a clean one.
        """
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        seq = 0
        try:
            body, hdrs = self._call(target, msg, attempt, deadline, request_id)
            await self.nc.publish(target.subject, body, reply=inbox, headers=hdrs)
            while True:
                left = deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise nats.errors.TimeoutError
                    part = await sub.next_msg(timeout=min(left, STREAM_STALL_S))
                except nats.errors.TimeoutError:
                    err: ModelbusError = (
                        DeadlineExceeded(f"deadline exceeded while streaming from {target.endpoint.name!r}")
                        if left <= STREAM_STALL_S
                        else UpstreamTimeout(f"stream from {target.endpoint.name!r} stalled", retryable=seq == 0)
                    )
                    if seq == 0:
                        raise _Attempt(err) from None
                    await self._terminate(reply, err, seq, request_id, attempt)
                    return
                except nats.errors.NoRespondersError:
                    raise _Attempt(
                        UpstreamUnavailable(
                            f"no provider worker serves provider type {target.endpoint.provider!r}",
                            code="no_provider_worker",
                        )
                    ) from None
                part_headers = part.headers or {}
                if part_headers.get("Status") == "503" and not part.data:
                    # The server's no-responders status, delivered to our inbox.
                    raise _Attempt(
                        UpstreamUnavailable(
                            f"no provider worker serves provider type {target.endpoint.provider!r}",
                            code="no_provider_worker",
                        )
                    )
                if part_headers.get(H.SEQ) != str(seq):
                    await self._terminate(
                        reply,
                        BadUpstreamResponse(
                            f"stream from {target.endpoint.name!r} lost messages: got "
                            f"{part_headers.get(H.SEQ)}, expected {seq}"
                        ),
                        seq,
                        request_id,
                        attempt,
                    )
                    return
                if part_headers.get(H.STREAM) == H.STREAM_END:
                    status = int(part_headers.get(H.STATUS, "0") or 0)
                    if status != 200:
                        error = error_from_wire(status, part.data, retry_after=retry_after_from(part_headers))
                        if seq == 0:
                            raise _Attempt(error)
                        await self._terminate(reply, error, seq, request_id, attempt)
                        return
                    out = _success_headers(part_headers, target, attempt, request_id, revision)
                    out[H.ROUTER] = self.router_id
                    out[H.STREAM] = H.STREAM_END
                    out[H.SEQ] = str(seq)
                    await self.nc.publish(reply, part.data, headers=out)
                    return
                await self.nc.publish(reply, part.data, headers={H.SEQ: str(seq)})
                seq += 1
        finally:
            await sub.unsubscribe()

    async def _terminate(self, reply: str, err: ModelbusError, seq: int, request_id: str, attempt: int) -> None:
        await reply_error(
            self.nc,
            reply,
            err,
            request_id=request_id,
            extra={H.STREAM: H.STREAM_END, H.SEQ: str(seq), H.ATTEMPTS: str(attempt)},
        )


def _timeout_s(headers: Mapping[str, str], default_ms: int) -> float:
    raw = headers.get(H.TIMEOUT_MS)
    if raw is None:
        return default_ms / 1000
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"{H.TIMEOUT_MS} must be a whole number of milliseconds, got {raw!r}", param=H.TIMEOUT_MS
        ) from None
    if value <= 0:
        raise InvalidRequest(f"{H.TIMEOUT_MS} must be positive, got {value}", param=H.TIMEOUT_MS)
    return value / 1000


def _check_sensitivity(headers: Mapping[str, str]) -> None:
    value = headers.get(H.SENSITIVITY)
    if value is not None and value not in H.SENSITIVITY_VALUES:
        raise InvalidRequest(
            f"{H.SENSITIVITY} must be one of {', '.join(H.SENSITIVITY_VALUES)}, got {value!r}",
            param=H.SENSITIVITY,
        )


def _deadline_error(route: Route, attempts: int) -> DeadlineExceeded:
    tried = ", ".join(f"{t.endpoint.name}/{t.model}" for t in route.targets[: max(attempts, 1)])
    return DeadlineExceeded(f"deadline exceeded for {route.name!r} after {attempts} attempt(s); tried {tried}")


def _describe_attempt(span: object, target: ResolvedTarget, attempt: int) -> None:
    set_attr = span.set_attribute  # type: ignore[attr-defined]
    set_attr("modelbus.endpoint", target.endpoint.name)
    set_attr("modelbus.provider", target.endpoint.provider)
    set_attr("modelbus.model", target.model)
    set_attr("modelbus.attempt", attempt)


def _success_headers(
    provider_headers: Mapping[str, str], target: ResolvedTarget, attempt: int, request_id: str, revision: int
) -> dict[str, str]:
    return {
        H.STATUS: "200",
        H.PROVIDER: provider_headers.get(H.PROVIDER, target.endpoint.provider),
        H.ENDPOINT: target.endpoint.name,
        H.MODEL: provider_headers.get(H.MODEL, target.model),
        H.ATTEMPTS: str(attempt),
        H.REQUEST_ID: request_id,
        H.CONFIG_REVISION: str(revision),
    }


__all__ = ["ChatCompletionRequest", "Router"]
