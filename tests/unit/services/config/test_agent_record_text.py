"""``Agent.spec.record_text``: off unless an operator writes it, compiled into every router's table."""

from __future__ import annotations

import pytest

from services.config.documents import compile_text
from services.router.table import RoutingTable
from shared.errors import ConfigError

ENDPOINT = """\
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {name: mock}
spec: {provider: mock, default_model: m}
"""


def agent(name: str, spec: str) -> str:
    return f"apiVersion: modelbus.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec: {spec}\n"


def test_an_agent_records_text_only_when_its_spec_says_so_and_its_route_carries_it() -> None:
    config = compile_text(
        "---\n".join(
            [ENDPOINT, agent("plain", "{model_ref: mock}"), agent("opted", "{model_ref: mock, record_text: true}")]
        )
    )
    assert not config.agents["plain"].record_text and config.agents["opted"].record_text
    table = RoutingTable(config)
    assert table.resolve_agent("opted").record_text and not table.resolve_agent("plain").record_text
    assert not table.resolve("mock").record_text  # a request without an agent never records


def test_record_text_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="record_text"):
        compile_text("---\n".join([ENDPOINT, agent("odd", "{model_ref: mock, record_text: sometimes}")]))
