"""``modelbus usage``'s arithmetic: exact totals, unknown cost, gaps and duplicates per router."""

from __future__ import annotations

import msgspec

from services.cli.usage_cmd import Report, RouterSequence
from shared.usage import UsageRecord


def rec(
    seq: int, *, router: str = "r1", model: str | None = "m", cost: float | None = None, **tokens: int
) -> UsageRecord:
    base = UsageRecord(
        request_id=f"{router}-{seq}", time_ms=seq, router=router, seq=seq, status=200, model=model, cost=cost
    )
    return msgspec.structs.replace(base, **tokens)


def test_groups_add_up_exactly_to_the_total_and_unknown_cost_is_said() -> None:
    report = Report(by="model", since_s=3600)
    for i, (model, cost) in enumerate([("a", 0.5), ("a", None), ("b", None), (None, 0.25)], start=1):
        report.add(rec(i, model=model, cost=cost, input_tokens=10 * i, cache_read_tokens=i))
    total = report.total
    assert total.requests == 4 and total.tokens["input_tokens"] == 100 and total.tokens["cache_read_tokens"] == 10
    assert sum(g.requests for g in report.groups.values()) == 4
    assert total.cost_text() == "0.750000 + unknown (2)"
    assert report.groups["b"].cost_text() == "unknown"
    assert report.groups[None].cost_text() == "0.250000"
    shown = report.as_json()
    assert shown["total"]["cost_complete"] is False and shown["total"]["cost_unknown_requests"] == 2
    assert {g["group"]: g["cost"] for g in shown["groups"]}["b"] is None


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
