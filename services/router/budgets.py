"""Budgets in tokens and cost, shared by every router: reserve before the call, settle after.

A :class:`~shared.routing.Budget` applies to a request by its scope value: the
gateway key name (the broker identity, e.g. ``client.app``, for a request that
did not come through the gateway), the agent, the agent's namespace, or the
run (``Modelbus-Run-Id``); ``match`` narrows it to one value, and a policy's
``max_tokens_per_run`` (compiled into a Budget with ``policy`` set) to the
requests under that policy. Each (budget, scope value, UTC period window) has
one entry in the KV bucket :data:`shared.subjects.BUDGETS_BUCKET`
(:mod:`shared.budgets`): what was spent and what requests in flight reserved.

* :meth:`Budgets.reserve`, before the call: in every applying window, with
  compare-and-set, add a reservation of the prompt estimate plus the request's
  ``max_tokens`` (or the budget's ``estimate_tokens``), and for a cost budget
  the most those tokens could cost at any target of the plan. Admitted only
  while ``spent + reserved + this`` stays within every limit; refused at
  ``>=`` with a 429 ``budget_exceeded`` (:class:`shared.errors.BudgetExceeded`).
* :meth:`Budgets.settle`, after the answer is out (a background task, off the
  client's path, awaited by :meth:`Budgets.stop`): replace the reservation by
  the actual usage and its cost at the answering target's price; a request
  without usage (an error) just releases it.
* Every reservation expires (the request's deadline plus a margin): a router
  that died mid-request leaks it only until the next write of that entry.

Round trips: none when no budget applies (one attribute test on the hot path).
A token budget whose slice (``max_tokens // 64``) covers several requests is
admitted from this router's lease of that slice, with no I/O
(:mod:`services.router.budget_leases`: one reservation ``lease:<router id>``
per window, settlements written together every 50 ms, given back when idle or
at stop; none near the limit, where requests reserve for themselves).
Otherwise one KV write per applying window to reserve: the write goes on the
revision this router last saw, and only a conflict (another router wrote
meanwhile) costs a re-read. The changes of one window that queue up while its
write is on the way go out together in the next one (group commit), so one
router's requests never conflict with each other and a busy window costs one
round trip per batch; a settlement waits up to :data:`~services.router.budget_store.SETTLE_LINGER_S` for
the next reservation of its window, to share its write. A request refused
only for what requests in flight reserved looks again for up to
:data:`IN_FLIGHT_WAIT_S` before its 429, since those settle within
milliseconds of their answers.

Overshoot bound: reservations are admitted against the limit, so spend exceeds
it only by what requests in flight use beyond what they reserved: their
prompt-estimate error (the estimate is ``ceil(chars/4)``), plus, for requests
without ``max_tokens``, output beyond ``estimate_tokens`` (0 for a policy's
``max_tokens_per_run``); for cost the same tokens at the price of the target
that answered, which never exceeds the plan's dearest. Reservations dropped
because they expired stop counting, so requests outliving their deadline plus
the margin can add their usage on top.

Unknown prices: a cost budget fails closed by default (``unknown_price:
refuse``): a request that could reach a target with no price (or a price in
another currency than USD) is refused with a 403 ``budget_price_unknown``
naming the target. ``count_tokens`` admits it and counts it in tokens only.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from msgspec import Struct
from nats.aio.client import Client

from services.router.budget_leases import Leases
from services.router.budget_scopes import reserved_tokens, upper_cost
from services.router.budget_store import SETTLE_WAIT_S, BudgetStore, Refused
from services.router.filters import Needs
from services.router.ledger import Outcome
from services.router.table import ResolvedTarget, RoutingTable
from shared import headers as H
from shared.budgets import (
    ZERO,
    BudgetEntry,
    Reservation,
    entry_key,
    refusal,
    window_of,
)
from shared.errors import BudgetExceeded, PolicyDenied
from shared.pricing import cost_of, tokens_from_counts
from shared.replies import DEADLINE_GRACE_S
from shared.routing import Budget, Price
from shared.usage import TokenCounts

EXPIRY_MARGIN_S = 30.0
"""A reservation outlives its request's deadline by this much (plus the router's grace)."""
IN_FLIGHT_WAIT_S = 0.05
"""How long a request refused only for other requests' reservations waits for them to settle."""
IN_FLIGHT_RETRY_S = 0.01
_USD = "USD"


def _settlement(request_id: str, tokens: int, cost: Decimal) -> Callable[[BudgetEntry], BudgetEntry]:
    return lambda entry: entry.settled(request_id, tokens, cost)


class BudgetSnapshot(Struct, kw_only=True, frozen=True):
    """One budget window as this router last saw it (for metrics; no I/O to make)."""

    budget: str
    scope_value: str
    window: str
    limit_tokens: int | None
    limit_cost: Decimal | None
    spent_tokens: int
    spent_cost: Decimal
    reserved_tokens: int
    reserved_cost: Decimal


@dataclass(slots=True)
class Hold:
    """One request's reservations, until :meth:`Budgets.settle`."""

    request_id: str
    """The reservation's id in every window: the request id plus random bits (unique per request)."""
    windows: list[tuple[Budget, str, str, str]]
    """``(budget, scope value, window, KV key)`` of every window that holds a reservation."""
    table: RoutingTable
    leased: list[tuple[Budget, str, str, str, int]] = field(default_factory=list)
    """``(budget, scope value, window, KV key, tokens)`` of every window admitted from this router's lease."""
    pending: list[tuple[Budget, str, str, str, Reservation]] = field(default_factory=list)
    """Reservations :meth:`Budgets.reserve` is still to write."""
    prices: dict[str, Price | None] = field(default_factory=dict)
    """Price of each plan target by endpoint name (cost budgets only), for settling."""
    settled: bool = False


def _price_unknown(budget: Budget, target: ResolvedTarget, price: Price | None) -> PolicyDenied:
    why = "has no price" if price is None else f"is priced in {price.currency}, not USD"
    return PolicyDenied(
        f"budget {budget.name!r} caps cost, and target {target.endpoint.name}/{target.model} {why}: "
        "add a ModelPrice for it, or set the budget's unknown_price: count_tokens",
        code="budget_price_unknown",
    )


class Budgets:
    """Reservations and spend per budget window, in a KV bucket every router shares."""

    def __init__(
        self,
        nc: Client,
        *,
        expiry_margin_s: float = EXPIRY_MARGIN_S,
        router_id: str | None = None,
        lease_ttl_s: float | None = None,
    ) -> None:
        self._nc = nc
        self._expiry_margin_s = expiry_margin_s
        self._store = BudgetStore(nc)
        ttl = {} if lease_ttl_s is None else {"ttl_s": lease_ttl_s}
        self.leases = Leases(self._store, router_id or os.urandom(6).hex(), **ttl)
        self._hold_prefix = os.urandom(6).hex()
        self._holds = itertools.count(1)
        """Per-router leases of token budgets (:mod:`services.router.budget_leases`)."""

    @property
    def settle_failures(self) -> int:
        """Settlements that failed (their reservations expire instead; the usage is not counted)."""
        return self._store.settle_failures

    async def stop(self, timeout_s: float = SETTLE_WAIT_S) -> None:
        """Give the leases back and wait (bounded) for the settlements still running: the router
        settles before it forgets."""
        await self.leases.stop()
        await self._store.stop(timeout_s)

    async def drained(self) -> None:
        """Return once no settlement is queued or running (tests)."""
        await self._store.drained()

    # ------------------------------------------------------------ the request path

    def prepare(
        self,
        request_id: str,
        budgets: Sequence[tuple[Budget, str | None]],
        needs: Needs,
        targets: Sequence[ResolvedTarget],
        table: RoutingTable,
        deadline: float,
    ) -> Hold | None:
        """What the request will reserve in each applying window (no I/O; :meth:`reserve` writes
        it). Raises at once what needs no bucket: a request larger than a run's whole budget, a
        cost budget with a target it cannot price. ``None`` when nothing is to be reserved."""
        # Reservations are keyed by an id of our own, not the client's request id: two requests
        # sent with the same id must not share (and so shrink) one reservation. A random prefix per
        # router and a counter make it unique without a syscall per request.
        hold = Hold(f"{request_id[:40]}.{self._hold_prefix}{next(self._holds)}", [], table)
        now = time.time()
        expires = now + max(0.0, deadline - time.monotonic()) + DEADLINE_GRACE_S + self._expiry_margin_s
        for budget, value in budgets:
            tokens = reserved_tokens(budget, needs)
            cost = self._reserved_cost(budget, hold, needs, targets, tokens) if budget.max_cost is not None else ZERO
            reservation = Reservation(tokens=tokens, cost=cost, expires=expires)
            if value is None:  # a run of its own: only its reservation meets the limit
                why = refusal(budget, BudgetEntry(), tokens, cost)
                if why is not None:
                    raise BudgetExceeded(f"{why} (this request has no {H.RUN_ID}: it is a run of its own)")
                continue
            window = window_of(budget.period, now)
            hold.pending.append((budget, value, window, entry_key(budget.name, value, window), reservation))
        return hold if hold.pending else None

    async def reserve(self, hold: Hold) -> None:
        """Write ``hold``'s reservations, or raise :class:`BudgetExceeded` naming the (smallest)
        budget that refuses; nothing stays reserved when one refuses."""
        writes, hold.pending = hold.pending, []
        results: list[BaseException | bool]
        if len(writes) == 1:  # the common case, without a gather's tasks
            try:
                results = [await self._reserve_one(hold.request_id, *writes[0])]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self._reserve_one(hold.request_id, *w) for w in writes), return_exceptions=True
            )
        failed: list[BaseException] = []
        for (budget, value, window, key, reservation), result in zip(writes, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(result)
            elif result:
                hold.leased.append((budget, value, window, key, reservation.tokens))
            else:
                hold.windows.append((budget, value, window, key))
        if failed:
            hold.settled = True
            self._settle(hold, 0, ZERO)
            refused = [e for e in failed if isinstance(e, Refused)]
            if refused:
                smallest = min(refused, key=lambda e: (e.budget.max_tokens or 0, e.budget.max_cost or ZERO))
                raise BudgetExceeded(smallest.message)
            raise failed[0]

    def _reserved_cost(
        self, budget: Budget, hold: Hold, needs: Needs, targets: Sequence[ResolvedTarget], tokens: int
    ) -> Decimal:
        most = ZERO
        for target in targets:
            name = target.endpoint.name
            if name not in hold.prices:
                hold.prices[name] = hold.table.price_for(name, target.endpoint.provider, target.model)
            price = hold.prices[name]
            if price is None or price.currency != _USD:
                if budget.unknown_price == "refuse":
                    raise _price_unknown(budget, target, price)
                continue
            most = max(most, upper_cost(price, needs.prompt_tokens, tokens - needs.prompt_tokens))
        return most

    async def _reserve_one(
        self, request_id: str, budget: Budget, value: str, window: str, key: str, reservation: Reservation
    ) -> bool:
        """Reserve in one window: ``True`` when admitted from this router's lease."""
        leased = self.leases.eligible(budget, reservation.tokens)

        def reserve(entry: BudgetEntry) -> BudgetEntry:
            why = refusal(budget, entry, reservation.tokens, reservation.cost)
            if why is not None:
                where = "" if window == "run" else f", window {window}"
                spent_only = BudgetEntry(spent_tokens=entry.spent_tokens, spent_cost=entry.spent_cost)
                in_flight = (
                    bool(entry.reserved) and refusal(budget, spent_only, reservation.tokens, reservation.cost) is None
                )
                raise Refused(budget, f"{why} ({budget.scope} {value!r}{where})", in_flight=in_flight)
            return entry.with_reservation(request_id, reservation)

        give_up = time.monotonic() + IN_FLIGHT_WAIT_S
        while True:
            try:
                if leased:
                    return await self.leases.admit(budget, value, window, key, request_id, reservation)
                await self._store.update(key, budget, value, window, reserve)
                return False
            except Refused as refused:
                # Refused only for what other requests hold: they settle within milliseconds of their
                # answers, most often below what they reserved, so look again before the 429.
                if not refused.in_flight or time.monotonic() + IN_FLIGHT_RETRY_S > give_up:
                    raise
            await asyncio.sleep(IN_FLIGHT_RETRY_S)

    def settle(self, hold: Hold | None, outcome: Outcome) -> None:
        """Replace ``hold``'s reservations by the answer's usage, in the background (call once the
        answer is out); an answer without usage releases them. Never raises."""
        if hold is None or hold.settled:
            return
        hold.settled = True
        if not hold.windows and not hold.leased:
            return
        counts = outcome.tokens
        tokens = counts.total if counts is not None else 0
        cost = ZERO
        if counts is not None and any(w[0].max_cost is not None for w in hold.windows):  # leases: tokens only
            cost = self._actual_cost(hold, outcome, counts) or ZERO
        self._settle(hold, tokens, cost)

    @staticmethod
    def _actual_cost(hold: Hold, outcome: Outcome, counts: TokenCounts) -> Decimal | None:
        endpoint = outcome.endpoint
        if endpoint is None:
            return None
        price: Price | None = None
        if outcome.provider and outcome.model:
            price = hold.table.price_for(endpoint, outcome.provider, outcome.model)
        if price is None or price.currency != _USD:
            price = hold.prices.get(endpoint)
        if price is None or price.currency != _USD:
            return None  # unknown_price: count_tokens
        return cost_of(price, tokens_from_counts(counts))

    def _settle(self, hold: Hold, tokens: int, cost: Decimal) -> None:
        """Queue the settlement of every window of ``hold`` (nobody waits for it; a failure is
        counted in :attr:`settle_failures` and the reservation expires)."""
        rid = hold.request_id
        for budget, value, window, key, reserved in hold.leased:
            if not self.leases.settle(key, reserved, tokens):
                self._store.enqueue(key, budget, value, window, _settlement("", tokens, ZERO), None, urgent=False)
        for budget, value, window, key in hold.windows:
            budget_cost = cost if budget.max_cost is not None else ZERO
            self._store.enqueue(key, budget, value, window, _settlement(rid, tokens, budget_cost), None, urgent=False)

    # ------------------------------------------------------------ direct use

    async def charge(self, budget: Budget, value: str, tokens: int, cost: Decimal = ZERO) -> None:
        """Add spend to the current window of ``budget`` for ``value`` (no reservation)."""
        window = window_of(budget.period, time.time())
        await self._store.update(
            entry_key(budget.name, value, window), budget, value, window, lambda e: e.settled("", tokens, cost)
        )

    async def entry(self, budget: Budget | str, value: str, window: str | None = None) -> BudgetEntry:
        """The entry of one window, read now (``window``: the current one of ``budget``)."""
        name = budget if isinstance(budget, str) else budget.name
        if window is None:
            window = "run" if isinstance(budget, str) else window_of(budget.period, time.time())
        _, entry = await self._store.read(entry_key(name, value, window))
        return entry

    def snapshot(self) -> list[BudgetSnapshot]:
        """Every window this router wrote or read recently, as it last saw it (no I/O)."""
        return [
            BudgetSnapshot(
                budget=s.budget.name,
                scope_value=s.value,
                window=s.window,
                limit_tokens=s.budget.max_tokens,
                limit_cost=s.budget.max_cost,
                spent_tokens=s.entry.spent_tokens,
                spent_cost=s.entry.spent_cost,
                reserved_tokens=s.entry.reserved_tokens,
                reserved_cost=s.entry.reserved_cost,
            )
            for s in list(self._store.seen.values())
        ]
