"""The routing table: which endpoint and model a request's ``model`` field leads to."""

from __future__ import annotations

import msgspec
import pytest

from services.router.table import RoutingTable
from shared.errors import NotFound
from shared.routing import Alias, Endpoint, RoutingConfig, RoutingDefaults, Target
from shared.subjects import provider_subject

ENDPOINTS = {
    "mock": Endpoint(name="mock", provider="mock", default_model="mock-1", locality="local", allow_private=True),
    "openai": Endpoint(
        name="openai",
        provider="openai",
        base_url="https://api.openai.com/v1",
        default_model="gpt-4o-mini",
        auth_ref="env:OPENAI_API_KEY",
        options={"organization": "org-1"},
    ),
    "together": Endpoint(name="together", provider="openai-compatible", base_url="https://api.together.xyz/v1"),
    "team/ep": Endpoint(name="team/ep", provider="anthropic", default_model="claude-x"),
    "team": Endpoint(name="team", provider="ollama", default_model="llama3"),
}

ALIASES = {
    "default": Alias(name="default", targets=[Target(endpoint="mock", model="mock-default")]),
    "fast": Alias(
        name="fast",
        targets=[
            Target(endpoint="openai", model="gpt-4o-mini", weight=3),
            Target(endpoint="mock", model="mock-fast"),
        ],
        strategy="weighted",
    ),
    # An alias that shadows an endpoint name wins over the endpoint.
    "openai": Alias(name="openai", targets=[Target(endpoint="mock", model="shadow")]),
}


def table(aliases: dict[str, Alias] | None = None) -> RoutingTable:
    return RoutingTable(
        RoutingConfig(
            revision=7,
            endpoints=ENDPOINTS,
            aliases=ALIASES if aliases is None else aliases,
            defaults=RoutingDefaults(strategy="round-robin"),
        )
    )


def only_target(model: str | None, t: RoutingTable | None = None) -> tuple[str, str]:
    route = (t or table()).resolve(model)
    (target,) = route.targets
    return target.endpoint.name, target.model


def test_an_alias_resolves_to_its_targets_in_order_with_its_strategy() -> None:
    route = table().resolve("fast")
    assert route.name == "fast"
    assert [(t.endpoint.name, t.model, t.weight) for t in route.targets] == [
        ("openai", "gpt-4o-mini", 3.0),
        ("mock", "mock-fast", 1.0),
    ]
    assert route.strategy == "weighted"


def test_an_alias_without_a_strategy_uses_the_default_strategy() -> None:
    assert table().resolve("default").strategy == "round-robin"


def test_an_alias_wins_over_an_endpoint_of_the_same_name() -> None:
    assert only_target("openai") == ("mock", "shadow")


def test_an_endpoint_name_resolves_to_its_default_model() -> None:
    route = table().resolve("mock")
    assert only_target("mock") == ("mock", "mock-1")
    assert route.strategy == "round-robin"


def test_endpoint_slash_model_resolves_to_that_model() -> None:
    assert only_target("mock/anything-goes") == ("mock", "anything-goes")


def test_a_namespaced_endpoint_resolves_with_its_model() -> None:
    assert only_target("team/ep/claude-opus") == ("team/ep", "claude-opus")


def test_a_namespaced_endpoint_alone_resolves_to_its_default_model() -> None:
    assert only_target("team/ep") == ("team/ep", "claude-x")


def test_the_longest_endpoint_prefix_wins() -> None:
    # "team" is an endpoint too, but "team/ep" is the longer match.
    assert only_target("team/ep/m") == ("team/ep", "m")
    assert only_target("team/other") == ("team", "other")


def test_a_model_name_containing_slashes_is_kept_whole() -> None:
    assert only_target("together/meta-llama/Llama-3.3-70B-Instruct-Turbo") == (
        "together",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    )


@pytest.mark.parametrize("model", [None, ""])
def test_no_model_means_the_default_alias(model: str | None) -> None:
    route = table().resolve(model)
    assert route.name == "default"
    assert only_target(model) == ("mock", "mock-default")


def test_no_model_without_a_default_alias_is_not_found() -> None:
    with pytest.raises(NotFound) as caught:
        table(aliases={}).resolve(None)
    assert caught.value.param == "model"
    assert caught.value.code == "alias_not_found"
    assert "default" in caught.value.message


@pytest.mark.parametrize("model", ["gpt-5", "nowhere/model", "mock/", "/mock"])
def test_an_unknown_model_is_not_found_naming_it(model: str) -> None:
    with pytest.raises(NotFound) as caught:
        table().resolve(model)
    err = caught.value
    assert err.http_status == 404
    assert err.code == "model_not_found"
    assert err.param == "model"
    assert repr(model) in err.message


def test_an_endpoint_without_a_default_model_is_not_found_with_a_hint() -> None:
    with pytest.raises(NotFound) as caught:
        table().resolve("together")
    err = caught.value
    assert err.param == "model"
    assert "'together'" in err.message
    assert "default_model" in err.message
    assert "together/<model>" in err.message


def test_targets_carry_the_provider_subject_of_their_endpoint() -> None:
    t = table()
    for name, endpoint in ENDPOINTS.items():
        (target,) = t.resolve(f"{name}/m").targets
        assert target.subject == provider_subject(endpoint.provider)
    assert t.resolve("fast").targets[0].subject == "modelbus.v1.provider.openai.chat"


def test_each_endpoint_is_encoded_once_and_reused_by_every_route() -> None:
    t = table()
    by_alias = t.resolve("fast").targets[0]
    by_name = t.resolve("openai/gpt-4o").targets[0]
    assert isinstance(by_alias.endpoint_raw, msgspec.Raw)
    assert bytes(by_alias.endpoint_raw) == msgspec.json.encode(ENDPOINTS["openai"])
    assert by_name.endpoint_raw is by_alias.endpoint_raw
    assert msgspec.json.decode(by_alias.endpoint_raw, type=Endpoint) == ENDPOINTS["openai"]


def test_alias_routes_are_built_once_per_table() -> None:
    t = table()
    assert t.resolve("fast") is t.resolve("fast")
    assert t.revision == 7
    assert t.alias_names == ["default", "fast", "openai"]
