"""shared.metrics (the switch, the scrape-time collectors) and shared.overhead (the header's arithmetic)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared import headers as H
from shared import metrics as M
from shared.overhead import overhead_value, prior_ms


def _samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", " off "])
def test_metrics_off_in_any_spelling_turns_them_off(value: str) -> None:
    assert not M.metrics_enabled({M.METRICS_ENV: value})


@pytest.mark.parametrize("value", ["", "on", "1", "yes"])
def test_metrics_are_on_unless_turned_off(value: str) -> None:
    assert M.metrics_enabled({M.METRICS_ENV: value})
    assert M.metrics_enabled({})


def test_with_metrics_off_no_endpoint_starts_and_the_ready_line_is_unchanged() -> None:
    assert M.start_metrics_server("router", {M.METRICS_ENV: "off"}) is None
    assert M.metrics_url() is None
    assert M.with_metrics_url("router") == "router"


def test_budget_rows_are_read_at_scrape_time_as_spent_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [("daily", "team-a", "tokens", 120.0, 1000.0), ("monthly", "team-a", "usd", 1.25, 50.0)]
    monkeypatch.setattr(M.scraped, "budgets", lambda: M.budget_rows(rows))
    samples = _samples()
    labels = frozenset({"budget": "daily", "scope_value": "team-a", "unit": "tokens"}.items())
    assert samples[("modelbus_budget_spent", labels)] == 120.0
    assert samples[("modelbus_budget_limit", labels)] == 1000.0
    usd = frozenset({"budget": "monthly", "scope_value": "team-a", "unit": "usd"}.items())
    assert samples[("modelbus_budget_spent", usd)] == 1.25
    rows.append(("run", "r1", "tokens", 5.0, 10.0))  # the next scrape sees the next snapshot
    assert ("modelbus_budget_limit", frozenset({"budget": "run", "scope_value": "r1", "unit": "tokens"}.items())) in (
        _samples()
    )


def test_breakers_not_closed_are_one_when_open_and_a_half_when_half_open(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [M.BreakerRow("a", "m1", "open"), M.BreakerRow("b", "m2", "half-open")]
    monkeypatch.setattr(M.scraped, "breakers", lambda: rows)
    samples = _samples()
    assert samples[("modelbus_breaker_state", frozenset({"endpoint": "a", "model": "m1"}.items()))] == 1.0
    assert samples[("modelbus_breaker_state", frozenset({"endpoint": "b", "model": "m2"}.items()))] == 0.5


def test_a_failing_source_leaves_the_scrape_working(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[M.BudgetRow]:
        raise KeyError("gone")

    monkeypatch.setattr(M.scraped, "budgets", broken)
    monkeypatch.setattr(M.scraped, "config", lambda: (7, 0.25))
    samples = _samples()
    assert samples[("modelbus_config_revision", frozenset())] == 7
    assert samples[("modelbus_config_propagation_lag_seconds", frozenset())] == 0.25
    assert not any(name == "modelbus_budget_spent" for name, _ in samples)


def test_the_overhead_adds_this_hops_time_to_what_came_before() -> None:
    assert overhead_value(prior_ms({H.OVERHEAD_MS: "1.500"}), 0.0025) == "4.000"
    assert overhead_value(0.0, 0.0) == "0.000"
    assert overhead_value(2.0, -1.0) == "2.000"  # a hop never subtracts


@pytest.mark.parametrize("raw", [None, "", "abc", "-3", "nan", "1e12"])
def test_an_absent_or_unbelievable_overhead_from_before_counts_as_zero(raw: str | None) -> None:
    assert prior_ms({} if raw is None else {H.OVERHEAD_MS: raw}) == 0.0
