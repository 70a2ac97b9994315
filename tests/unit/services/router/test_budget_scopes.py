"""Which budgets apply to a request, with what scope value, and what it reserves (no network)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.router.budget_scopes import applying, reserved_tokens, upper_cost
from services.router.filters import Needs
from shared import headers as H
from shared.errors import InvalidRequest
from shared.pricing import price_from_rates
from shared.routing import Budget, Policy

KEY = Budget(name="key", scope="key", period="day", max_tokens=10)
ONE_KEY = Budget(name="one-key", scope="key", period="day", max_tokens=10, match="team-a")
AGENT = Budget(name="agent", scope="agent", period="month", max_tokens=10)
NAMESPACE = Budget(name="ns", scope="namespace", period="day", max_tokens=10)
RUN = Budget(name="run", scope="run", period="run", max_tokens=10)
POLICY = Budget(name="p:max_tokens_per_run", scope="run", period="run", max_tokens=10, policy="p")
ALL = [KEY, ONE_KEY, AGENT, NAMESPACE, RUN, POLICY]


def values(headers: dict[str, str], reply: str, policies: tuple[str, ...] = ()) -> dict[str, str | None]:
    return {b.name: v for b, v in applying(ALL, [Policy(name=p) for p in policies], headers, reply)}


def test_a_gateway_request_is_budgeted_by_its_key_name_and_a_nats_client_by_its_identity() -> None:
    via_gateway = values({H.KEY: "team-a"}, "_INBOX_gateway.abc")
    assert via_gateway == {"key": "team-a", "one-key": "team-a", "run": None}
    direct = values({H.KEY: "team-a"}, "_INBOX_client.app.abc")  # a forged key header is not trusted
    assert direct == {"key": "client.app", "run": None}


def test_agent_namespace_and_run_scopes_take_their_values_from_the_request() -> None:
    got = values({H.AGENT: "research/writer", H.RUN_ID: "r1"}, "_INBOX.x", policies=("p",))
    assert got == {"agent": "research/writer", "ns": "research", "run": "r1", "p:max_tokens_per_run": "r1"}
    assert "ns" not in values({H.AGENT: "writer"}, "_INBOX.x")  # no namespace, no namespace budget


def test_a_policy_budget_applies_only_under_its_policy() -> None:
    assert "p:max_tokens_per_run" not in values({H.RUN_ID: "r1"}, "_INBOX.x", policies=("other",))


def test_an_empty_run_id_is_a_400() -> None:
    with pytest.raises(InvalidRequest):
        applying([RUN], [], {H.RUN_ID: ""}, "_INBOX.x")


def test_a_request_reserves_its_prompt_estimate_and_max_tokens_or_the_budgets_estimate() -> None:
    estimate = Budget(name="e", scope="run", period="run", max_tokens=10, estimate_tokens=500)
    assert reserved_tokens(estimate, Needs(vision=False, tools=False, prompt_tokens=40, output_tokens=100)) == 140
    assert reserved_tokens(estimate, Needs(vision=False, tools=False, prompt_tokens=40, output_tokens=None)) == 540


def test_the_reserved_cost_takes_the_dearest_rate_of_each_side() -> None:
    price = price_from_rates(
        name="p",
        endpoint="e",
        model="m",
        input=Decimal(3),
        output=Decimal(15),
        cache_write=Decimal("3.75"),
        reasoning=Decimal(20),
        per_request=Decimal("0.01"),
    )
    assert upper_cost(price, 1000, 100) == Decimal("0.00375") + Decimal("0.002") + Decimal("0.01")
