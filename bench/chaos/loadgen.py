"""The chaos load generator: raw nats-py, bounded concurrency, every reply message recorded.

It deliberately does not use the bundled client (``shared.client``): it
publishes each request with its own reply subject under one wildcard inbox,
``_INBOX.chaos<run>.<request id>``, and records every message that arrives
there, also after the final answer, until the request's deadline plus
:data:`~bench.chaos.counting.DUPLICATE_GRACE_S`, so a second answer is seen.

It runs in its own thread with its own event loop: the main thread starts and
kills processes (``Popen`` must happen there, see :func:`shared.natsserver.die_with_parent`)
and may block while doing so, which must not delay the timestamps taken here.

Each of ``concurrency`` workers sends one request and waits until its first
final answer, or until a client following the contract would give up: after
:data:`~bench.chaos.counting.MAX_SILENCE_S` of silence when the stack promised
keepalives, else at the request's deadline + :data:`~bench.chaos.counting.NEVER_GRACE_S`.
Then it sends the next. What each request became is decided afterwards, from
the whole record (:mod:`bench.chaos.counting`).
"""

from __future__ import annotations

import asyncio
import json
import resource
import threading
import time
import uuid
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.chaos.counting import (
    DUPLICATE_GRACE_S,
    KEEPALIVE,
    MAX_SILENCE_S,
    REQUEST_ID,
    Kind,
    Outcome,
    RequestRecord,
    classify_message,
    outcome_of,
)

SUBJECT = "llm.v1.chat.completions"
"""Where clients send chat completions (``shared.subjects.CHAT_COMPLETIONS``)."""
TIMEOUT_MS = "Modelbus-Timeout-Ms"
WARMUP_OK_IN_A_ROW = 16
"""The stack counts as healthy once this many warm-up requests in a row ended OK."""
WARMUP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadPlan:
    """What to send."""

    servers: list[str]
    """NATS URLs to connect to, tried in this order (no shuffling)."""
    model: str
    """The alias every measured request asks for."""
    concurrency: int
    """Requests kept in flight."""
    stream_every: int
    """1: every request streams; 3: every third; 0: none."""
    timeout_ms: int
    """``Modelbus-Timeout-Ms`` of every request."""
    probe_model: str | None = None
    """An alias slower than the keepalive interval: one non-streamed request to it tells whether the
    stack sends keepalives (``None``: assume it does not)."""


@dataclass
class LoadResult:
    """What one load run recorded."""

    records: list[RequestRecord] = field(default_factory=list)
    """Every measured request (warm-up and probe excluded), in publish order."""
    keepalives_promised: bool = False
    """Whether the probe saw a keepalive: the stack then keeps the contract's maximum silence."""
    warmup_requests: int = 0
    load_started: float = 0.0
    load_stopped: float = 0.0
    listened_until: float = 0.0
    """When recording stopped (after the last deadline plus the grace window)."""
    process_cpu_s: float = 0.0
    """CPU of the whole harness process while new requests were sent (load thread, log readers, process control)."""
    thread_cpu_s: float = 0.0
    """CPU of the load thread alone while new requests were sent."""
    reconnects: int = 0
    disconnects: int = 0
    publish_errors: int = 0
    unknown_messages: int = 0
    """Messages on the chaos inbox for no request this run sent."""
    error: str | None = None
    """Why the run could not load the stack (it was not healthy, the connection failed)."""

    @property
    def wall_s(self) -> float:
        """Seconds of measured load."""
        return max(0.0, self.load_stopped - self.load_started)


def _request_body(n: int, *, model: str, streamed: bool) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": f"chaos request {n}"}], "stream": streamed}
    return json.dumps(body).encode()


class LoadGenerator:
    """Starts in :meth:`start`, sends until :meth:`stop_sending`, and returns everything from :meth:`finish`."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.result = LoadResult()
        self._run = f"chaos{uuid.uuid4().hex[:12]}"
        self._prefix = f"_INBOX.{self._run}"
        self._n = 0
        self._records: dict[str, RequestRecord] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._measuring = False
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        """The loop's view of :attr:`_stop`, set from the main thread with ``call_soon_threadsafe``."""
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="chaos-load", daemon=True)

    # ------------------------------------------------------------ the main thread's side

    def start(self, timeout_s: float = WARMUP_TIMEOUT_S + PROBE_TIMEOUT_S + 10.0) -> None:
        """Connect, warm up, probe for keepalives, start the measured load; return once it runs.

        Raises ``RuntimeError`` when the stack never became healthy.
        """
        self._thread.start()
        if not self._loaded.wait(timeout_s):
            self._stop.set()
            raise RuntimeError(f"the load generator did not start within {timeout_s:g}s")
        if self.result.error is not None:
            self._thread.join(5.0)
            raise RuntimeError(self.result.error)

    def stop_sending(self) -> None:
        """No new request starts after this (those in flight run to their end)."""
        self._stop.set()
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopped.set)
            except RuntimeError:  # the loop closed in between
                pass

    def finish(self, timeout_s: float = 60.0) -> LoadResult:
        """Wait for the in-flight requests and the duplicate grace window; return the records."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the load generator did not finish within {timeout_s:g}s")
        return self.result

    # ------------------------------------------------------------ the load thread

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # reported to the main thread, never lost
            self.result.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._loaded.set()

    async def _main(self) -> None:
        result = self.result
        self._stopped = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stop.is_set():
            self._stopped.set()

        async def on_disconnect() -> None:
            result.disconnects += 1

        async def on_reconnect() -> None:
            result.reconnects += 1

        async def on_error(err: Exception) -> None:
            pass  # reconnect attempts while a server is down land here; they are the point of the test

        nc = await nats.connect(
            servers=self.plan.servers,
            name="modelbus-chaos-load",
            dont_randomize=True,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
            connect_timeout=2,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
        try:
            await nc.subscribe(f"{self._prefix}.*", cb=self._on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)
            await nc.flush()
            if not await self._warm_up(nc):
                return
            await self._measure(nc)
        finally:
            await nc.close()

    async def _on_message(self, msg: Msg) -> None:
        now = time.monotonic()
        rid = msg.subject.rpartition(".")[2]
        record = self._records.get(rid)
        if record is None:
            self.result.unknown_messages += 1
            return
        message = classify_message(msg.headers, len(msg.data), streamed=record.streamed, at=now)
        record.messages.append(message)
        event = self._done.get(rid)
        if event is not None and message.kind in (Kind.FINAL, Kind.NO_RESPONDERS):
            event.set()

    async def _send_one(self, nc: Client, *, model: str, streamed: bool) -> RequestRecord | None:
        """Publish one request and wait as a contract-following client would; ``None`` if it could not be sent."""
        self._n += 1
        rid = f"{self._run}-{self._n}"
        headers = {REQUEST_ID: rid, TIMEOUT_MS: str(self.plan.timeout_ms)}
        if not streamed:
            headers[KEEPALIVE] = "1"
        record = RequestRecord(
            request_id=rid, streamed=streamed, started=time.monotonic(), timeout_s=self.plan.timeout_ms / 1000
        )
        done = asyncio.Event()
        self._records[rid] = record
        self._done[rid] = done
        try:
            await nc.publish(
                SUBJECT,
                _request_body(self._n, model=model, streamed=streamed),
                reply=f"{self._prefix}.{rid}",
                headers=headers,
            )
        except Exception:  # the connection refused it (closed, buffer full): never sent
            self.result.publish_errors += 1
            del self._records[rid], self._done[rid]
            return None
        try:
            await self._wait_for_end(record, done)
        finally:
            self._done.pop(rid, None)
        return record

    async def _wait_for_end(self, record: RequestRecord, done: asyncio.Event) -> None:
        while not done.is_set():
            now = time.monotonic()
            give_up = record.cutoff
            if self.result.keepalives_promised:
                give_up = min(give_up, now + MAX_SILENCE_S - record.silent_since(now))
            if now >= give_up:
                return
            try:
                await asyncio.wait_for(done.wait(), give_up - now)
            except TimeoutError:
                continue

    async def _warm_up(self, nc: Client) -> bool:
        """Until :data:`WARMUP_OK_IN_A_ROW` requests in a row end OK (and the probe has answered)."""
        probe = asyncio.create_task(self._probe(nc))
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        in_a_row = 0
        lock = asyncio.Lock()

        async def worker(index: int) -> None:
            nonlocal in_a_row
            turn = index
            while in_a_row < WARMUP_OK_IN_A_ROW and time.monotonic() < deadline:
                turn += 1
                streamed = self._streamed(turn)
                record = await self._send_one(nc, model=self.plan.model, streamed=streamed)
                self.result.warmup_requests += 1
                async with lock:
                    ok = record is not None and outcome_of(record, keepalives_promised=False) is Outcome.OK
                    in_a_row = in_a_row + 1 if ok else 0

        await asyncio.gather(*(worker(i) for i in range(min(self.plan.concurrency, 8))))
        await probe
        if in_a_row < WARMUP_OK_IN_A_ROW:
            self.result.error = (
                f"the stack was not healthy: fewer than {WARMUP_OK_IN_A_ROW} OK warm-up requests in a row "
                f"within {WARMUP_TIMEOUT_S:g}s"
            )
            return False
        return True

    async def _probe(self, nc: Client) -> None:
        """One slow non-streamed request with ``Modelbus-Keepalive: 1``: did a keepalive arrive before the answer?"""
        if self.plan.probe_model is None:
            return
        record = await self._send_one(nc, model=self.plan.probe_model, streamed=False)
        if record is not None:
            final = record.first_final()
            self.result.keepalives_promised = any(
                m.kind is Kind.KEEPALIVE and (final is None or m.at < final.at) for m in record.messages
            )

    def _streamed(self, turn: int) -> bool:
        every = self.plan.stream_every
        return every > 0 and turn % every == 0

    async def _measure(self, nc: Client) -> None:
        result = self.result
        measured: list[RequestRecord] = []
        turns = iter(range(1, 1 << 62))

        async def worker() -> None:
            while not self._stop.is_set():
                record = await self._send_one(nc, model=self.plan.model, streamed=self._streamed(next(turns)))
                if record is not None:
                    measured.append(record)

        rusage_self = resource.getrusage(resource.RUSAGE_SELF)
        rusage_thread = resource.getrusage(resource.RUSAGE_THREAD)
        result.load_started = time.monotonic()
        tasks = [asyncio.create_task(worker()) for _ in range(self.plan.concurrency)]
        self._loaded.set()
        assert self._stopped is not None
        await self._stopped.wait()
        result.load_stopped = time.monotonic()
        end_self = resource.getrusage(resource.RUSAGE_SELF)
        end_thread = resource.getrusage(resource.RUSAGE_THREAD)
        await asyncio.gather(*tasks)
        # Late messages: keep listening until every request's deadline plus the grace
        # window (its cutoff, for one still without an answer).
        measured.sort(key=lambda r: r.started)
        listen_until = max(
            (r.cutoff if r.first_final() is None else r.deadline + DUPLICATE_GRACE_S for r in measured),
            default=time.monotonic(),
        )
        await asyncio.sleep(max(0.0, listen_until - time.monotonic()))
        result.listened_until = time.monotonic()
        result.process_cpu_s = _cpu(end_self) - _cpu(rusage_self)
        result.thread_cpu_s = _cpu(end_thread) - _cpu(rusage_thread)
        result.records = measured


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime
