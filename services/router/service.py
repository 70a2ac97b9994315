"""The router worker: resolve each request and forward it to a provider worker.

Configuration arrives from the config service's log, the JetStream stream
:data:`shared.subjects.CONFIG_STREAM`, followed from its last record (the
current state, then every change, with no gap between them; see
:mod:`services.router.follower`), and is swapped in as a new immutable
:class:`RoutingTable` in one assignment. Requests are served by a raw nats-py
queue subscription (see :mod:`shared.bus` for why), and every request gets
exactly one final answer: a reply, an error reply, or a stream terminator.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from services.router.breakers import SharedBreakers
from services.router.budget_scopes import applying
from services.router.budgets import Budgets
from services.router.byo import byo_route, check_enabled, parse_env_header
from services.router.call import Call
from services.router.filters import needs_of, select_targets, tool_names
from services.router.follower import TableFollower
from services.router.forward import Forwarder
from services.router.ledger import Outcome, UsageLedger, ledger_enabled
from services.router.metrics import RouterMetrics, budget_rows, quota_rows, rate_rows
from services.router.pins import RunPins
from services.router.quotas import EndpointQuotas
from services.router.ratelimits import OUTPUT_ESTIMATE, RateLimiter
from services.router.stats import TargetStats
from services.router.strategies import Rotation, order_targets
from services.router.table import Route, RoutingTable
from services.router.windows import SharedWindows, Ticket
from shared import headers as H
from shared import metrics as M
from shared.admin import BreakerState, TargetHealth
from shared.bus import ReplyGuard, RequestServer, reply_error
from shared.chat import ChatCompletionRequest
from shared.errors import InvalidRequest, ModelbusError, NoRouteAvailable, PayloadTooLarge
from shared.formats.native import check_format, check_operation, request_view
from shared.identities import requester_inboxes
from shared.mux import Beats, ReplyMux, Signal
from shared.overhead import overhead_value, prior_ms
from shared.replies import stream_end, timeout_s, wants_stream
from shared.routing import COUNTING_PROVIDER_TYPES
from shared.subjects import CHAT_COMPLETIONS, ROUTER_QUEUE
from shared.telemetry import hot_span, record_error, tracer

log = logging.getLogger("modelbus.router")
_tracer = tracer("modelbus.router")


class Router:
    """One router worker."""

    def __init__(self, nc: Client, *, max_inflight: int = 512, state_nc: Client | None = None) -> None:
        """``nc`` serves requests and calls providers; ``state_nc`` (default ``nc``) holds the
        JetStream state: config log, breakers, budgets, run pins (see shared.identities)."""
        self.nc = nc
        state = state_nc or nc
        self.reply_guard = ReplyGuard("router", requester_inboxes("router"))
        self.router_id = uuid.uuid4().hex[:12]
        self._server = RequestServer(
            nc, CHAT_COMPLETIONS, self.serve_request, queue=ROUTER_QUEUE, max_inflight=max_inflight
        )
        self.stats = TargetStats()
        self.breakers = SharedBreakers(state, router_id=self.router_id)
        self.budgets = Budgets(state, router_id=self.router_id)
        """Budgets: reservations before the call, settled after the answer (KV, shared by every router)."""
        self.windows = SharedWindows(state)
        """Per-minute counters of rate limits and endpoint quotas (KV, shared by every router)."""
        self.limits = RateLimiter(self.windows)
        self.quotas = EndpointQuotas(self.windows)
        self.rotation = Rotation()
        self.rng = random.Random()
        self.mux = ReplyMux(nc)
        """Where provider workers' heartbeats and outcomes come back."""
        self.beats = Beats(nc)
        """Keepalives to clients while this router holds their requests."""
        self.forwarder = Forwarder(
            nc,
            stats=self.stats,
            breakers=self.breakers,
            mux=self.mux,
            beats=self.beats,
            rng=self.rng,
            quotas=self.quotas,
        )
        self.follower = TableFollower(
            nc, self.router_id, lambda: self._server.in_flight, health=self.health, state_nc=state
        )
        self.pins = RunPins(state)
        self.ledger = UsageLedger(state, self.router_id, enabled=ledger_enabled())
        """One usage record per final answer, published in the background on the state connection."""
        self.metrics = RouterMetrics() if M.metrics_enabled() else None
        """Prometheus metrics from each final answer (``None``: MODELBUS_METRICS=off, no work at all)."""
        if self.metrics is not None:
            M.in_flight_gauge(lambda: self._server.in_flight)
            M.register_breakers(
                lambda: [M.BreakerRow(b.endpoint, b.model, b.state) for b in self.breakers.open_breakers()]
            )
            M.register_config(self._config_state)
            M.register_budgets(lambda: budget_rows(self.budgets.snapshot()))
            M.register_rate_limits(
                lambda: rate_rows(self.limits.snapshot()), lambda: quota_rows(self.quotas.snapshot())
            )

    def _config_state(self) -> tuple[int, float | None]:
        table = self.follower.current
        return (table.revision if table else 0), self.follower.swap_lag_s

    def overhead(self, started: float, call: Call | None, headers: Mapping[str, str]) -> str:
        """``Modelbus-Overhead-Ms`` of an answer the router sends: the hops before plus its own time
        (failed attempts count as upstream time)."""
        spent = call.attempts_s if call is not None else 0.0
        own = time.perf_counter() - started - spent
        return overhead_value(prior_ms(headers), own)

    @property
    def table(self) -> RoutingTable | None:
        """The routing table of the newest revision."""
        return self.follower.current

    # ------------------------------------------------------------ life cycle

    def health(self) -> tuple[list[TargetHealth], list[BreakerState]]:
        """Per-target statistics and open breakers, for ``modelbus get routers``."""
        targets = [
            TargetHealth(
                endpoint=t.endpoint,
                model=t.model,
                in_flight=t.in_flight,
                latency_ewma_ms=t.latency_ewma_ms,
                ttft_ewma_ms=t.ttft_ewma_ms,
                errors=t.errors,
                successes=t.successes,
                last_error_status=t.last_error_status,
            )
            for t in self.stats.snapshot()
        ]
        breakers = [
            BreakerState(endpoint=b.endpoint, model=b.model, retry_after_s=b.retry_after_s)
            for b in self.breakers.open_breakers()
        ]
        return targets, breakers

    async def start(self, config_timeout_s: float = 60.0) -> None:
        """Load the current configuration and the shared breakers, then start serving requests."""
        await self.breakers.start()
        await self.follower.start(config_timeout_s)
        await self.mux.start()
        self.beats.start()
        self.ledger.start()
        await self._server.start()

    async def stop(self) -> None:
        """Stop taking requests and let those in flight finish."""
        await self._server.stop()
        await self.budgets.stop()  # settle what was answered before forgetting it
        await self.ledger.stop()
        await self.windows.drain()
        await self.beats.stop()
        await self.mux.stop()
        await self.follower.stop()

    async def _table_for(self, table: RoutingTable, headers: Mapping[str, str], deadline: float) -> RoutingTable:
        """The table a request routes on: its run's pinned revision, or the current one."""
        run_id = headers.get(H.RUN_ID)
        if run_id is None:
            return table
        revision = await self.pins.revision_for(run_id, table.revision, table.defaults.run_pin_ttl_s, deadline=deadline)
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
        if not self.reply_guard.allows(reply):
            self.reply_guard.refuse(CHAT_COMPLETIONS, reply)
            return
        streaming = wants_stream(msg.data)
        keepalive = streaming or in_headers.get(H.KEEPALIVE) == "1"
        now = asyncio.get_running_loop().time()
        signal = Signal(None, reply, keepalive, now)
        outcome = Outcome(now, stream=streaming)
        self.beats.held.add(signal)  # keepalives while this router holds the request
        call: Call | None = None
        started = time.perf_counter()
        with hot_span(_tracer, "route chat.completions", kind=SpanKind.SERVER, parent_headers=in_headers) as span:
            span.set_attribute("modelbus.request_id", request_id)
            try:
                table = self.follower.current
                if table is None:
                    raise NoRouteAvailable("router has no configuration yet")
                if len(msg.data) > table.defaults.max_request_bytes:
                    raise PayloadTooLarge(
                        f"request body is {len(msg.data)} bytes; the limit is {table.defaults.max_request_bytes}"
                    )
                deadline = time.monotonic() + timeout_s(in_headers, table.defaults.timeout_ms)
                fmt = check_format(in_headers.get(H.FORMAT))
                operation = check_operation(in_headers.get(H.OPERATION), fmt)
                request = request_view(fmt, msg.data, count=operation is not None)
                streaming = outcome.stream = request.stream
                outcome.model_requested = request.model
                outcome.operation = operation
                call = await self._build_call(
                    msg,
                    reply,
                    request_id,
                    request,
                    in_headers,
                    table,
                    deadline,
                    signal,
                    operation=operation,
                    outcome=outcome,
                )
                call.format = fmt
                call.outcome = outcome
                call.started = started
                if call.budget_hold is not None:
                    await self.budgets.reserve(call.budget_hold)
                outcome.route = call.route.name
                span.set_attribute("modelbus.model_requested", request.model or "")
                span.set_attribute("modelbus.config_revision", call.revision)
                await self.forwarder.forward(call)
            except ModelbusError as err:
                record_error(span, err, err.http_status)
                extra = {H.OVERHEAD_MS: self.overhead(started, call, in_headers)}
                outcome.answered(err.http_status, err.code)
                await reply_error(
                    self.nc, reply, err, request_id=request_id, extra=stream_end(0, extra) if streaming else extra
                )
            except Exception as exc:
                log.exception("internal error on request %s", request_id)
                record_error(span, exc, 500)
                outcome.answered(500, "internal_error")
                extra = {H.OVERHEAD_MS: self.overhead(started, call, in_headers)}
                await reply_error(
                    self.nc,
                    reply,
                    ModelbusError("internal router error"),
                    request_id=request_id,
                    extra=stream_end(0, extra) if streaming else extra,
                )
            finally:
                self.beats.held.discard(signal)
                # The answer is out (or the request was cancelled): record it, without waiting.
                self.ledger.record(outcome, request_id=request_id, reply=reply, headers=in_headers)
                if call is not None and call.budget_hold is not None:
                    self.budgets.settle(call.budget_hold, outcome)  # in the background
                if call is not None and (call.limit_tickets or call.quota_tickets):
                    self._settle(call, outcome)
                if self.metrics is not None:
                    self.metrics.observe(outcome, call.tried if call is not None else ())

    async def _build_call(
        self,
        msg: Msg,
        reply: str,
        request_id: str,
        request: ChatCompletionRequest,
        headers: Mapping[str, str],
        table: RoutingTable,
        deadline: float,
        signal: Signal,
        *,
        operation: str | None = None,
        outcome: Outcome | None = None,
    ) -> Call:
        """Resolve, filter, check policy and budget, and order the targets of one request
        (a token count: only targets whose provider counts, and no budget is charged)."""
        confidential = _sensitivity(headers) == "confidential"
        table = await self._table_for(table, headers, deadline)
        if outcome is not None:
            outcome.table = table  # its prices cost the answer in the usage record
        credential: str | None = None
        env = headers.get(H.ENV)
        if env is not None:
            check_enabled(table.defaults)
            byo = byo_route(parse_env_header(env), request.model)
            route = Route("byo", byo.targets, "failover")
            credential = byo.credential
        elif agent := headers.get(H.AGENT):
            route = table.resolve_agent(agent)
        else:
            route = table.resolve(request.model)
        needs = needs_of(request)
        targets = select_targets(
            route.targets,
            needs,
            confidential=confidential,
            policies=route.policies,
            request_tools=tool_names(request),
            route_name=route.name,
        )
        if operation is not None:
            targets = [t for t in targets if t.endpoint.provider in COUNTING_PROVIDER_TYPES]
            if not targets:
                raise InvalidRequest(
                    f"no target of {route.name!r} counts tokens (only {', '.join(sorted(COUNTING_PROVIDER_TYPES))} "
                    "endpoints do)",
                    code="count_unsupported",
                )
        run_id = headers.get(H.RUN_ID)
        hold = None
        if table.budgets and operation is None:
            budgets = applying(table.budgets, route.policies, headers, reply)
            if budgets:
                hold = self.budgets.prepare(request_id, budgets, needs, targets, table, deadline)
        estimate = needs.prompt_tokens + (needs.output_tokens or OUTPUT_ESTIMATE)
        tickets: list[Ticket] = []
        if table.rate_limits and operation is None:
            tickets = await self.limits.admit(table.rate_limits, reply, headers, estimate)
        plan = order_targets(
            route.strategy,
            targets,
            route_name=route.name,
            default_provider=table.defaults.default_provider,
            stats=self.stats,
            rotation=self.rotation,
            rng=self.rng,
            streaming=request.stream,
        )
        return Call(
            msg=msg,
            reply=reply,
            request_id=request_id,
            route=route,
            plan=plan,
            deadline=deadline,
            revision=table.revision,
            defaults=table.defaults,
            router_id=self.router_id,
            signal=signal,
            streaming=request.stream,
            credential=credential,
            run_id=run_id,
            budget_hold=hold,
            operation=operation,
            tokens_estimate=estimate,
            limit_tickets=tickets,
        )

    def _settle(self, call: Call, outcome: Outcome) -> None:
        """Correct what rate limits and quotas reserved to the tokens the answer used (in the background)."""
        if outcome.status == 200:
            tokens = outcome.tokens
            actual = tokens.total if tokens is not None else None
        else:
            actual = 0
        self.windows.settle(call.limit_tickets, actual)
        self.windows.settle(call.quota_tickets, actual, last_only=True)


def _sensitivity(headers: Mapping[str, str]) -> str | None:
    value = headers.get(H.SENSITIVITY)
    if value is not None and value not in H.SENSITIVITY_VALUES:
        raise InvalidRequest(
            f"{H.SENSITIVITY} must be one of {', '.join(H.SENSITIVITY_VALUES)}, got {value!r}",
            param=H.SENSITIVITY,
        )
    return value
