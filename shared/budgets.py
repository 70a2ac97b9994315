"""Budgets' shared state: the KV entry of one budget window, its key, and the arithmetic on it.

Every router reads and writes these entries in the JetStream KV bucket
:data:`shared.subjects.BUDGETS_BUCKET` with compare-and-set
(``services/router/budgets.py``); ``modelbus get budgets`` reads them as ``admin``.
One entry per (budget, scope value, period window), keyed by
:func:`entry_key`, holds what was spent there and what requests in flight
have reserved.

The rule (:func:`refusal`): a request is admitted only while ``spent +
reserved + its reservation`` stays within the limit, in tokens and in cost;
``spent + reserved >= limit`` refuses everything. A reservation carries an
expiry (wall clock), so one whose router died mid-request is dropped on the
next write of its entry (:meth:`BudgetEntry.without_expired`); its actual
usage is then never charged, which is the one way spend can be undercounted.
"""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal

import msgspec
from msgspec import Struct

from shared.routing import Budget, BudgetPeriod

ZERO = Decimal(0)
LEASE_PREFIX = "lease:"
"""Reservation ids ``lease:<router id>``: a router's lease of a slice of the headroom
(``services/router/budget_leases.py``), not one request's reservation."""


class Reservation(Struct, kw_only=True, frozen=True, array_like=True):
    """What one request in flight holds of a budget window until it settles."""

    tokens: int
    cost: Decimal
    """USD; 0 for a budget without ``max_cost``."""
    expires: float
    """Unix time (seconds) after which any router drops it."""


class BudgetEntry(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The KV value of one budget window: spend so far and reservations by request id."""

    spent_tokens: int = 0
    spent_cost: Decimal = ZERO
    reserved: dict[str, Reservation] = {}

    @property
    def reserved_tokens(self) -> int:
        """Tokens held by requests in flight."""
        return sum(r.tokens for r in self.reserved.values())

    @property
    def reserved_cost(self) -> Decimal:
        """Cost held by requests in flight."""
        return sum((r.cost for r in self.reserved.values()), ZERO)

    def without_expired(self, now: float) -> BudgetEntry:
        """This entry without the reservations that expired by ``now`` (their routers are gone)."""
        if all(r.expires > now for r in self.reserved.values()):
            return self
        kept = {rid: r for rid, r in self.reserved.items() if r.expires > now}
        return BudgetEntry(spent_tokens=self.spent_tokens, spent_cost=self.spent_cost, reserved=kept)

    def with_reservation(self, request_id: str, reservation: Reservation) -> BudgetEntry:
        """This entry holding ``reservation`` for ``request_id`` as well."""
        return BudgetEntry(
            spent_tokens=self.spent_tokens,
            spent_cost=self.spent_cost,
            reserved={**self.reserved, request_id: reservation},
        )

    def settled(self, request_id: str, tokens: int, cost: Decimal) -> BudgetEntry:
        """The reservation of ``request_id`` (if still held) replaced by the actual usage."""
        kept = {rid: r for rid, r in self.reserved.items() if rid != request_id}
        return BudgetEntry(spent_tokens=self.spent_tokens + tokens, spent_cost=self.spent_cost + cost, reserved=kept)


entry_encoder = msgspec.json.Encoder()
entry_decoder = msgspec.json.Decoder(BudgetEntry)


def decode_entry(value: bytes | None) -> BudgetEntry:
    """An entry from its KV value; an absent, empty or unreadable value is an empty entry (a
    corrupt entry must not lock a budget forever; it is overwritten on the next write)."""
    if not value:
        return BudgetEntry()
    try:
        return entry_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return BudgetEntry()


def refusal(budget: Budget, entry: BudgetEntry, tokens: int, cost: Decimal) -> str | None:
    """Why ``budget`` refuses a reservation of ``tokens`` / ``cost`` on ``entry``, or ``None``
    when it admits it. Enforced at ``>=``: a window whose spend and reservations reached a
    limit refuses everything, even a reservation of 0."""
    if budget.max_tokens is not None:
        held = entry.spent_tokens + entry.reserved_tokens
        if held >= budget.max_tokens or held + tokens > budget.max_tokens:
            return (
                f"budget {budget.name!r} allows {budget.max_tokens} tokens per {budget.period}; "
                f"spent {entry.spent_tokens}, reserved {entry.reserved_tokens}, this request needs ~{tokens}"
            )
    if budget.max_cost is not None:
        held_cost = entry.spent_cost + entry.reserved_cost
        if held_cost >= budget.max_cost or held_cost + cost > budget.max_cost:
            return (
                f"budget {budget.name!r} allows ${money(budget.max_cost)} per {budget.period}; spent "
                f"${money(entry.spent_cost)}, reserved ${money(entry.reserved_cost)}, "
                f"this request needs up to ${money(cost)}"
            )
    return None


def money(amount: Decimal) -> str:
    """``amount`` as plain decimal text without trailing zeros (``0.0048``, never ``4.8E-3``)."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# ------------------------------------------------------------------ keys and windows


def window_of(period: BudgetPeriod, now: float) -> str:
    """The period window a moment (Unix seconds) falls in, UTC: ``run``, ``2026-12-07`` (day) or
    ``2026-12`` (month). A window's entry is new at each UTC midnight / first of the month."""
    if period == "run":
        return "run"
    known = _WINDOWS.get(period)
    if known is not None and known[0] <= now < known[1]:
        return known[2]
    day = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    if period == "day":
        start = day.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=1)
        text = f"{day:%Y-%m-%d}"
    else:
        start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        text = f"{day:%Y-%m}"
    _WINDOWS[period] = (start.timestamp(), end.timestamp(), text)
    return text


_WINDOWS: dict[str, tuple[float, float, str]] = {}
"""The last window seen per period, with its bounds: a request computes no date in the common case."""


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def entry_key(budget: str, value: str, window: str) -> str:
    """The KV key of one window: URL-safe base64 of the budget name and of the scope value (any
    text is a valid key that way), then the window, joined by ``.``."""
    return f"{_b64(budget)}.{_b64(value)}.{window}"


def parse_entry_key(key: str) -> tuple[str, str, str] | None:
    """``(budget, scope value, window)`` of :func:`entry_key`; ``None`` for another key."""
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        return _unb64(parts[0]), _unb64(parts[1]), parts[2]
    except (ValueError, UnicodeDecodeError):
        return None
