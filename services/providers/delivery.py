"""How a provider worker answers: straight to the client, while its router watches.

A call names two subjects: the router's (``msg.reply``), which gets heartbeats
and the call's outcome, and the client's (``ProviderCall.deliver_to``), which
gets the answer itself, so a router that dies after dispatching loses nothing.

* **Fencing.** The router takes a worker it has not heard from for
  :data:`~shared.replies.LOST_AFTER_S` for lost and tries another. So a worker
  that may have been silent that long (its heartbeats stopped for
  :data:`~shared.replies.FENCE_AFTER_S`, the call waited in a queue, or the
  connection was re-established since the call came) never answers the client
  directly again: a completion goes to the router, which relays it only while
  that attempt is still the current one, and a stream already under way stops
  with ``Modelbus-Fenced`` so the router ends it. Two final answers would need
  both the worker and the router to answer, and fencing is what keeps the
  worker from doing so once the router may have.
* **Streams** hold role-only chunks back until the first content, so that a
  failure before it can still go to another target; the first content chunk
  goes out together with ``Modelbus-Committed`` to the router. Failures before
  that go to the router (which may fail over); after it the worker ends the
  stream itself with an error terminator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from opentelemetry.trace import Span

from services.providers.base import ChatAdapter
from services.providers.text_record import TextCapture
from shared import headers as H
from shared.bus import error_headers
from shared.chat import ChatCompletionChunk, ChatCompletionRequest, encoder
from shared.errors import ModelbusError, UpstreamTimeout, WorkerLost
from shared.mux import Signal
from shared.overhead import overhead_value, prior_ms
from shared.replies import FENCE_AFTER_S, LOST_AFTER_S, chunk_headers, stream_end
from shared.usage import for_client, usage_header


@dataclass
class Delivery:
    """Where one call's messages go, and whether the worker may still answer the client."""

    nc: Client
    reply: str
    deliver_to: str | None
    deliver_headers: Mapping[str, str]
    signal: Signal
    request_id: str | None
    epoch: int
    """The connection's reconnect count when the call arrived."""
    fenced: bool = False
    last: tuple[bytes, dict[str, str]] | None = None
    """The last message sent to the router (body, headers), kept for a router that asks again
    (:mod:`services.providers.outcomes`)."""
    done: bool = False
    """The call has ended: :attr:`last` is its outcome."""
    arrived: float = 0.0
    """``time.perf_counter()`` when the call arrived (``loop.time()`` may tick in whole milliseconds)."""
    upstream_s: float = 0.0
    """Time spent waiting on the upstream (a stream's: until its first content)."""
    overhead: str | None = None
    """``Modelbus-Overhead-Ms`` once the answer's first message was sent (the terminator repeats it)."""
    text: TextCapture | None = None
    """The call's text record in the making (``Modelbus-Record-Text``); ``None``: not recorded."""

    @classmethod
    def open(
        cls,
        nc: Client,
        reply: str,
        deliver_to: str | None,
        deliver_headers: Mapping[str, str],
        headers: Mapping[str, str],
        *,
        keepalive: bool,
    ) -> Delivery:
        """A delivery whose silence clock starts when the router sent the call, not when it arrived."""
        now = asyncio.get_running_loop().time()
        age = queued_s(headers)
        sig = Signal(reply, deliver_to, keepalive, now - age)
        sig.last_client = now
        d = cls(nc, reply, deliver_to, deliver_headers, sig, headers.get(H.REQUEST_ID), nc.stats["reconnects"])
        d.fenced = age > FENCE_AFTER_S
        d.arrived = time.perf_counter()
        return d

    def overhead_ms(self) -> str:
        """``Modelbus-Overhead-Ms`` of the answer: the router's sum plus this worker's own time so far
        (fixed at the first call, so a stream's chunk 0 and terminator agree)."""
        if self.overhead is None:
            own = time.perf_counter() - self.arrived - self.upstream_s
            self.overhead = overhead_value(prior_ms(self.deliver_headers), own)
        return self.overhead

    @property
    def stale(self) -> bool:
        """The router has surely given this call up already: do not start it."""
        return asyncio.get_running_loop().time() - self.signal.last_signal > LOST_AFTER_S

    def direct(self) -> bool:
        """Whether the answer may still go straight to the client (and stays so: fencing is final)."""
        if self.fenced or self.deliver_to is None:
            return False
        now = asyncio.get_running_loop().time()
        if (
            now - self.signal.last_signal > FENCE_AFTER_S
            or self.nc.stats["reconnects"] != self.epoch
            or not self.nc.is_connected
        ):
            self.fenced = True
            return False
        return True

    async def to_client(self, data: bytes, headers: dict[str, str], *, counts: bool = True) -> None:
        """Publish to the client (a chunk or the final answer)."""
        assert self.deliver_to is not None
        await self.nc.publish(self.deliver_to, data, headers=headers)
        if self.text is not None:
            self.text.sent(data, headers)
        self.signal.last_client = asyncio.get_running_loop().time()
        if counts:
            self.signal.delivered += 1

    async def to_router(self, data: bytes, headers: dict[str, str]) -> None:
        """Publish to the router (a notice or the outcome)."""
        self.last = (data, headers)
        await self.nc.publish(self.reply, data, headers=headers)
        self.signal.last_signal = asyncio.get_running_loop().time()

    async def failed(self, err: ModelbusError) -> None:
        """Nothing reached the client: the router decides what happens next."""
        await self.to_router(err.to_json(), error_headers(err, self.request_id))


def queued_s(headers: Mapping[str, str]) -> float:
    """How long ago the router sent the call (``Modelbus-Dispatched-At``), from the wall clock."""
    raw = headers.get(H.DISPATCHED_AT)
    if not raw or not raw.isdigit():
        return 0.0
    return max(0.0, time.time() - int(raw) / 1000)


def has_content(chunk: ChatCompletionChunk) -> bool:
    """Whether a chunk's choices carry something the client must see (text, tool call, refusal,
    finish): the first such chunk commits the stream."""
    for choice in chunk.choices:
        delta = choice.delta
        if delta.content or delta.tool_calls or delta.refusal or choice.finish_reason:
            return True
    return False


@dataclass
class StreamResult:
    """What a stream ended with, for the span."""

    model: str
    response_id: str | None
    usage_chunk: ChatCompletionChunk | None
    finish_reasons: list[str]


async def stream_to_client(
    d: Delivery,
    adapter: ChatAdapter,
    request: ChatCompletionRequest,
    model: str,
    *,
    timeout_s: float,
    idle_s: float,
    span: Span,
    on_error: Callable[[Exception], ModelbusError],
    native: tuple[str, bytes] | None = None,
) -> StreamResult | None:
    """Stream one call straight to the client; the router gets notices and the outcome.

    ``native`` is ``(format, body)`` when the client's own body goes to an upstream of its API
    (``adapter.native_format``): the upstream's events then reach the client as they came
    (``adapter.stream_native``), chunk 0 says so in ``Modelbus-Format``, and usage travels in
    those events (OpenAI's usage-only chunk excepted: it goes in the terminator, as always).
    ``on_error`` turns what the adapter raised into an error safe to send (scrubbed; an
    unexpected exception logged and replaced). Returns ``None`` when the call ended without a
    clean end (the outcome has been sent either way).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout_s
    endpoint = adapter.connection.endpoint
    fmt = native[0] if native is not None else None
    seq = 0
    committed = False
    held: list[bytes] = []
    usage_chunk: ChatCompletionChunk | None = None
    last: ChatCompletionChunk | None = None
    finish_reasons: list[str] = []
    if native is not None:
        pieces = adapter.stream_native(native[1], model, timeout_s=timeout_s).__aiter__()  # type: ignore[attr-defined]
    else:
        pieces = _translated(adapter.stream(request, model, timeout_s=timeout_s)).__aiter__()
    upstream_from = time.perf_counter()
    try:
        while True:
            left = deadline - loop.time()
            wait = min(left, idle_s)
            try:
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    data, chunks = await anext(pieces)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if loop.time() >= deadline:
                    raise UpstreamTimeout(
                        f"stream from {endpoint.name!r} did not finish within {timeout_s:g}s"
                    ) from None
                raise UpstreamTimeout(f"stream from {endpoint.name!r} stalled for {idle_s:g}s") from None
            if not committed:
                d.upstream_s = time.perf_counter() - upstream_from
            content = False
            for chunk in chunks:
                if chunk.usage is not None:
                    usage_chunk = msgspec.structs.replace(chunk, choices=[])
                    if fmt == "openai":  # usage travels in the terminator, whether the client asked or not
                        data = encoder.encode(msgspec.structs.replace(chunk, usage=None)) if chunk.choices else None
                if chunk.choices:
                    finish_reasons.extend(c.finish_reason for c in chunk.choices if c.finish_reason)
                    last = chunk
                    content = content or has_content(chunk)
            if d.text is not None:
                d.text.chunks(chunks)
            if data is None:
                continue
            if not committed:
                if not content:
                    held.append(data)  # failover is still possible
                    continue
                if not d.direct():
                    await d.failed(WorkerLost(f"worker fenced before streaming from {endpoint.name!r}"))
                    return None
                span.set_attribute("gen_ai.response.time_to_first_chunk", loop.time() - started)
                for part in (*held, data):
                    await d.to_client(
                        part, _chunk_headers(d, seq, endpoint.provider, last.model if last else model, fmt)
                    )
                    seq += 1
                held.clear()
                await d.to_router(b"", {H.COMMITTED: str(seq)})
                committed = True
                continue
            if not d.direct():
                await _fence(d, seq, endpoint.name)
                return None
            await d.to_client(data, chunk_headers(seq))
            seq += 1
    except Exception as exc:
        err = on_error(exc)
        if committed:
            await _end_with_error(d, err, seq)
        else:
            await d.failed(err)
        return None
    finally:
        await _close(pieces)
    if not d.direct():
        if committed:
            await _fence(d, seq, endpoint.name)
        else:
            await d.failed(WorkerLost(f"worker fenced before streaming from {endpoint.name!r}"))
        return None
    response_model = last.model if last is not None else model
    for part in held:  # a stream with no content at all is still a clean stream
        await d.to_client(part, _chunk_headers(d, seq, endpoint.provider, response_model, fmt))
        seq += 1
    usage = usage_chunk.usage if usage_chunk is not None else None
    outcome = {H.STATUS: "200", H.PROVIDER: endpoint.provider, H.MODEL: response_model}
    relay_usage = usage_chunk is not None and request.include_usage and fmt != "anthropic"
    body = b""
    if relay_usage and usage_chunk is not None:
        shown = for_client(usage) if usage is not None else None
        body = encoder.encode(usage_chunk if shown is usage else msgspec.structs.replace(usage_chunk, usage=shown))
    end = {**d.deliver_headers, **outcome, H.OVERHEAD_MS: d.overhead_ms()}
    if fmt is not None:
        end[H.FORMAT] = fmt
    await d.to_client(body, stream_end(seq, end))
    if usage is not None:
        outcome[H.USAGE] = usage_header(usage)
    await d.to_router(b"", {**outcome, H.DELIVERED: "1"})
    return StreamResult(response_model, last.id if last else None, usage_chunk, finish_reasons)


async def _translated(
    chunks: AsyncIterator[ChatCompletionChunk],
) -> AsyncIterator[tuple[bytes | None, list[ChatCompletionChunk]]]:
    """An adapter's chunks as what the client gets of each: the chunk without its usage (a
    usage-only chunk: nothing; usage goes in the terminator)."""
    try:
        async for chunk in chunks:
            if chunk.usage is None:
                yield encoder.encode(chunk), [chunk]
            elif chunk.choices:
                yield encoder.encode(msgspec.structs.replace(chunk, usage=None)), [chunk]
            else:
                yield None, [chunk]
    finally:
        await _close(chunks)


def _chunk_headers(d: Delivery, seq: int, provider: str, model: str, fmt: str | None) -> dict[str, str]:
    """Chunk ``seq``'s headers; the first also says where the stream comes from (the routing
    headers the terminator repeats), so an HTTP edge can send them before the body starts, and
    in which format its chunks are (``Modelbus-Format``, when they are the upstream's own)."""
    if seq:
        return chunk_headers(seq)
    out = {**d.deliver_headers, H.PROVIDER: provider, H.MODEL: model, **chunk_headers(seq)}
    out[H.OVERHEAD_MS] = d.overhead_ms()
    if fmt is not None:
        out[H.FORMAT] = fmt
    return out


async def _end_with_error(d: Delivery, err: ModelbusError, seq: int) -> None:
    """End a committed stream with an error terminator and tell the router it is over."""
    if not d.direct():
        await _fence(d, seq, "the upstream", err)
        return
    hdrs = error_headers(err, d.request_id)
    hdrs[H.OVERHEAD_MS] = d.overhead_ms()
    attempts = d.deliver_headers.get(H.ATTEMPTS)
    end = stream_end(seq, {**hdrs, H.ATTEMPTS: attempts} if attempts else hdrs)  # like the router's own errors
    await d.to_client(err.to_json(), end)
    await d.to_router(err.to_json(), {**hdrs, H.DELIVERED: "1"})


async def _fence(d: Delivery, seq: int, source: str, err: ModelbusError | None = None) -> None:
    """Stop a committed stream: the router sends the terminator at ``seq``."""
    reason = err or WorkerLost(f"worker fenced while streaming from {source!r}")
    await d.to_router(reason.to_json(), {**error_headers(reason, d.request_id), H.FENCED: str(seq)})


async def _close(chunks: object) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # the upstream connection is going away anyway
            pass
