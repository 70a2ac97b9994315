"""How the config service reads a key's ``--agent`` and ``--namespace`` against the configuration."""

from __future__ import annotations

import pytest

from services.config.gateway_keys import resolve_binding
from shared.errors import InvalidRequest
from shared.routing import Agent, RoutingConfig

ROUTING = RoutingConfig(
    revision=1,
    endpoints={},
    aliases={},
    agents={name: Agent(name=name, model_ref="m") for name in ("helper", "team/coder", "team/writer", "other/spy")},
)


@pytest.mark.parametrize(
    ("agent", "namespace", "stored"),
    [
        (None, None, (None, None)),
        ("helper", None, ("helper", None)),
        ("team/coder", None, ("team/coder", None)),
        ("coder", "team", ("team/coder", "team")),
        ("team/coder", "team", ("team/coder", "team")),
        (None, "team", (None, "team")),
    ],
)
def test_agents_are_stored_by_full_name_and_looked_up_in_the_namespace(
    agent: str | None, namespace: str | None, stored: tuple[str | None, str | None]
) -> None:
    assert resolve_binding(ROUTING, agent, namespace) == stored


@pytest.mark.parametrize(
    ("agent", "namespace", "message"),
    [
        ("nobody", None, "unknown agent 'nobody'"),
        ("coder", None, "unknown agent 'coder'"),
        ("spy", "team", "unknown agent 'team/spy'"),
        ("other/spy", "team", "is not in --namespace 'team'"),
        (None, "empty", "namespace 'empty' has no agents"),
        (None, "Bad/NS", "--namespace 'Bad/NS'"),
        ("", None, "--agent: expected"),
    ],
)
def test_unknown_agents_and_namespaces_are_refused_naming_the_option(
    agent: str | None, namespace: str | None, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        resolve_binding(ROUTING, agent, namespace)
    assert caught.value.http_status == 400


def test_before_any_configuration_no_agent_is_known() -> None:
    with pytest.raises(InvalidRequest, match="config knows: none"):
        resolve_binding(None, "helper", None)
    assert resolve_binding(None, None, None) == (None, None)
