"""The router's metrics from a request's Outcome: counts, tokens by kind, retries and fallbacks."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from prometheus_client import REGISTRY

from services.router.budgets import BudgetSnapshot
from services.router.ledger import Outcome
from services.router.metrics import RouterMetrics, budget_rows
from shared.metrics import BudgetRow


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _outcome(route: str, status: int, *, usage: str | None = None, stream: bool = False) -> Outcome:
    now = asyncio.get_running_loop().time()
    out = Outcome(now - 0.05, stream=stream, route=route, endpoint="ep", provider="mock", model="m")
    out.answered(status, None if status == 200 else "bad_request")
    out.usage = usage
    if stream:
        out.committed(now - 0.01)
    return out


def test_an_answer_counts_once_with_its_tokens_by_kind() -> None:
    async def go() -> None:
        metrics = RouterMetrics()
        gen_ai = {
            "gen_ai_operation_name": "chat",
            "gen_ai_request_model": "unit-a",
            "gen_ai_response_model": "m",
            "gen_ai_provider_name": "mock",
        }
        before = _value("modelbus_requests_total", alias="unit-a", endpoint="ep", model="m", status="200")
        metrics.observe(_outcome("unit-a", 200, usage="20 7 5 2 3"), ["ep/m"])
        metrics.observe(_outcome("unit-a", 200, usage="10 3"), ["ep/m"])
        after = _value("modelbus_requests_total", alias="unit-a", endpoint="ep", model="m", status="200")
        assert after - before == 2
        for kind, total in {"input": 30, "output": 10, "cache_read": 5, "cache_write": 2, "reasoning": 3}.items():
            assert _value("gen_ai_client_token_usage_sum", **gen_ai, gen_ai_token_type=kind) == total, kind
        assert _value("gen_ai_client_operation_duration_seconds_count", **gen_ai, error_type="") == 2

    asyncio.run(go())


def test_an_error_is_counted_by_status_with_its_error_type_and_no_tokens() -> None:
    async def go() -> None:
        metrics = RouterMetrics()
        metrics.observe(_outcome("unit-b", 400), ["ep/m"])
        assert _value("modelbus_requests_total", alias="unit-b", endpoint="ep", model="m", status="400") == 1
        labels = {
            "gen_ai_operation_name": "chat",
            "gen_ai_request_model": "unit-b",
            "gen_ai_response_model": "m",
            "gen_ai_provider_name": "mock",
        }
        assert _value("gen_ai_client_operation_duration_seconds_count", **labels, error_type="bad_request") == 1
        assert _value("gen_ai_client_token_usage_count", **labels, gen_ai_token_type="input") == 0

    asyncio.run(go())


def test_a_stream_observes_its_time_to_first_token() -> None:
    async def go() -> None:
        RouterMetrics().observe(_outcome("unit-c", 200, stream=True), ["ep/m"])
        labels = {
            "gen_ai_operation_name": "chat",
            "gen_ai_request_model": "unit-c",
            "gen_ai_response_model": "m",
            "gen_ai_provider_name": "mock",
        }
        assert _value("gen_ai_server_time_to_first_token_seconds_count", **labels) == 1

    asyncio.run(go())


def test_attempts_on_the_same_target_are_retries_and_moves_to_another_are_fallbacks() -> None:
    async def go() -> None:
        RouterMetrics().observe(_outcome("unit-d", 200), ["a/m", "a/m", "b/m", "a/m"])
        assert _value("modelbus_retries_total", alias="unit-d") == 1
        assert _value("modelbus_fallbacks_total", alias="unit-d") == 2

    asyncio.run(go())


def test_a_request_with_no_final_answer_is_not_counted() -> None:
    async def go() -> None:
        out = Outcome(asyncio.get_running_loop().time(), route="unit-e")
        RouterMetrics().observe(out, [])
        assert _value("modelbus_requests_total", alias="unit-e", endpoint="", model="", status="200") == 0

    asyncio.run(go())


def test_budget_rows_take_the_newest_window_and_one_row_per_unit_with_a_limit() -> None:
    def snap(window: str, tokens: int, cost: str, limit_tokens: int | None, limit_cost: str | None) -> BudgetSnapshot:
        return BudgetSnapshot(
            budget="team",
            scope_value="research",
            window=window,
            limit_tokens=limit_tokens,
            limit_cost=Decimal(limit_cost) if limit_cost else None,
            spent_tokens=tokens,
            spent_cost=Decimal(cost),
            reserved_tokens=0,
            reserved_cost=Decimal(0),
        )

    rows = budget_rows([snap("2026-12-07", 900, "0.5", 1000, "2"), snap("2026-12-08", 10, "0.25", 1000, "2")])
    assert sorted(rows) == [
        BudgetRow("team", "research", "tokens", 10.0, 1000.0),
        BudgetRow("team", "research", "usd", 0.25, 2.0),
    ]
    assert [r.unit for r in budget_rows([snap("run", 5, "0", 100, None)])] == ["tokens"]
