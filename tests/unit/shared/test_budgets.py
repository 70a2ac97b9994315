"""Budget windows and the reservation arithmetic of one entry (no network)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from shared.budgets import (
    BudgetEntry,
    Reservation,
    decode_entry,
    entry_encoder,
    entry_key,
    money,
    parse_entry_key,
    refusal,
    window_of,
)
from shared.routing import Budget

TOKENS = Budget(name="t", scope="key", period="day", max_tokens=100)
COST = Budget(name="c", scope="key", period="month", max_cost=Decimal("1.00"))


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def held(tokens: int, cost: str = "0", expires: float = 10.0) -> Reservation:
    return Reservation(tokens=tokens, cost=Decimal(cost), expires=expires)


@pytest.mark.parametrize(
    ("period", "moment", "window"),
    [
        ("day", "2026-12-07T23:59:59.999", "2026-12-07"),
        ("day", "2026-12-08T00:00:00", "2026-12-08"),
        ("month", "2026-12-31T23:59:59", "2026-12"),
        ("month", "2027-01-01T00:00:00", "2027-01"),
        ("month", "2028-02-29T12:00:00", "2028-02"),
        ("run", "2026-12-07T10:00:00", "run"),
    ],
)
def test_windows_are_utc_calendar_days_and_months(period: str, moment: str, window: str) -> None:
    assert window_of(period, at(moment)) == window  # type: ignore[arg-type]


def test_a_window_is_utc_whatever_the_local_zone_would_say() -> None:
    # 23:30 UTC is already the next day east of UTC: the window is still the UTC day.
    assert window_of("day", at("2026-12-07T23:30:00")) == "2026-12-07"


def test_admission_counts_spend_and_reservations_and_refuses_at_the_limit() -> None:
    entry = BudgetEntry(spent_tokens=60, reserved={"a": held(30)})
    assert refusal(TOKENS, entry, 10, Decimal(0)) is None  # 60 + 30 + 10 == 100: within the limit
    why = refusal(TOKENS, entry, 11, Decimal(0))
    assert why is not None and "allows 100 tokens per day; spent 60, reserved 30, this request needs ~11" in why
    full = BudgetEntry(spent_tokens=100)
    assert refusal(TOKENS, full, 0, Decimal(0)) is not None  # >=: a spent budget refuses even 0


def test_cost_admission_is_exact_decimal_arithmetic() -> None:
    entry = BudgetEntry(spent_cost=Decimal("0.3"), reserved={"a": held(0, "0.6")})
    assert refusal(COST, entry, 0, Decimal("0.1")) is None  # 0.3 + 0.6 + 0.1 == 1.00 exactly (no float drift)
    assert refusal(COST, entry, 0, Decimal("0.1000000001")) is not None


def test_settling_replaces_the_reservation_by_actual_usage_and_a_release_adds_nothing() -> None:
    entry = BudgetEntry(spent_tokens=5).with_reservation("r1", held(50, "0.5")).with_reservation("r2", held(7))
    settled = entry.settled("r1", 42, Decimal("0.42"))
    assert (settled.spent_tokens, settled.spent_cost, list(settled.reserved)) == (47, Decimal("0.42"), ["r2"])
    released = settled.settled("r2", 0, Decimal(0))
    assert (released.spent_tokens, released.reserved) == (47, {})
    # A reservation dropped for expiry still gets its usage counted when the request settles late.
    assert settled.settled("gone", 3, Decimal(0)).spent_tokens == 50


def test_expired_reservations_are_dropped_and_live_ones_kept() -> None:
    entry = BudgetEntry(reserved={"dead": held(10, expires=5.0), "live": held(20, expires=15.0)})
    assert list(entry.without_expired(10.0).reserved) == ["live"]
    assert entry.without_expired(1.0) is entry  # nothing expired: no copy


def test_an_entry_survives_its_wire_form_exactly_and_garbage_reads_as_empty() -> None:
    entry = BudgetEntry(spent_tokens=3, spent_cost=Decimal("0.000001"), reserved={"r": held(4, "0.1", 99.5)})
    assert decode_entry(entry_encoder.encode(entry)) == entry
    assert decode_entry(b"not json") == BudgetEntry()
    assert decode_entry(None) == BudgetEntry()


def test_keys_round_trip_any_text_and_money_prints_without_exponents() -> None:
    key = entry_key("ns/budget", "run with spaces/and.dots*>", "2026-12")
    assert all(c.isalnum() or c in "-_." for c in key)
    assert parse_entry_key(key) == ("ns/budget", "run with spaces/and.dots*>", "2026-12")
    assert parse_entry_key("policy.run-1") is None
    assert money(Decimal("0.004800")) == "0.0048" and money(Decimal("1E-7")) == "0.0000001" and money(Decimal(5)) == "5"
