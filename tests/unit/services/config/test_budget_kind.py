"""The Budget kind, and AgentPolicy ``max_tokens_per_run`` as one case of it, from documents to the compiled config."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.config.documents import compile_text
from shared.errors import ConfigError
from shared.routing import Budget

ENDPOINT = """\
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {name: mock}
spec: {provider: mock, default_model: m}
"""
AGENT = """\
apiVersion: modelbus.dev/v1
kind: Agent
metadata: {name: writer}
spec: {model_ref: mock}
"""


def budget(name: str, spec: str) -> str:
    return f"apiVersion: modelbus.dev/v1\nkind: Budget\nmetadata: {{name: {name}}}\nspec: {spec}\n"


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    assert caught.value.http_status == 400
    return caught.value.message


def test_budgets_compile_with_exact_costs_and_defaults() -> None:
    config = compile_text(
        "---\n".join(
            [
                ENDPOINT,
                budget("team-day", "{scope: namespace, match: research, period: day, max_cost: '12.345'}"),
                budget("every-key", "{scope: key, period: month, max_tokens: 1000000, max_cost: 0.1}"),
            ]
        )
    )
    assert config.budgets == [
        Budget(
            name="every-key",
            scope="key",
            period="month",
            max_tokens=1_000_000,
            max_cost=Decimal("0.1"),
            estimate_tokens=1024,
        ),
        Budget(
            name="team-day",
            scope="namespace",
            period="day",
            match="research",
            max_cost=Decimal("12.345"),
            estimate_tokens=1024,
        ),
    ]


def test_max_tokens_per_run_of_a_policy_becomes_a_run_budget_for_that_policy_only() -> None:
    policy = (
        "apiVersion: modelbus.dev/v1\nkind: AgentPolicy\nmetadata: {name: small}\n"
        "spec: {max_tokens_per_run: 60, agents: [writer]}\n"
    )
    config = compile_text("---\n".join([ENDPOINT, AGENT, policy]))
    assert config.budgets == [
        Budget(name="small:max_tokens_per_run", scope="run", period="run", max_tokens=60, policy="small")
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{scope: key, period: run, max_tokens: 5}", "period 'run' needs scope 'run'"),
        ("{scope: agent, period: day}", "no limit: give max_tokens, max_cost or both"),
        ("{scope: run, period: run, max_tokens: 0}", "max_tokens"),
        ("{scope: run, period: run, max_cost: -1}", "max_cost"),
        ("{scope: team, period: day, max_tokens: 5}", "scope"),
        ("{scope: agent, period: week, max_tokens: 5}", "period"),
        ("{scope: namespace, match: a/b, period: day, max_tokens: 5}", "a namespace has no '/'"),
        ("{scope: run, period: run, max_cost: 1, unknown_price: ignore}", "unknown_price"),
    ],
)
def test_an_incoherent_budget_is_refused_with_a_clear_error(spec: str, message: str) -> None:
    text = config_error("---\n".join([ENDPOINT, budget("bad", spec)]))
    assert "bad" in text and message in text, text
