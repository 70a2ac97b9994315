"""The provider registry: the same types as the contract, and every class filed under its own type."""

from __future__ import annotations

import pytest

from services.providers.adapter import HttpChatAdapter
from services.providers.base import EndpointConnection
from services.providers.gemini import GeminiAdapter, VertexGeminiAdapter, gemini_class
from services.providers.mock import MockAdapter
from services.providers.registry import ADAPTERS, ChosenByEndpoint, adapter_classes
from shared.errors import ConfigError
from shared.routing import PROVIDER_TYPES, Endpoint


async def _no_credential(ref: str, endpoint_name: str) -> str:
    raise AssertionError("building an adapter must not fetch a credential")


def _connection(provider: str, **options: str) -> EndpointConnection:
    return EndpointConnection(Endpoint(name="e", provider=provider, options=options), _no_credential)


def test_the_registry_and_the_contract_name_exactly_the_same_provider_types() -> None:
    assert len(set(PROVIDER_TYPES)) == len(PROVIDER_TYPES), "shared.routing.PROVIDER_TYPES lists a type twice"
    only_registry = sorted(set(ADAPTERS) - set(PROVIDER_TYPES))
    only_contract = sorted(set(PROVIDER_TYPES) - set(ADAPTERS))
    assert not only_registry, f"in ADAPTERS but not in shared.routing.PROVIDER_TYPES: {only_registry}"
    assert not only_contract, f"in shared.routing.PROVIDER_TYPES but no adapter in ADAPTERS: {only_contract}"


@pytest.mark.parametrize("provider_type", sorted(ADAPTERS))
def test_every_adapter_class_names_its_span_provider_and_serves_the_type_it_is_filed_under(
    provider_type: str,
) -> None:
    classes = adapter_classes(ADAPTERS[provider_type])
    assert classes
    for cls in classes:
        assert isinstance(cls.gen_ai_provider, str) and cls.gen_ai_provider, cls
        if issubclass(cls, HttpChatAdapter):
            # the base only declares provider_type; every HTTP adapter must set it (errors carry it)
            assert cls.provider_type == provider_type, cls
        else:
            assert getattr(cls, "provider_type", provider_type) == provider_type, cls


def test_gemini_is_one_entry_building_ai_studio_or_vertex_ai_with_their_own_span_names() -> None:
    entry = ADAPTERS["gemini"]
    assert adapter_classes(entry) == (GeminiAdapter, VertexGeminiAdapter)
    studio = entry(_connection("gemini"))
    vertex = entry(_connection("gemini", project="soc-prod", location="europe-west4"))
    assert type(studio) is GeminiAdapter and studio.gen_ai_provider == "gcp.gemini"
    assert type(vertex) is VertexGeminiAdapter and vertex.gen_ai_provider == "gcp.vertex_ai"


def test_an_endpoint_whose_options_cannot_be_decided_on_is_a_config_error_naming_the_option() -> None:
    with pytest.raises(ConfigError) as caught:
        ADAPTERS["gemini"](_connection("gemini", vertex="perhaps"))
    assert caught.value.param == "options.vertex" and caught.value.http_status == 400


def test_a_chooser_that_picks_a_class_its_entry_does_not_list_is_refused() -> None:
    entry = ChosenByEndpoint(lambda endpoint: MockAdapter, GeminiAdapter)
    with pytest.raises(TypeError):
        entry(_connection("gemini"))
    assert gemini_class(Endpoint(name="e", provider="gemini", options={"vertex": "true"})) is VertexGeminiAdapter
