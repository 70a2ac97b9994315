"""``modelbus usage``'s arithmetic: exact totals, unknown cost, gaps and duplicates per router."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from services.cli.usage_cmd import Report, RouterSequence, print_table
from shared.usage import UsageRecord


def rec(
    seq: int,
    *,
    router: str = "r1",
    model: str | None = "m",
    cost: str | None = None,
    currency: str | None = "USD",
    **tokens: int,
) -> UsageRecord:
    base = UsageRecord(
        request_id=f"{router}-{seq}",
        time_ms=seq,
        router=router,
        seq=seq,
        status=200,
        model=model,
        cost=cost,
        currency=currency if cost is not None else None,
    )
    return msgspec.structs.replace(base, **tokens)


def test_groups_add_up_exactly_to_the_total_and_unknown_cost_is_said() -> None:
    report = Report(by="model", since_s=3600)
    for i, (model, cost) in enumerate([("a", "0.5"), ("a", None), ("b", None), (None, "0.25")], start=1):
        report.add(rec(i, model=model, cost=cost, input_tokens=10 * i, cache_read_tokens=i))
    total = report.total
    assert total.requests == 4 and total.tokens["input_tokens"] == 100 and total.tokens["cache_read_tokens"] == 10
    assert sum(g.requests for g in report.groups.values()) == 4
    assert total.cost_text() == "0.75 USD + unknown (2)"
    assert report.groups["b"].cost_text() == "unknown"
    assert report.groups[None].cost_text() == "0.25 USD"
    shown = report.as_json()
    assert shown["total"]["cost"] == "0.75" and shown["total"]["currency"] == "USD"
    assert shown["total"]["cost_complete"] is False and shown["total"]["cost_unknown_requests"] == 2
    assert {g["group"]: g["cost"] for g in shown["groups"]}["b"] is None


def test_cost_totals_are_exact_where_floats_are_not() -> None:
    report = Report(by=None, since_s=3600)
    for i in range(1, 11):  # 0.1 ten times: 0.9999999999999999 in floats
        report.add(rec(i, cost="0.1"))
    report.add(rec(11, cost="0.000000375"))
    assert report.total.as_json()["cost"] == "1.000000375"
    assert report.total.cost == Decimal("1.000000375")


def test_a_free_answer_adds_nothing_and_currencies_are_never_added_together() -> None:
    report = Report(by=None, since_s=3600)
    report.add(rec(1, cost="0", currency=None))  # no attempt made: nothing billed
    assert report.total.as_json()["cost"] == "0" and report.total.cost_unknown == 0
    report.add(rec(2, cost="1.5", currency="USD"))
    report.add(rec(3, cost="2", currency="EUR"))
    shown = report.total.as_json()
    assert shown["cost"] is None and shown["costs"] == {"EUR": "2", "USD": "1.5"}
    assert report.total.cost_text() == "2 EUR + 1.5 USD"


def test_missing_numbers_are_gaps_late_ones_fill_them_and_duplicates_count_once() -> None:
    seq = RouterSequence(first=3, last=3)
    for n in (4, 7, 5, 9, 5, 1):
        seq.see(n)
    assert seq.missing == [[2, 2], [6, 6], [8, 8]]
    assert seq.missing_count == 3 and seq.duplicates == 1 and seq.records == 6
    report = Report(by=None, since_s=60)
    for n in (1, 2, 2, 4):
        report.add(rec(n, input_tokens=1))
    assert report.total.requests == 3 and report.gaps == 1  # the duplicate is not added twice


def test_the_table_shows_exact_costs_and_counts_unknown_ones_apart(capsys: pytest.CaptureFixture[str]) -> None:
    report = Report(by="model", since_s=3600)
    report.add(rec(1, model="priced", cost="0.0002350000"))
    report.add(rec(2, model="priced", cost="0.0002350000"))
    report.add(rec(3, model="unpriced", cost=None))
    print_table(report)
    out = capsys.readouterr().out
    assert "0.0004700000 USD + unknown (1)" in out
    assert "cost: 1 record(s) with unknown cost" in out and "COST" in out
