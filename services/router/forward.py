"""Send one request through its plan of targets: attempts, fallbacks, retries.

The rules, in the order they apply:

* Targets are tried in the plan's order (the strategy made it). A target whose
  shared circuit breaker is open is skipped without counting as an attempt.
* Only **retryable** failures (429, 5xx, connection or DNS failure, timeout)
  move on; any other error is the answer at once.
* The request may make ``len(plan) + max_retries`` attempts. After the last
  target the plan starts again: a target already tried waits an exponential
  backoff with full jitter (``retry_delay_ms * 2**(pass-1)``), and never less
  than the ``Retry-After`` its **latest** failure asked for (capped by
  ``max_retry_after_ms``).
* One deadline covers everything. An attempt gets only the time left; a wait
  that would pass the deadline ends the request with a 408 naming what was
  tried.
* If every target is cooling down, the answer is a 503 with ``Retry-After``
  set to the soonest one: never a spin.
* The provider worker answers the client directly, streams included; the
  router watches each attempt through the worker's heartbeats
  (:mod:`shared.mux`). After ``LOST_AFTER_S`` of silence the router asks
  the workers what became of the attempt (the outcome may have been lost on
  the way, e.g. while the router itself was off the bus); one that holds it
  sends it again (:mod:`services.providers.outcomes`). With no answer in
  ``ASK_S`` the worker is lost: a retryable 502 ``worker_lost``, so the loop
  goes on to another worker or target. Streams may fail over only until the worker reports the first
  **content** chunk delivered (``Modelbus-Committed``); after that a lost or
  fenced worker's stream gets its error terminator from the router.
* The router answers 408 only when the worker has not answered by the
  deadline plus ``DEADLINE_GRACE_S`` (the worker enforces the deadline itself
  and reports its own timeout), so a late success and a 408 never both reach
  the client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import Span, SpanKind

from services.router.call import Breakers, Call, Key, Stats
from services.router.ledger import Outcome
from services.router.quotas import EndpointQuotas, has_quota
from services.router.table import ResolvedTarget
from shared import headers as H
from shared.bus import RECONNECT_WAIT_S, error_headers, reply_error, retry_after_from
from shared.envelopes import ProviderCall, provider_call_encoder
from shared.errors import (
    BadUpstreamResponse,
    DeadlineExceeded,
    ModelbusError,
    NoRouteAvailable,
    RateLimited,
    UpstreamUnavailable,
    WorkerLost,
    error_from_wire,
)
from shared.mux import Beats, ReplyMux, Silence, Waiter
from shared.overhead import overhead_value, prior_ms
from shared.replies import (
    ASK_S,
    DEADLINE_GRACE_S,
    KEEPALIVE_S,
    LOST_AFTER_S,
    is_no_responders,
    status_of,
    stream_end,
)
from shared.subjects import outcome_subject_of
from shared.telemetry import hot_span, propagate_headers, record_error, tracer
from shared.usage_text import record_text_headers

log = logging.getLogger("modelbus.router")
_tracer = tracer("modelbus.router")


class _Failed(Exception):
    """An attempt failed before anything reached the client; the loop may go on."""

    def __init__(self, error: ModelbusError) -> None:
        self.error = error


class Forwarder:
    """Runs the attempt loop for non-streamed and streamed requests."""

    def __init__(
        self,
        nc: Client,
        *,
        stats: Stats,
        breakers: Breakers,
        mux: ReplyMux,
        beats: Beats,
        rng: random.Random | None = None,
        quotas: EndpointQuotas | None = None,
    ) -> None:
        self.nc = nc
        self.quotas = quotas
        self.stats = stats
        self.breakers = breakers
        self.mux = mux
        self.beats = beats
        self.rng = rng or random.Random()
        self.recovered = 0
        """Attempts whose outcome never reached us and was had by asking the worker."""

    async def forward(self, call: Call) -> None:
        """Try the plan until one attempt answers the client or the loop gives up (then answer the error)."""
        plan, defaults = call.plan, call.defaults
        max_attempts = len(plan) + defaults.max_retries
        retry_at: dict[Key, float] = {}
        cooling: list[float] = []
        at_quota: list[float] = []
        """Seconds until each target skipped at its provider quota frees up (this pass)."""
        never_fits = False
        last: ModelbusError | None = None
        attempts = 0
        position = 0
        passes = 0
        tried_this_pass = False
        while attempts < max_attempts:
            if position == len(plan):
                if not tried_this_pass:
                    if at_quota and min(at_quota) < call.left():
                        # Every target left is at its quota: wait for the soonest, within the deadline.
                        await asyncio.sleep(min(at_quota))
                        position = 0
                        at_quota.clear()
                        continue
                    break  # every target is cooling down: answer now, never spin
                position, passes, tried_this_pass = 0, passes + 1, False
                at_quota.clear()
            target = plan[position]
            position += 1
            ticket = None
            if self.quotas is not None and has_quota(target.endpoint):
                # Before the breaker: a half-open breaker's one probe must not be handed out to
                # a request that then does not go.
                ticket, free_in = await self.quotas.take(target.endpoint, call.tokens_estimate)
                if ticket is None:
                    if free_in is None:
                        never_fits = True
                    else:
                        at_quota.append(free_in)
                    continue  # not an attempt, and says nothing about the endpoint's health
            decision = self.breakers.decide(target.key)
            if not decision.allowed:
                if ticket is not None and self.quotas is not None:
                    self.quotas.give_back(ticket)
                cooling.append(decision.retry_after_s)
                continue
            if ticket is not None:
                call.quota_tickets.append(ticket)
            tried_this_pass = True
            wait = 0.0
            if passes:
                cap = defaults.retry_delay_ms / 1000 * (2 ** (passes - 1))
                wait = self.rng.uniform(0, cap)  # full jitter
            hinted = retry_at.get(target.key)
            if hinted is not None:
                wait = max(wait, hinted - time.monotonic())
            if wait >= call.left():
                raise _deadline(call)
            if wait > 0:
                await asyncio.sleep(wait)  # keepalives go on meanwhile (call.signal is held)
            attempts += 1
            call.tried.append(f"{target.endpoint.name}/{target.model}")
            with hot_span(_tracer, f"attempt {target.endpoint.name}", kind=SpanKind.CLIENT) as span:
                _describe_attempt(span, target, attempts)
                try:
                    healthy = await self._attempt(call, target, attempts, span)
                except _Failed as failed:
                    last = failed.error
                    record_error(span, last, last.http_status)
                else:
                    if healthy:
                        await self.breakers.success(target.key)
                    elif healthy is not None:
                        await self.breakers.failure(target.key, defaults)
                    return
            if last.retry_after is not None:
                hint = min(last.retry_after, defaults.max_retry_after_ms / 1000)
                retry_at[target.key] = time.monotonic() + hint
            if not last.retryable:
                break
            if last.code not in _NOT_THE_ENDPOINT:
                await self.breakers.failure(target.key, defaults)
        if last is None and (at_quota or never_fits):
            raise _at_quota(call, min(at_quota) if at_quota else None)
        if last is None:
            soonest = min(cooling) if cooling else None
            raise NoRouteAvailable(
                f"every target of {call.route.name!r} is cooling down after repeated failures",
                code="all_targets_cooling_down",
                retry_after=soonest,
            )
        extra = {H.ATTEMPTS: str(attempts), H.OVERHEAD_MS: _overhead(call)}
        if call.streaming:
            extra = stream_end(0, extra)
        call.outcome.answered(last.http_status, last.code)
        await reply_error(self.nc, call.reply, last, request_id=call.request_id, extra=extra)

    # ------------------------------------------------------------ one attempt

    def _provider_call(self, call: Call, target: ResolvedTarget, attempt: int) -> tuple[bytes, dict[str, str]]:
        body = provider_call_encoder.encode(
            ProviderCall(
                endpoint=target.endpoint_raw,
                model=target.model,
                request=msgspec.Raw(call.msg.data),
                format=call.format,
                operation=call.operation,
                attempt=attempt,
                credential=call.credential,
                deliver_to=call.reply,
                deliver_headers=self._delivery_headers(call, target, attempt),
                keepalive=call.signal.keepalive,
                idle_timeout_ms=call.defaults.stream_idle_timeout_ms if call.streaming else None,
            )
        )
        hdrs = {
            H.TIMEOUT_MS: str(max(1, int(call.left() * 1000))),
            H.REQUEST_ID: call.request_id,
            H.DISPATCHED_AT: str(int(time.time() * 1000)),
        }
        propagate_headers(hdrs, call.msg.headers)
        if call.route.record_text:  # the agent's opt-in; a client's own such header never gets here
            hdrs.update(record_text_headers(call.route.name, call.run_id))
        return body, hdrs

    @staticmethod
    def _delivery_headers(call: Call, target: ResolvedTarget, attempt: int) -> dict[str, str]:
        """What the provider adds to a directly delivered answer (it sets status, provider, model)."""
        return {
            H.ENDPOINT: target.endpoint.name,
            H.ATTEMPTS: str(attempt),
            H.REQUEST_ID: call.request_id,
            H.CONFIG_REVISION: str(call.revision),
            H.ROUTER: call.router_id,
            H.OVERHEAD_MS: _overhead(call),
        }

    def _success_headers(
        self, call: Call, target: ResolvedTarget, provider: Mapping[str, str], attempt: int
    ) -> dict[str, str]:
        out = {
            H.STATUS: "200",
            H.PROVIDER: provider.get(H.PROVIDER, target.endpoint.provider),
            H.MODEL: provider.get(H.MODEL, target.model),
            **self._delivery_headers(call, target, attempt),
        }
        fmt = provider.get(H.FORMAT)
        if fmt is not None:  # the body is in the client's own format
            out[H.FORMAT] = fmt
        return out

    async def _attempt(self, call: Call, target: ResolvedTarget, attempt: int, span: Span) -> bool | None:
        """Dispatch one attempt and follow it to its outcome.

        Returns once the client has its final answer: ``True`` if the target did
        well, ``False`` if the answer was an error the target caused, ``None`` if
        it says nothing about the target (the worker was lost or fenced, e.g. in a
        NATS restart, after the stream had begun); raises :class:`_Failed` when
        nothing reached the client, so the loop may go on.
        """
        loop = asyncio.get_running_loop()
        key = target.key
        waiter = self.mux.open(LOST_AFTER_S)
        body, hdrs = self._provider_call(call, target, attempt)
        timing = _Timing(self.stats, key, call.streaming, loop.time())
        began = time.perf_counter()
        outcome = call.outcome
        outcome.endpoint, outcome.provider, outcome.model = target.endpoint.name, target.endpoint.provider, target.model
        outcome.attempts = attempt
        self.stats.start(key)
        self.beats.held.discard(call.signal)  # the worker sends the keepalives now
        lost = False
        try:
            await self.nc.publish(target.subject, body, reply=waiter.subject, headers=hdrs)
            until = loop.time() + call.left() + DEADLINE_GRACE_S
            while True:
                try:
                    msg = await waiter.next(until)
                except (Silence, TimeoutError) as quiet:
                    # The outcome may have been lost on its way to us (our connection dropped, or
                    # the node between us): ask the worker before giving the attempt up.
                    recovered = await self._ask(target, waiter)
                    if recovered is not None and H.HEARTBEAT in (recovered.headers or {}):
                        if isinstance(quiet, Silence):  # still in flight: keep waiting
                            self._resume(waiter, recovered, timing, call.outcome)
                            continue
                        recovered = None
                    if recovered is None:
                        if isinstance(quiet, Silence):
                            lost = True
                            timing.finish(502)
                            err = WorkerLost(
                                f"the provider worker serving {target.endpoint.name!r} went silent for "
                                f"{LOST_AFTER_S:g}s",
                                provider=target.endpoint.provider,
                            )
                            if timing.committed is None:
                                raise _Failed(err) from None
                            await self._terminate(call, err, waiter.delivered, attempt)
                            return None
                        timing.finish(504)
                        if timing.committed is None:
                            raise _deadline(call) from None
                        await self._terminate(call, _deadline(call), waiter.delivered, attempt)
                        return False
                    self.recovered += 1
                    log.info("request %s: outcome of a silent attempt had from its worker", call.request_id)
                    msg = recovered
                h = msg.headers or {}
                if is_no_responders(h, msg.data):
                    timing.finish(503)
                    raise _Failed(_no_worker(target))
                committed = h.get(H.COMMITTED)
                if committed is not None:
                    timing.committed = loop.time()
                    outcome.committed(timing.committed)
                    if committed.isdigit():
                        waiter.delivered = max(waiter.delivered, int(committed))
                    continue
                status = status_of(h)
                span.set_attribute("modelbus.status", status)
                fenced = h.get(H.FENCED)
                if fenced is not None:  # a committed stream the worker had to stop: end it here
                    timing.finish(status or 502)
                    error = error_from_wire(status or 502, msg.data)
                    await self._terminate(call, error, int(fenced) if fenced.isdigit() else 0, attempt)
                    return None
                if h.get(H.DELIVERED) == "1":  # the client has its answer from the worker
                    timing.finish(None if status == 200 else status or 502)
                    outcome.delivered(status or 502, h, msg.data)
                    return status == 200
                if status == 200 and not call.streaming:  # a fenced worker's completion: relay it
                    timing.finish(None)
                    await self.nc.publish(call.reply, msg.data, headers=self._success_headers(call, target, h, attempt))
                    outcome.delivered(200, h, b"")
                    return True
                timing.finish(status or 502)
                if status == 200:
                    raise _Failed(BadUpstreamResponse("a provider worker ended a stream without delivering it"))
                raise _Failed(error_from_wire(status, msg.data, retry_after=retry_after_from(h)))
        finally:
            timing.finish(499)  # no-op unless the attempt was cancelled midway
            self.mux.close(waiter)
            now = loop.time()
            call.attempts_s += time.perf_counter() - began
            call.signal.last_client = now - KEEPALIVE_S if lost else now
            self.beats.held.add(call.signal)

    async def _ask(self, target: ResolvedTarget, waiter: Waiter) -> Msg | None:
        """What the worker holding this attempt last sent us (or a heartbeat if it is still at
        it), asked of every worker of the target's type; ``None`` when no one answers in ``ASK_S``."""
        try:
            return await self.nc.request(outcome_subject_of(target.subject), waiter.subject.encode(), timeout=ASK_S)
        except Exception:  # no answer, no worker subscribed, or we are off the bus again: the worker is lost
            return None

    @staticmethod
    def _resume(waiter: Waiter, beat: Msg, timing: _Timing, outcome: Outcome) -> None:
        """The worker answered that the attempt is still in flight: wait again from now."""
        h = beat.headers or {}
        waiter.resume(asyncio.get_running_loop().time())
        delivered = h.get(H.HEARTBEAT, "")
        if delivered.isdigit():
            waiter.delivered = max(waiter.delivered, int(delivered))
        committed = h.get(H.COMMITTED)
        if committed is not None and timing.committed is None:
            timing.committed = asyncio.get_running_loop().time()
            outcome.committed(timing.committed)
            if committed.isdigit():
                waiter.delivered = max(waiter.delivered, int(committed))

    async def _terminate(self, call: Call, err: ModelbusError, seq: int, attempt: int) -> None:
        """End a stream the worker can no longer end: the error terminator at ``seq``."""
        hdrs = error_headers(err, call.request_id)
        call.outcome.answered(err.http_status, err.code)
        await self.nc.publish(call.reply, err.to_json(), headers=stream_end(seq, {**hdrs, H.ATTEMPTS: str(attempt)}))


@dataclass
class _Timing:
    """One attempt's statistics, recorded once."""

    stats: Stats
    key: Key
    streaming: bool
    started: float
    committed: float | None = None
    done: bool = False

    def finish(self, error_status: int | None) -> None:
        # Streams feed the time-to-first-token average only; a stream that never
        # produced content counts its whole wait, so a stalling target looks slow.
        if self.done:
            return
        self.done = True
        elapsed = asyncio.get_running_loop().time() - self.started
        if self.streaming:
            first = self.committed - self.started if self.committed is not None else (elapsed if error_status else None)
            self.stats.finish(self.key, latency_s=None, ttft_s=first, error_status=error_status)
        else:
            self.stats.finish(self.key, latency_s=elapsed, ttft_s=None, error_status=error_status)


_NOT_THE_ENDPOINT = frozenset({"worker_lost", "no_provider_worker"})
"""Failures that say nothing about the endpoint's health, so its breaker does not count them: a
worker that died, or no worker subscribed (e.g. while the workers reconnect after a NATS restart)."""

NO_WORKER_RETRY_S = RECONNECT_WAIT_S * 2
"""How long a target with no worker subscribed is left alone: about one reconnect of a worker."""


def _no_worker(target: ResolvedTarget) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"no provider worker serves provider type {target.endpoint.provider!r}",
        provider=target.endpoint.provider,
        code="no_provider_worker",
        retry_after=NO_WORKER_RETRY_S,
    )


def _overhead(call: Call) -> str:
    """``Modelbus-Overhead-Ms`` so far: the hops before the router plus its own time (not attempts')."""
    own = time.perf_counter() - call.started - call.attempts_s
    return overhead_value(prior_ms(call.msg.headers or {}), own)


def _at_quota(call: Call, free_in: float | None) -> RateLimited:
    if free_in is None:
        return RateLimited(
            f"every target of {call.route.name!r} is at its provider quota, and this request "
            f"(~{call.tokens_estimate} tokens) exceeds a tokens-per-minute quota by itself",
            code="rate_limited",
            retryable=False,
        )
    return RateLimited(
        f"every target of {call.route.name!r} is at its provider quota for {free_in:.3f}s more, "
        "past the request's deadline",
        code="rate_limited",
        retry_after=free_in,
    )


def _deadline(call: Call) -> DeadlineExceeded:
    tried = ", ".join(call.tried) if call.tried else "nothing (no attempt fit in the time left)"
    return DeadlineExceeded(
        f"deadline exceeded for {call.route.name!r} after {len(call.tried)} attempt(s); tried {tried}"
    )


def _describe_attempt(span: Span, target: ResolvedTarget, attempt: int) -> None:
    span.set_attribute("modelbus.endpoint", target.endpoint.name)
    span.set_attribute("modelbus.provider", target.endpoint.provider)
    span.set_attribute("modelbus.model", target.model)
    span.set_attribute("modelbus.attempt", attempt)
