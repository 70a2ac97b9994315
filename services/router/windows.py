"""Per-minute request and token counters every router shares: rate limits and endpoint quotas.

The algorithm is the **sliding-window approximation** over calendar-minute counters
(``window = floor(unix time / 60)``), one KV entry ``"<requests> <tokens>"`` per limited thing and
minute in :data:`shared.subjects.RATE_LIMITS_BUCKET`. A request costing ``cost`` fits when::

    previous * (1 - elapsed / 60) + current + cost <= limit

(``previous``, ``current``: the last and the present minute's counts; ``elapsed``: seconds into the
present one). Every change is a compare-and-swap on the revision last seen, so no two routers
admit on the same count and no admission is lost. See :mod:`services.router.ratelimits` for the
tolerance this gives.

**Leases.** So that a busy limit does not cost a round trip per request, a router takes capacity
in blocks of ``max(1, limit // LEASE_SHARE)`` (requests, and tokens for a ``tpm``) when that much
fits, and admits from its block locally until it is used up. Leased capacity is counted in the
KV entry at once, so admissions never exceed the limit; capacity a router leased and did not use
by the minute's end is lost, so under saturation the minute admits at least
``limit - routers * (limit // LEASE_SHARE)``. A block leased earlier in the minute stays valid:
the previous minute's weight only falls.

**Groups.** Writes to one counter from one router are committed in groups: what arrives while a
write is on its way goes in the next write (each still decided in turn against the count).

**Corrections** of a token reservation are settled with the router's lease of that minute when
it has one (used beyond the estimate: taken from the lease; given back: into the lease, up to one
block); only the rest is written.

**Refusals** are decided on a count read at most :data:`REFUSE_FROM_CACHE_S` ago (otherwise read
again first): counts only grow, except when token reservations are corrected down, so a refusal
may be that much late in seeing tokens given back, never early.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ServiceUnavailableError
from nats.js.kv import KeyValue

from shared.errors import NoRouteAvailable
from shared.jetstream import ensure_kv, stream_missing
from shared.subjects import RATE_LIMITS_BUCKET

log = logging.getLogger("modelbus.router.windows")

WINDOW_S = 60
"""Length of one counting window (rpm and tpm are per minute)."""
LEASE_SHARE = 64
"""A router leases at most ``1 / LEASE_SHARE`` of a limit at a time."""
REFUSE_FROM_CACHE_S = 0.25
BUCKET_CONFIG = KeyValueConfig(
    bucket=RATE_LIMITS_BUCKET,
    storage=StorageType.FILE,
    history=1,
    ttl=3 * WINDOW_S,  # the present and the previous minute are read; older counters expire
    description="modelbus rate limits and endpoint quotas: requests and tokens per minute",
)
MAX_CAS_ATTEMPTS = 32
RIDE_OUT_S = 10.0
"""How long a counter waits for the bucket to answer again (a leader election) before a 503."""
RETRY_EVERY_S = 0.1
MARGIN_S = 0.001
"""Added to a computed wait, so a caller coming back exactly then is admitted."""


# ------------------------------------------------------------------ window arithmetic (pure)


def window_of(now: float) -> int:
    """The window (minute) ``now`` (unix seconds) falls in."""
    return int(now // WINDOW_S)


def weighted(previous: int, current: int, elapsed: float) -> float:
    """The sliding estimate of what the last 60 s hold, ``elapsed`` seconds into the present window."""
    return previous * max(0.0, 1.0 - elapsed / WINDOW_S) + current


def admits(limit: int, previous: int, current: int, cost: int, elapsed: float) -> bool:
    """Whether ``cost`` more fits under ``limit`` now."""
    return weighted(previous, current, elapsed) + cost <= limit


def room(limit: int, previous: int, current: int, elapsed: float) -> int:
    """The most that fits under ``limit`` now (``0`` or more)."""
    return max(0, int(limit - weighted(previous, current, elapsed) + 1e-9))


def wait_s(limit: int, previous: int, current: int, cost: int, elapsed: float) -> float | None:
    """Seconds from now until ``cost`` fits under ``limit`` if nothing else is admitted meanwhile:
    ``0`` if it fits now, ``None`` if it never can (``cost > limit``)."""
    if cost > limit:
        return None
    if admits(limit, previous, current, cost, elapsed):
        return 0.0
    free = limit - cost - current
    if free >= 0:  # the previous window's weight has to fall: previous * (1 - f) <= free
        return max(0.0, (1.0 - free / previous) * WINDOW_S - elapsed)
    # Not in this window: in the next one, the present count is the previous one, fading from full.
    return (WINDOW_S - elapsed) + max(0.0, 1.0 - (limit - cost) / current) * WINDOW_S


def lease_block(limit: int) -> int:
    """How much of ``limit`` a router leases at once."""
    return max(1, limit // LEASE_SHARE)


# ------------------------------------------------------------------ shared counters


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def counter_base(kind: str, name: str, value: str = "") -> str:
    """The KV key prefix of one limited thing (``kind`` ``r``: a RateLimit and value; ``q``: an endpoint)."""
    return f"{kind}.{_b64(name)}.{_b64(value) or '_'}"


@dataclass(frozen=True, slots=True)
class Ticket:
    """What one admission took from one counter, to correct it later."""

    base: str
    window: int
    tokens: int
    """Tokens reserved (``0`` when no ``tpm`` applies)."""
    counts_tokens: bool


@dataclass(frozen=True, slots=True)
class Take:
    """The result of :meth:`SharedWindows.take`."""

    ticket: Ticket | None
    """Set when admitted."""
    wait_s: float | None
    """When refused: seconds until the request would fit (``None``: it never can)."""
    requests: int
    tokens: int
    """The present window's counts as this router last saw them (leases included)."""


Decide = Callable[[int, int], "tuple[int, int] | None"]
"""Given a counter's ``(requests, tokens)``: what to add to it, or ``None`` to add nothing (refused)."""


@dataclass(slots=True)
class _Pending:
    decide: Decide
    future: asyncio.Future[tuple[bool, int, int]]


@dataclass(slots=True)
class _Lease:
    """Capacity this router counted in the KV entry and has not used yet."""

    requests: int | None
    """``None``: no ``rpm``, requests are not limited."""
    tokens: int
    counts_tokens: bool
    token_block: int = 0
    """The most tokens the lease may hold (what corrections give back beyond it goes to the KV entry)."""


class SharedWindows:
    """Per-minute counters in a KV bucket every router shares, updated with compare-and-swap."""

    def __init__(self, nc: Client, clock: Callable[[], float] = time.time) -> None:
        self._nc = nc
        self.clock = clock
        self._kv: KeyValue | None = None
        self._current: dict[tuple[str, int], tuple[int, int, int, float]] = {}
        """(base, window) → (requests, tokens, revision, when read or written) as this router saw it."""
        self._previous: dict[str, tuple[int, int, int]] = {}
        """base → (window, requests, tokens): the previous window, read once when it closed."""
        self._leases: dict[tuple[str, int], _Lease] = {}
        self._refills: dict[tuple[str, int], asyncio.Lock] = {}
        self._window = 0
        self._queues: dict[tuple[str, int], list[_Pending]] = {}
        """Additions waiting for the next write of their counter."""
        self._flushing: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.conflicts = 0
        """Compare-and-swap rounds lost to another router (for measurements)."""
        self.writes = 0

    # ------------------------------------------------------------ KV

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv, _ = await ensure_kv(self._nc.jetstream(), BUCKET_CONFIG, update=False)
        return self._kv

    async def _healing(self, read: bool, operation: Callable[[KeyValue], object]) -> object:
        """Run ``operation``, riding out a bucket that does not answer (a leader election) or is gone
        (re-created) for up to :data:`RIDE_OUT_S`; then a retryable 503 ``rate_limits_unavailable``."""
        deadline = time.monotonic() + RIDE_OUT_S
        retry = (nats.errors.TimeoutError, ServiceUnavailableError) if read else (ServiceUnavailableError,)
        while True:
            try:
                return await operation(await self._bucket())  # type: ignore[misc]
            except Exception as exc:
                missing = stream_missing(exc)
                if not (missing or isinstance(exc, retry)):
                    raise
                if missing:
                    self._kv = None
                if time.monotonic() + RETRY_EVERY_S >= deadline:
                    raise NoRouteAvailable(
                        f"rate limit bucket {RATE_LIMITS_BUCKET!r} did not answer for {RIDE_OUT_S:g}s; try again",
                        code="rate_limits_unavailable",
                        retry_after=1.0,
                    ) from None
            await asyncio.sleep(RETRY_EVERY_S)

    async def _get(self, key: str) -> tuple[int, int, int]:
        """``(requests, tokens, revision)``; zeros when absent."""

        async def read(kv: KeyValue) -> tuple[int, int, int]:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return 0, 0, 0
            requests, _, tokens = (entry.value or b"0 0").partition(b" ")
            return int(requests or b"0"), int(tokens or b"0"), entry.revision or 0

        return await self._healing(True, read)  # type: ignore[return-value]

    async def _write(self, key: str, value: bytes, revision: int) -> int:
        async def write(kv: KeyValue) -> int:
            if revision == 0:
                return await kv.create(key, value)
            return await kv.update(key, value, last=revision)

        self.writes += 1
        return await self._healing(False, write)  # type: ignore[return-value]

    async def _fresh(self, key: tuple[str, int]) -> tuple[int, int, int, float]:
        requests, tokens, revision = await self._get(f"{key[0]}.{key[1]}")
        seen = self._current[key] = (requests, tokens, revision, time.monotonic())
        return seen

    # ------------------------------------------------------------ windows

    def _roll(self, window: int) -> None:
        """Forget counters and leases older than the previous window (once per minute)."""
        if window != self._window:
            self._window = window
            self._current = {k: v for k, v in self._current.items() if k[1] >= window - 1}
            self._leases = {k: v for k, v in self._leases.items() if k[1] >= window}
            self._refills = {k: v for k, v in self._refills.items() if k[1] >= window}
            self._previous = {k: v for k, v in self._previous.items() if v[0] >= window - 2}

    async def previous(self, base: str, window: int) -> tuple[int, int]:
        """The counts of the window before ``window``, read once per router after it closed."""
        seen = self._previous.get(base)
        if seen is not None and seen[0] == window - 1:
            return seen[1], seen[2]
        requests, tokens, _ = await self._get(f"{base}.{window - 1}")
        self._previous[base] = (window - 1, requests, tokens)
        return requests, tokens

    # ------------------------------------------------------------ grouped compare-and-swap

    async def add(self, base: str, window: int, decide: Decide) -> tuple[bool, int, int]:
        """Change one counter by what ``decide(requests, tokens)`` says on its count, in the next
        group write. Returns ``(added, requests, tokens)``: the counts after the change, or the
        counts (read at most :data:`REFUSE_FROM_CACHE_S` ago) that ``decide`` refused."""
        key = (base, window)
        future: asyncio.Future[tuple[bool, int, int]] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append(_Pending(decide, future))
        if key not in self._flushing:
            self._flushing.add(key)
            task = asyncio.get_running_loop().create_task(self._flush(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self, key: tuple[str, int]) -> None:
        try:
            while batch := self._queues.pop(key, None):
                try:
                    await self._commit(key, batch)
                except BaseException as exc:
                    for pending in batch:
                        if not pending.future.done():
                            if isinstance(exc, asyncio.CancelledError):
                                pending.future.cancel()
                            else:
                                pending.future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            self._flushing.discard(key)

    async def _commit(self, key: tuple[str, int], batch: list[_Pending]) -> None:
        subject = f"{key[0]}.{key[1]}"
        seen = self._current.get(key)
        fresh = False
        for attempt in range(MAX_CAS_ATTEMPTS):
            requests, tokens, revision, when = seen if seen is not None else (0, 0, 0, 0.0)
            results: list[tuple[bool, int, int]] = []
            for pending in batch:
                change = pending.decide(requests, tokens)
                if change is None:
                    results.append((False, requests, tokens))
                    continue
                requests, tokens = max(0, requests + change[0]), max(0, tokens + change[1])
                results.append((True, requests, tokens))
            if (
                not fresh
                and time.monotonic() - when > REFUSE_FROM_CACHE_S
                and not all(added for added, _, _ in results)
            ):
                seen = await self._fresh(key)  # refuse only on a count read just now
                fresh = True  # decided on whatever its age by then (a loaded server may be slow to answer)
                continue
            if any(added for added, _, _ in results):
                try:
                    new_revision = await self._write(subject, f"{requests} {tokens}".encode(), revision)
                except (KeyWrongLastSequenceError, nats.errors.TimeoutError):
                    # Another router wrote first (or our write timed out and may have landed:
                    # counting it twice only errs on the safe side). Read and decide again.
                    self.conflicts += 1
                    await asyncio.sleep(random.uniform(0, 0.001 * attempt))  # jitter: routers stop colliding
                    seen = await self._fresh(key)
                    fresh = True
                    continue
                self._current[key] = (requests, tokens, new_revision, time.monotonic())
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():  # a cancelled request was counted all the same: the safe side
                    pending.future.set_result(result)
            return
        raise NoRouteAvailable(
            f"rate limit counter {subject} stayed contended by other routers for {MAX_CAS_ATTEMPTS} tries; try again",
            code="rate_limits_unavailable",
            retry_after=1.0,
        )

    # ------------------------------------------------------------ admission

    async def take(self, base: str, rpm: int | None, tpm: int | None, tokens: int) -> Take:
        """Admit one request costing ``tokens`` (counted only when ``tpm`` is set) under ``rpm``/``tpm``:
        from this router's lease when it has room, else by leasing a new block."""
        cost = tokens if tpm is not None else 0
        now = self.clock()
        window = window_of(now)
        self._roll(window)
        key = (base, window)
        admitted = self._from_lease(key, cost)
        if admitted is not None:
            return admitted
        lock = self._refills.get(key)
        if lock is None:
            lock = self._refills[key] = asyncio.Lock()
        async with lock:  # one refill at a time; those waiting for it use its block
            admitted = self._from_lease(key, cost)
            if admitted is not None:
                return admitted
            return await self._lease(key, rpm, tpm, cost)

    def _from_lease(self, key: tuple[str, int], cost: int) -> Take | None:
        lease = self._leases.get(key)
        if lease is None or (lease.requests is not None and lease.requests < 1) or lease.tokens < cost:
            return None
        if lease.requests is not None:
            lease.requests -= 1
        lease.tokens -= cost
        requests, tokens = self.counts(key[0])
        return Take(Ticket(key[0], key[1], cost, lease.counts_tokens), 0.0, requests, tokens)

    async def _lease(self, key: tuple[str, int], rpm: int | None, tpm: int | None, cost: int) -> Take:
        """Lease a block that holds at least this request, and admit it from the block."""
        base, window = key
        prev_r, prev_t = await self.previous(base, window)
        elapsed = self.clock() - window * WINDOW_S
        granted: list[tuple[int, int]] = []

        def decide(requests: int, used: int) -> tuple[int, int] | None:
            granted.clear()
            if rpm is not None and not admits(rpm, prev_r, requests, 1, elapsed):
                return None
            if tpm is not None and not admits(tpm, prev_t, used, cost, elapsed):
                return None
            grant_r = 1 if rpm is None else min(lease_block(rpm), room(rpm, prev_r, requests, elapsed))
            grant_t = 0 if tpm is None else max(cost, min(lease_block(tpm), room(tpm, prev_t, used, elapsed)))
            granted.append((max(1, grant_r), grant_t))
            return granted[0]

        added, requests, used = await self.add(base, window, decide)
        if added:
            grant_r, grant_t = granted[0]  # what the committed round decided
            left = self._leases.get(key)
            self._leases[key] = _Lease(
                None if rpm is None else grant_r - 1 + ((left.requests or 0) if left else 0),
                grant_t - cost + (left.tokens if left else 0),
                tpm is not None,
                lease_block(tpm) if tpm is not None else 0,
            )
            return Take(Ticket(base, window, cost, tpm is not None), 0.0, requests, used)
        waits = []
        if rpm is not None:
            waits.append(wait_s(rpm, prev_r, requests, 1, elapsed))
        if tpm is not None:
            waits.append(wait_s(tpm, prev_t, used, cost, elapsed))
        if any(w is None for w in waits):
            return Take(None, None, requests, used)
        return Take(None, max(w for w in waits if w is not None) + MARGIN_S, requests, used)

    # ------------------------------------------------------------ corrections

    def correct_later(self, ticket: Ticket, requests: int, tokens: int) -> None:
        """Add ``requests``/``tokens`` (usually negative) to the ticket's counter in the background.

        A token correction is settled with this router's lease first, when it has one for that
        minute: tokens used beyond the reservation come out of the lease, tokens given back go into
        it up to one block. Only the rest costs a write."""
        lease = self._leases.get((ticket.base, ticket.window)) if requests == 0 else None
        if lease is not None and lease.counts_tokens:
            if tokens > 0:
                taken = min(tokens, lease.tokens)
                lease.tokens -= taken
                tokens -= taken
            elif tokens < 0:
                back = max(0, min(-tokens, lease.token_block - lease.tokens))
                lease.tokens += back
                tokens += back
        if requests == 0 and tokens == 0:
            return
        task = asyncio.get_running_loop().create_task(self._correct(ticket, requests, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _correct(self, ticket: Ticket, requests: int, tokens: int) -> None:
        try:
            await self.add(ticket.base, ticket.window, lambda _r, _t: (requests, tokens))
        except Exception:
            log.warning("rate limit counter %s.%d could not be corrected", ticket.base, ticket.window, exc_info=True)

    def settle(self, tickets: Sequence[Ticket], actual_tokens: int | None, *, last_only: bool = False) -> None:
        """Correct the token reservations of a finished request to ``actual_tokens`` (``None`` keeps
        them); with ``last_only`` (one ticket per attempt) the earlier, failed attempts used none."""
        if actual_tokens is None:
            return
        for i, ticket in enumerate(tickets):
            if ticket.counts_tokens:
                used = actual_tokens if not last_only or i == len(tickets) - 1 else 0
                self.correct_later(ticket, 0, used - ticket.tokens)

    def counts(self, base: str) -> tuple[int, int]:
        """This router's latest view of the present window's counts, leases included (no I/O)."""
        seen = self._current.get((base, window_of(self.clock())))
        return (seen[0], seen[1]) if seen is not None else (0, 0)

    async def drain(self) -> None:
        """Wait for the background corrections (on shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
