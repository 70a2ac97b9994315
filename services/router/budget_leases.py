"""Per-router leases of a token budget's headroom: admissions without a KV round trip.

A router takes a slice (``max_tokens // LEASE_SHARE``) of one budget window's headroom as ONE
reservation in the window's KV entry, under the id ``lease:<router id>``, and admits requests
against it locally (no I/O) while its free part covers the request's reservation. Settlements
are applied to the lease locally at once (the request's reservation leaves the lease; its actual
usage moves from the lease to the spend) and written together, with the lease's expiry renewed,
every :data:`FLUSH_S` by one background task of the router (while it holds any lease).

Why the limit holds: a lease is granted only while ``spent + every reservation + the slice``
stays within the limit, like any reservation, and a settlement moves ``min(actual, free part)``
from the lease to the spend, so it adds to ``spent + reserved`` only what the request used
beyond what it reserved and the lease could cover: the documented overshoot bound
(``Σ max(0, actual - reserved)``) is unchanged. Until a flush, the lease still holds what
settled requests used (counted as reserved, never less than spent).

No starvation near the limit: a slice is leased only when it covers at least
:data:`LEASE_MIN_REQUESTS` such requests and the headroom left is at least
``max(LEASE_HEADROOM_SLICES, leases + 2)`` slices; otherwise the request reserves for itself
as before (a run budget like ``max_tokens_per_run: 140`` never leases). A lease unused for
:data:`LEASE_IDLE_S` is given back (shrunk to what requests in flight hold), and every lease is
given back at stop. A router that dies leaks its lease until its expiry (:data:`LEASE_TTL_S`
after its last write, ``MODELBUS_BUDGET_LEASE_TTL_S``). Leases apply to token budgets only
(``max_cost`` unset); a cost budget reserves per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

from services.router.budget_store import BudgetStore, Refused
from shared.budgets import LEASE_PREFIX, ZERO, BudgetEntry, Reservation, refusal
from shared.routing import Budget

LEASE_SHARE = 64
"""A lease is ``1 / LEASE_SHARE`` of a budget's limit."""
LEASE_MIN_REQUESTS = 4
"""A slice smaller than this many of the request's reservation is not worth a lease."""
LEASE_HEADROOM_SLICES = 8
"""No lease once the headroom left is below this many slices (nor below ``leases + 2``)."""
LEASE_TTL_S = float(os.environ.get("MODELBUS_BUDGET_LEASE_TTL_S", "30"))
"""A lease expires this long after its last write (a dead router's lease frees then)."""
LEASE_IDLE_S = 3.0
"""A lease unused this long is given back."""
FLUSH_S = 0.05
"""How often a lease's settlements are written (and its expiry renewed when near)."""


def lease_slice(budget: Budget) -> int:
    return (budget.max_tokens or 0) // LEASE_SHARE


@dataclass(slots=True)
class _Lease:
    key: str
    budget: Budget
    value: str
    window: str
    kv_tokens: int = 0
    """The lease's tokens in the KV entry, as last written."""
    holds: int = 0
    """Reserved by the requests in flight admitted from it."""
    spent: int = 0
    """Usage settled locally, not yet written."""
    take: int = 0
    """What the next write takes off the lease (settled usage it covered)."""
    expires: float = 0.0
    last_used: float = 0.0
    busy: asyncio.Future[None] | None = None
    """Set while a write of this lease is on its way (one at a time, so ``kv_tokens`` stays exact)."""

    @property
    def free(self) -> int:
        return self.kv_tokens - self.take - self.holds


class Leases:
    """This router's leases, by KV key."""

    def __init__(self, store: BudgetStore, router_id: str, *, ttl_s: float = LEASE_TTL_S) -> None:
        self._store = store
        self.lease_id = f"{LEASE_PREFIX}{router_id}"
        self._ttl_s = ttl_s
        self._leases: dict[str, _Lease] = {}
        self._stopping = False
        self._ticker: asyncio.Task[None] | None = None
        self.writes = 0
        """Lease writes (grants, flushes, returns), for tests."""

    @staticmethod
    def eligible(budget: Budget, tokens: int) -> bool:
        """Whether a request reserving ``tokens`` of ``budget`` may go through a lease."""
        return budget.max_cost is None and lease_slice(budget) >= LEASE_MIN_REQUESTS * max(1, tokens)

    def _take_local(self, key: str, tokens: int) -> bool:
        lease = self._leases.get(key)
        if lease is None or lease.free < max(1, tokens) or lease.expires - time.time() < self._ttl_s / 4:
            return False
        lease.holds += tokens
        lease.last_used = time.monotonic()
        return True

    async def admit(
        self, budget: Budget, value: str, window: str, key: str, request_id: str, reservation: Reservation
    ) -> bool:
        """Admit a request: from the lease (``True``, no I/O in the common case), or, when no slice
        can be leased, by its own reservation ``request_id`` (``False``). Raises :class:`Refused`."""
        if self._take_local(key, reservation.tokens):
            return True
        while True:
            while True:  # one write of a lease at a time, so its ``kv_tokens`` stays exact
                lease = self._leases.get(key)
                if lease is None:  # new, or given back and dropped meanwhile
                    lease = self._leases[key] = _Lease(key, budget, value, window, last_used=time.monotonic())
                    if self._ticker is None or self._ticker.done():
                        self._ticker = asyncio.ensure_future(self._tick())
                if lease.busy is None:
                    break
                await asyncio.shield(lease.busy)
                if self._take_local(key, reservation.tokens):
                    return True
            if not await self._sync(lease, grow=(request_id, reservation)):
                return False  # reserved for itself
            if lease.free >= max(1, reservation.tokens):  # else taken by others meanwhile: once more
                lease.holds += reservation.tokens
                lease.last_used = time.monotonic()
                return True

    def settle(self, key: str, reserved: int, tokens: int) -> bool:
        """A request admitted from the lease of ``key`` answered, using ``tokens`` (no I/O);
        ``False`` when the lease is gone (the router stopped): the caller writes the spend."""
        lease = self._leases.get(key)
        if lease is None:
            return False
        lease.holds = max(0, lease.holds - reserved)
        lease.take += min(tokens, max(0, lease.free))
        lease.spent += tokens
        return True

    async def _sync(self, lease: _Lease, *, grow: tuple[str, Reservation] | None = None, release: bool = False) -> bool:
        """One write of the lease: its pending settlements, a renewed expiry, and a new slice
        (``grow``: ``True`` when granted, else the request's own reservation is written, or
        :class:`Refused`) or a return of its free part (``release``)."""
        loop = asyncio.get_running_loop()
        lease.busy = busy = loop.create_future()
        spent, take = lease.spent, lease.take
        lease.spent = lease.take = 0
        budget, lid, limit = lease.budget, self.lease_id, lease.budget.max_tokens or 0
        step = lease_slice(budget)
        holds, expected = lease.holds, lease.kv_tokens
        result: list[int | None] = [None]
        granted, lost = [False], [False]

        def change(entry: BudgetEntry) -> BudgetEntry:
            held = entry.reserved.get(lid)
            base = max(0, held.tokens - take) if held is not None else 0
            lost[0] = held is None and expected > 0  # expired (or the bucket was re-created)
            reserved = {k: v for k, v in entry.reserved.items() if k != lid}
            spent_entry = BudgetEntry(
                spent_tokens=entry.spent_tokens + spent, spent_cost=entry.spent_cost, reserved=reserved
            )
            expires = time.time() + self._ttl_s
            granted[0] = False
            if release:
                base = min(base, holds)
            elif grow is not None and base - holds >= max(1, grow[1].tokens):
                granted[0] = True  # it still covers the request: only its expiry was near
            elif grow is not None:
                leases = sum(1 for k in reserved if k.startswith(LEASE_PREFIX))
                headroom = limit - spent_entry.spent_tokens - spent_entry.reserved_tokens - base
                if headroom >= max(LEASE_HEADROOM_SLICES, leases + 2) * step:
                    base += step
                    granted[0] = True
            kept = (
                spent_entry
                if base == 0
                else spent_entry.with_reservation(lid, Reservation(tokens=base, cost=ZERO, expires=expires))
            )
            result[0] = base
            if grow is None or granted[0]:
                return kept
            request_id, reservation = grow
            why = refusal(budget, kept, reservation.tokens, reservation.cost)
            if why is not None:
                where = "" if lease.window == "run" else f", window {lease.window}"
                spent_only = BudgetEntry(spent_tokens=kept.spent_tokens, spent_cost=kept.spent_cost)
                in_flight = (
                    bool(kept.reserved) and refusal(budget, spent_only, reservation.tokens, reservation.cost) is None
                )
                raise Refused(budget, f"{why} ({budget.scope} {lease.value!r}{where})", in_flight=in_flight)
            return kept.with_reservation(request_id, reservation)

        try:
            self.writes += 1
            await self._store.update(lease.key, budget, lease.value, lease.window, change)
        except BaseException:
            lease.spent += spent  # not written: goes out with the next write
            lease.take += take
            raise
        else:
            lease.kv_tokens = result[0] or 0
            if lost[0]:  # what requests in flight held is no longer reserved: as if each had expired
                lease.holds = 0
            lease.expires = time.time() + self._ttl_s
            return granted[0]
        finally:
            lease.busy = None
            busy.set_result(None)

    async def _tick(self) -> None:
        """Every :data:`FLUSH_S`, tend every lease; ends when this router holds none."""
        while self._leases and not self._stopping:
            await asyncio.sleep(FLUSH_S)
            if self._stopping:
                return
            tending = [self._tend(lease) for lease in list(self._leases.values()) if lease.busy is None]
            if tending:
                await asyncio.gather(*tending)

    async def _tend(self, lease: _Lease) -> None:
        """Flush settlements, renew the expiry, give the lease back when idle and drop it once empty."""
        idle = time.monotonic() - lease.last_used >= LEASE_IDLE_S
        renew = lease.kv_tokens > 0 and lease.expires - time.time() < self._ttl_s / 2
        if lease.spent or lease.take or renew or (idle and lease.free > 0):
            try:
                await self._sync(lease, release=idle)
            except Exception:  # counted by the store; the lease expires if this keeps failing
                return
        if idle and lease.kv_tokens == 0 and lease.holds <= 0 and not lease.spent and lease.busy is None:
            if self._leases.get(lease.key) is lease:
                del self._leases[lease.key]

    async def stop(self) -> None:
        """Give every lease back (what requests in flight hold stays reserved)."""
        self._stopping = True
        if self._ticker is not None:
            with contextlib.suppress(Exception):
                await self._ticker
        for lease in list(self._leases.values()):
            while lease.busy is not None:
                await asyncio.shield(lease.busy)
            with contextlib.suppress(Exception):
                await self._sync(lease, release=True)
        self._leases.clear()
