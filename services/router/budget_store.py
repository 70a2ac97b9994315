"""The budgets bucket as one router uses it: compare-and-set writes, grouped per entry.

:class:`BudgetStore` holds, per KV key of :data:`shared.subjects.BUDGETS_BUCKET`,
the revision and value this router last saw, and applies changes (functions from
one :class:`~shared.budgets.BudgetEntry` to the next) with compare-and-set on
that revision; only a conflict (another router wrote meanwhile) costs a re-read.
The changes of one key that queue up while its write is on the way go out
together in the next write (group commit), so one router's requests never
conflict with each other and a busy entry costs one round trip per batch. A
change nobody waits for (a settlement) lingers up to :data:`SETTLE_LINGER_S`
for one somebody waits for (a reservation), to share its write. A leader
election is ridden out for :data:`RIDE_OUT_S`, then a retryable 503.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ServiceUnavailableError
from nats.js.kv import KeyValue

from shared.budgets import BudgetEntry, decode_entry, entry_encoder
from shared.errors import ModelbusError, NoRouteAvailable
from shared.jetstream import ensure_kv, stream_missing
from shared.routing import Budget
from shared.subjects import BUDGETS_BUCKET

log = logging.getLogger("modelbus.router.budgets")
T = TypeVar("T")

BUCKET_TTL_S = 32 * 86400
"""An entry expires this long after its last write (the bucket's max age): longer than a month."""
BUCKET_CONFIG = KeyValueConfig(
    bucket=BUDGETS_BUCKET,
    storage=StorageType.FILE,
    history=1,
    ttl=BUCKET_TTL_S,
    description="modelbus budgets: spend and reservations per (budget, scope value, period window)",
)
MAX_CAS_ATTEMPTS = 32
"""Compare-and-set rounds of one write before giving up."""
RIDE_OUT_S = 10.0
"""How long a write waits for the bucket to answer again before a retryable 503
(a cluster electing a new stream leader after a node was killed takes 4-9 s)."""
RETRY_EVERY_S = 0.1
MAX_SEEN = 4096
"""Windows remembered (last revision and value) for the next write and :meth:`Budgets.snapshot`."""
SETTLE_LINGER_S = 0.005
"""How long a settlement waits for the next reservation of its window to share its write."""
SETTLE_WAIT_S = 5.0
"""How long :meth:`Budgets.stop` waits for settlements still running."""
_Queue = list[tuple[Callable[[BudgetEntry], BudgetEntry], "asyncio.Future[None] | None"]]


class _Pending:
    """The changes of one key waiting for its next write; ``urgent`` once someone waits for it
    (a reservation), rather than only settlements."""

    __slots__ = ("_waiter", "changes", "urgent")

    def __init__(self) -> None:
        self.changes: _Queue = []
        self.urgent = False
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        self.urgent = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def linger(self, seconds: float) -> None:
        """Return at once if urgent, else when :meth:`wake` is called or ``seconds`` passed."""
        if not self.urgent:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(seconds, _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self.urgent = False


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(slots=True)
class _Seen:
    revision: int
    entry: BudgetEntry
    budget: Budget
    value: str
    window: str


class Refused(Exception):
    """A change refused by its budget (raised by the change, given to the one who waits for it)."""

    def __init__(self, budget: Budget, message: str, *, in_flight: bool = False) -> None:
        super().__init__(message)
        self.budget = budget
        self.message = message
        self.in_flight = in_flight
        """Refused only for the reservations of requests in flight (the spend alone would admit it)."""


class BudgetStore:
    """This router's reads and writes of the budgets bucket."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._kv: KeyValue | None = None
        self._opened = False
        self._queues: dict[str, _Pending] = {}
        """Changes waiting for the write of their key that is on its way (group commit)."""
        self.seen: collections.OrderedDict[str, _Seen] = collections.OrderedDict()
        """What this router last saw of each entry (most recent last, at most :data:`MAX_SEEN`)."""
        self._settling: set[asyncio.Task[None]] = set()
        self.settle_failures = 0
        """Changes nobody waited for (settlements) that failed: their reservations expire instead."""

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def stop(self, timeout_s: float = SETTLE_WAIT_S) -> None:
        """Wait (bounded) for the writes still queued or running: the router settles before it forgets."""
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=timeout_s)

    async def drained(self) -> None:
        """Return once no settlement is running (tests)."""
        while self._settling:
            await asyncio.wait(set(self._settling))

    async def update(
        self,
        key: str,
        budget: Budget,
        value: str,
        window: str,
        change: Callable[[BudgetEntry], BudgetEntry],
        *,
        urgent: bool = True,
    ) -> None:
        """Apply ``change`` to the entry with compare-and-set; raises what ``change`` raised (a refusal).

        Group commit: the changes of one key that queue up while a write of it is on its way go out
        together in the next write, so a busy budget costs one round trip per batch, not per
        request, and this router's requests never conflict with each other. A change that is not
        ``urgent`` (a settlement) waits up to :data:`SETTLE_LINGER_S` for one that is (the next
        reservation) to go out with it, so a steady stream of requests pays one write each."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.enqueue(key, budget, value, window, change, done, urgent=urgent)
        await done

    def enqueue(
        self,
        key: str,
        budget: Budget,
        value: str,
        window: str,
        change: Callable[[BudgetEntry], BudgetEntry],
        done: asyncio.Future[None] | None,
        *,
        urgent: bool,
    ) -> None:
        pending = self._queues.get(key)
        if pending is None:
            pending = self._queues[key] = _Pending()
            self.spawn(self._commit_queued(key, pending, budget, value, window))
        pending.changes.append((change, done))
        if urgent:
            pending.wake()

    async def _commit_queued(self, key: str, pending: _Pending, budget: Budget, value: str, window: str) -> None:
        queue = pending.changes
        try:
            while queue:
                await pending.linger(SETTLE_LINGER_S)
                batch = queue[:]
                del queue[:]
                try:
                    await self._commit(key, batch, budget, value, window)
                except BaseException as exc:
                    self._failed(batch, exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._queues.pop(key, None)
            self._failed(queue, ModelbusError("budget update abandoned: the router is stopping"))

    def _failed(self, batch: _Queue, exc: BaseException) -> None:
        for _, done in batch:
            if done is None:
                self.settle_failures += 1
                log.warning("a budget settlement failed (its reservation will expire): %s", exc)
            elif not done.done():
                done.set_exception(exc)

    async def _commit(self, key: str, batch: _Queue, budget: Budget, value: str, window: str) -> None:
        """One compare-and-set write of every change in ``batch``: on the revision last seen here,
        re-read only on a conflict. A refusal made on a remembered value is made again on a fresh
        read, so a stale value never refuses."""
        seen = self.seen.get(key)
        fresh = seen is None
        revision, entry = (seen.revision, seen.entry) if seen else await self.read(key)
        for attempt in range(MAX_CAS_ATTEMPTS):
            new = entry.without_expired(time.time())
            outcomes: list[Refused | None] = []
            for change, _ in batch:
                try:
                    new = change(new)
                    outcomes.append(None)
                except Refused as refused:
                    outcomes.append(refused)
            if not fresh and any(outcomes):
                revision, entry = await self.read(key)
                fresh = True
                continue
            if any(o is None for o in outcomes):
                try:
                    revision = await self._write(key, new, revision)
                except KeyWrongLastSequenceError:
                    # Another router wrote since; back off a little, with jitter, and re-read.
                    await asyncio.sleep(random.uniform(0, 0.001 * attempt))
                    revision, entry = await self.read(key)
                    fresh = True
                    continue
                self._remember(key, _Seen(revision, new, budget, value, window))
            for (_, done), why in zip(batch, outcomes, strict=True):
                if done is None or done.done():
                    continue
                if why is None:
                    done.set_result(None)
                else:
                    done.set_exception(why)
            return
        raise NoRouteAvailable(
            f"budget {budget.name!r}: its entry stayed contended by other routers for {MAX_CAS_ATTEMPTS} tries; "
            "try again",
            code="budgets_unavailable",
            retry_after=1.0,
        )

    def _remember(self, key: str, seen: _Seen) -> None:
        self.seen[key] = seen
        self.seen.move_to_end(key)
        while len(self.seen) > MAX_SEEN:
            self.seen.popitem(last=False)

    async def read(self, key: str) -> tuple[int, BudgetEntry]:
        """``(revision, entry)``; ``(0, empty)`` when the key is absent."""

        async def read(kv: KeyValue) -> tuple[int, BudgetEntry]:
            try:
                got = await kv.get(key)
            except KeyNotFoundError:
                return 0, BudgetEntry()
            return got.revision or 0, decode_entry(got.value)

        return await self._healing(read, read=True)

    async def _write(self, key: str, entry: BudgetEntry, revision: int) -> int:
        data = entry_encoder.encode(entry)

        async def write(kv: KeyValue) -> int:
            if revision == 0:
                return await kv.create(key, data)
            return await kv.update(key, data, last=revision)

        return await self._healing(write, read=False)

    async def _bucket(self) -> KeyValue:
        """The bucket, created (``MODELBUS_JS_REPLICAS`` replicas) on first use if absent."""
        if self._kv is None:
            self._kv, ensured = await ensure_kv(self._nc.jetstream(), BUCKET_CONFIG, update=False)
            if self._opened and ensured.created:
                log.error(
                    "budgets bucket %s was missing and has been created again, empty: spend so far is forgotten",
                    BUDGETS_BUCKET,
                )
                self.seen.clear()
            self._opened = True
        return self._kv

    async def _healing(self, operation: Callable[[KeyValue], Awaitable[T]], *, read: bool) -> T:
        """Run ``operation`` on the bucket, riding out a bucket that does not answer for up to
        :data:`RIDE_OUT_S` (a cluster electing a new leader); a bucket that is gone is re-opened,
        which re-creates it. Then a retryable 503 ``budgets_unavailable``.

        A write that timed out may have been stored, so only a ``read`` is retried on a timeout; a
        write then fails (a reservation it may have stored expires)."""
        deadline = time.monotonic() + RIDE_OUT_S
        retry = (nats.errors.TimeoutError, ServiceUnavailableError) if read else (ServiceUnavailableError,)
        while True:
            try:
                return await operation(await self._bucket())
            except Exception as exc:
                missing = stream_missing(exc)
                if not (missing or isinstance(exc, retry)):
                    if isinstance(exc, nats.errors.TimeoutError):
                        raise NoRouteAvailable(
                            f"budgets bucket {BUDGETS_BUCKET!r} did not confirm a write; try again",
                            code="budgets_unavailable",
                            retry_after=1.0,
                        ) from None
                    raise
                if missing:
                    self._kv = None
                    self.seen.clear()
                if time.monotonic() + RETRY_EVERY_S >= deadline:
                    raise NoRouteAvailable(
                        f"budgets bucket {BUDGETS_BUCKET!r} did not answer for {RIDE_OUT_S:g}s; try again",
                        code="budgets_unavailable",
                        retry_after=1.0,
                    ) from None
            await asyncio.sleep(RETRY_EVERY_S)
