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
* Streams may fail over only until the first **content** chunk reaches the
  client (role-only chunks are held back until then); after that a failure,
  a stall past ``stream_idle_timeout_ms`` or a gap in the sequence ends the
  stream with an error terminator, never a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import Span, SpanKind

from services.router.table import ResolvedTarget, Route
from shared import headers as H
from shared.bus import reply_error, retry_after_from
from shared.chat import chunk_decoder
from shared.envelopes import ProviderCall, provider_call_encoder
from shared.errors import (
    BadUpstreamResponse,
    DeadlineExceeded,
    ModelbusError,
    NoRouteAvailable,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_wire,
)
from shared.routing import Policy, RoutingDefaults
from shared.telemetry import hot_span, propagate_headers, record_error, tracer

log = logging.getLogger("modelbus.router")
_tracer = tracer("modelbus.router")

Key = tuple[str, str]


class Stats(Protocol):
    def start(self, key: Key) -> None: ...
    def finish(self, key: Key, *, latency_s: float | None, ttft_s: float | None, error_status: int | None) -> None: ...


class Breakers(Protocol):
    def decide(self, key: Key) -> object: ...
    async def failure(self, key: Key, defaults: RoutingDefaults) -> None: ...
    async def success(self, key: Key) -> None: ...


class Budgets(Protocol):
    async def charge(self, run_id: str, policies: Sequence[Policy], tokens: int) -> None: ...


@dataclass
class Call:
    """One request on its way through the plan."""

    msg: Msg
    reply: str
    request_id: str
    route: Route
    plan: list[ResolvedTarget]
    deadline: float
    revision: int
    defaults: RoutingDefaults
    router_id: str
    credential: str | None = None
    run_id: str | None = None
    tried: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()


class _Failed(Exception):
    """An attempt failed before anything reached the client; the loop may go on."""

    def __init__(self, error: ModelbusError) -> None:
        self.error = error


Attempt = Callable[[Call, ResolvedTarget, int, Span], Awaitable[None]]


class Forwarder:
    """Runs the attempt loop for non-streamed and streamed requests."""

    def __init__(
        self, nc: Client, *, stats: Stats, breakers: Breakers, budgets: Budgets, rng: random.Random | None = None
    ) -> None:
        self.nc = nc
        self.stats = stats
        self.breakers = breakers
        self.budgets = budgets
        self.rng = rng or random.Random()

    async def complete(self, call: Call) -> None:
        await self._run(call, self._complete_once, streaming=False)

    async def stream(self, call: Call) -> None:
        await self._run(call, self._stream_once, streaming=True)

    # ------------------------------------------------------------ the loop

    async def _run(self, call: Call, attempt_once: Attempt, *, streaming: bool) -> None:
        plan, defaults = call.plan, call.defaults
        max_attempts = len(plan) + defaults.max_retries
        retry_at: dict[Key, float] = {}
        cooling: list[float] = []
        last: ModelbusError | None = None
        attempts = 0
        position = 0
        passes = 0
        tried_this_pass = False
        while attempts < max_attempts:
            if position == len(plan):
                if not tried_this_pass:
                    break  # every target is cooling down: answer now, never spin
                position, passes, tried_this_pass = 0, passes + 1, False
            target = plan[position]
            position += 1
            decision = self.breakers.decide(target.key)
            if not getattr(decision, "allowed", True):
                cooling.append(float(getattr(decision, "retry_after_s", 0.0) or 0.0))
                continue
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
                await asyncio.sleep(wait)
            attempts += 1
            call.tried.append(f"{target.endpoint.name}/{target.model}")
            with hot_span(_tracer, f"attempt {target.endpoint.name}", kind=SpanKind.CLIENT) as span:
                _describe_attempt(span, target, attempts)
                try:
                    await attempt_once(call, target, attempts, span)
                except _Failed as failed:
                    last = failed.error
                    record_error(span, last, last.http_status)
                else:
                    await self.breakers.success(target.key)
                    return
            if last.retry_after is not None:
                hint = min(last.retry_after, defaults.max_retry_after_ms / 1000)
                retry_at[target.key] = time.monotonic() + hint
            if not last.retryable:
                break
            await self.breakers.failure(target.key, defaults)
        if last is None:
            soonest = min(cooling) if cooling else None
            raise NoRouteAvailable(
                f"every target of {call.route.name!r} is cooling down after repeated failures",
                code="all_targets_cooling_down",
                retry_after=soonest,
            )
        extra = {H.ATTEMPTS: str(attempts)}
        if streaming:
            extra.update({H.STREAM: H.STREAM_END, H.SEQ: "0"})
        await reply_error(self.nc, call.reply, last, request_id=call.request_id, extra=extra)

    # ------------------------------------------------------------ one attempt

    def _provider_call(
        self, call: Call, target: ResolvedTarget, attempt: int, *, deliver: bool = False
    ) -> tuple[bytes, dict[str, str]]:
        body = provider_call_encoder.encode(
            ProviderCall(
                endpoint=target.endpoint_raw,
                model=target.model,
                request=msgspec.Raw(call.msg.data),
                attempt=attempt,
                credential=call.credential,
                deliver_to=call.reply if deliver else None,
                deliver_headers=self._delivery_headers(call, target, attempt) if deliver else {},
            )
        )
        hdrs = {H.TIMEOUT_MS: str(max(1, int(call.left() * 1000))), H.REQUEST_ID: call.request_id}
        propagate_headers(hdrs, call.msg.headers)
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
        }

    def _success_headers(
        self, call: Call, target: ResolvedTarget, provider: Mapping[str, str], attempt: int
    ) -> dict[str, str]:
        return {
            H.STATUS: "200",
            H.PROVIDER: provider.get(H.PROVIDER, target.endpoint.provider),
            H.MODEL: provider.get(H.MODEL, target.model),
            **self._delivery_headers(call, target, attempt),
        }

    async def _charge(self, call: Call, provider_headers: Mapping[str, str]) -> None:
        if call.run_id is None or not any(p.max_tokens_per_run for p in call.route.policies):
            return
        usage = provider_headers.get(H.USAGE)
        if not usage:
            return
        try:
            tokens = sum(int(part) for part in usage.split())
        except ValueError:
            return
        await self.budgets.charge(call.run_id, call.route.policies, tokens)

    async def _complete_once(self, call: Call, target: ResolvedTarget, attempt: int, span: Span) -> None:
        # Direct delivery: a success goes from the provider straight to the client
        # (one hop less); failures still come back here for the fallback decision.
        body, hdrs = self._provider_call(call, target, attempt, deliver=True)
        key = target.key
        self.stats.start(key)
        started = time.monotonic()
        try:
            resp = await self.nc.request(target.subject, body, timeout=call.left(), headers=hdrs)
        except nats.errors.NoRespondersError:
            self.stats.finish(key, latency_s=None, ttft_s=None, error_status=503)
            raise _Failed(_no_worker(target)) from None
        except nats.errors.TimeoutError:
            self.stats.finish(key, latency_s=time.monotonic() - started, ttft_s=None, error_status=504)
            raise _deadline(call) from None
        provider_headers = resp.headers or {}
        status = int(provider_headers.get(H.STATUS, "0") or 0)
        span.set_attribute("modelbus.status", status)
        elapsed = time.monotonic() - started
        if status != 200:
            self.stats.finish(key, latency_s=elapsed, ttft_s=None, error_status=status or 502)
            raise _Failed(error_from_wire(status, resp.data, retry_after=retry_after_from(provider_headers)))
        self.stats.finish(key, latency_s=elapsed, ttft_s=None, error_status=None)
        if provider_headers.get(H.DELIVERED) != "1":  # a worker without direct delivery: relay
            await self.nc.publish(
                call.reply, resp.data, headers=self._success_headers(call, target, provider_headers, attempt)
            )
        await self._charge(call, provider_headers)

    async def _stream_once(self, call: Call, target: ResolvedTarget, attempt: int, span: Span) -> None:
        """Relay one attempt's stream; raise :class:`_Failed` only before the first content chunk."""
        idle_s = call.defaults.stream_idle_timeout_ms / 1000
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        key = target.key
        self.stats.start(key)
        started = time.monotonic()
        ttft: float | None = None
        held: list[bytes] = []  # role-only chunks, sent once content arrives
        sent = 0  # messages relayed to the client
        expected = 0  # provider sequence
        finished = False

        def finish(status: int | None) -> None:
            # Streams feed the time-to-first-token average only; a stream that never
            # produced content counts its whole wait, so a stalling target looks slow.
            nonlocal finished
            if not finished:
                finished = True
                first = ttft if ttft is not None else (time.monotonic() - started if status else None)
                self.stats.finish(key, latency_s=None, ttft_s=first, error_status=status)

        try:
            body, hdrs = self._provider_call(call, target, attempt)
            await self.nc.publish(target.subject, body, reply=inbox, headers=hdrs)
            while True:
                left = call.left()
                try:
                    if left <= 0:
                        raise nats.errors.TimeoutError
                    part = await sub.next_msg(timeout=min(left, idle_s))
                except nats.errors.TimeoutError:
                    err: ModelbusError = (
                        _deadline(call)
                        if call.left() <= 0
                        else UpstreamTimeout(
                            f"stream from {target.endpoint.name!r} stalled for {idle_s:g}s", retryable=sent == 0
                        )
                    )
                    finish(504)
                    if sent == 0:
                        raise _Failed(err) from None
                    await self._terminate(call, err, sent, attempt)
                    return
                part_headers = part.headers or {}
                if part_headers.get("Status") == "503" and not part.data:  # no responders, on our inbox
                    finish(503)
                    raise _Failed(_no_worker(target))
                if part_headers.get(H.SEQ) != str(expected):
                    finish(502)
                    gap = BadUpstreamResponse(
                        f"stream from {target.endpoint.name!r} lost messages: got {part_headers.get(H.SEQ)}, "
                        f"expected {expected}",
                        retryable=sent == 0,
                    )
                    if sent == 0:
                        raise _Failed(gap)
                    await self._terminate(call, gap, sent, attempt)
                    return
                expected += 1
                if part_headers.get(H.STREAM) == H.STREAM_END:
                    status = int(part_headers.get(H.STATUS, "0") or 0)
                    if status != 200:
                        finish(status or 502)
                        error = error_from_wire(status, part.data, retry_after=retry_after_from(part_headers))
                        if sent == 0:
                            raise _Failed(error)
                        await self._terminate(call, error, sent, attempt)
                        return
                    finish(None)
                    for chunk in held:  # a stream with no content at all is still a clean stream
                        await self.nc.publish(call.reply, chunk, headers={H.SEQ: str(sent)})
                        sent += 1
                    out = self._success_headers(call, target, part_headers, attempt)
                    out[H.STREAM] = H.STREAM_END
                    out[H.SEQ] = str(sent)
                    await self.nc.publish(call.reply, part.data, headers=out)
                    await self._charge(call, part_headers)
                    return
                if sent == 0 and not _has_content(part.data):
                    held.append(part.data)  # failover is still possible
                    continue
                if ttft is None:
                    ttft = time.monotonic() - started
                for chunk in held:
                    await self.nc.publish(call.reply, chunk, headers={H.SEQ: str(sent)})
                    sent += 1
                held.clear()
                await self.nc.publish(call.reply, part.data, headers={H.SEQ: str(sent)})
                sent += 1
        finally:
            finish(499)  # no-op unless the attempt was cancelled midway
            await sub.unsubscribe()

    async def _terminate(self, call: Call, err: ModelbusError, seq: int, attempt: int) -> None:
        await reply_error(
            self.nc,
            call.reply,
            err,
            request_id=call.request_id,
            extra={H.STREAM: H.STREAM_END, H.SEQ: str(seq), H.ATTEMPTS: str(attempt)},
        )


def _has_content(data: bytes) -> bool:
    """Whether a chunk carries something the client must see (text, tool call, refusal, finish)."""
    try:
        chunk = chunk_decoder.decode(data)
    except msgspec.MsgspecError:
        return True  # unreadable: let the client see it rather than hide it
    for choice in chunk.choices:
        delta = choice.delta
        if delta.content or delta.tool_calls or delta.refusal or choice.finish_reason:
            return True
    return chunk.usage is not None


def _no_worker(target: ResolvedTarget) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"no provider worker serves provider type {target.endpoint.provider!r}",
        provider=target.endpoint.provider,
        code="no_provider_worker",
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
