"""Native configuration documents: what a user writes, and what they are told when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.config.boot_env import OPENAI_FORMAT_VENDORS, endpoints_from_env
from services.config.documents import (
    compile_config,
    compile_text,
    derive_locality,
    load_documents,
    parse_resources,
)
from shared.errors import ConfigError
from shared.routing import RoutingConfig

EXAMPLE = Path(__file__).resolve().parents[4] / "services" / "config" / "example.yaml"

MOCK_ENDPOINT = """\
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {name: mock}
spec: {provider: mock, default_model: mock-1}
"""


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    assert caught.value.http_status == 400
    return caught.value.message


def document(kind: str, metadata: str, spec: str, *, api_version: str = "modelbus.dev/v1") -> str:
    """One YAML document, with ``metadata`` and ``spec`` in flow style."""
    return f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {metadata}\nspec: {spec}\n"


def endpoint_doc(name: str, spec: str, *, namespace: str | None = None) -> str:
    ns = f", namespace: {namespace}" if namespace else ""
    return document("ModelEndpoint", f"{{name: {name}{ns}}}", spec)


def alias_doc(name: str, targets: str) -> str:
    return document("ModelAlias", f"{{name: {name}}}", f"{{targets: {targets}}}")


def docs(*texts: str) -> str:
    return "---\n".join(texts)


# ---------------------------------------------------------------- error messages


def test_a_bad_url_is_reported_with_document_index_kind_name_path_and_reason() -> None:
    text = docs(MOCK_ENDPOINT, endpoint_doc("x", '{provider: openai, base_url: "not a url"}'))
    assert config_error(text) == "doc 2 (ModelEndpoint x): spec.base_url: not a URL"


def test_a_url_without_http_scheme_is_not_a_url() -> None:
    message = config_error(endpoint_doc("x", '{provider: openai, base_url: "ftp://files.example.com"}'))
    assert message == "doc 1 (ModelEndpoint x): spec.base_url: not a URL"


def test_an_unknown_spec_field_is_an_error_naming_it() -> None:
    message = config_error(endpoint_doc("x", "{provider: mock, colour: red}"))
    assert message == "doc 1 (ModelEndpoint x): spec.colour: unknown field"


def test_an_unknown_metadata_field_is_an_error_naming_it() -> None:
    text = document("ModelEndpoint", "{name: x, owner: me}", "{provider: mock}")
    assert config_error(text) == "doc 1 (ModelEndpoint x): metadata.owner: unknown field"


def test_an_unknown_kind_is_an_error_listing_the_known_kinds() -> None:
    text = document("Gizmo", "{name: g}", "{}")
    message = config_error(text)
    assert message.startswith("doc 1 (Gizmo g): kind: unknown kind 'Gizmo'")
    assert "ModelEndpoint" in message and "ModelAlias" in message


def test_an_unknown_provider_type_is_an_error_listing_the_known_types() -> None:
    message = config_error(endpoint_doc("x", "{provider: cohere}"))
    assert message.startswith("doc 1 (ModelEndpoint x): spec.provider: unknown provider 'cohere'")
    assert "openai" in message and "mock" in message


def test_a_wrong_api_version_is_an_error() -> None:
    text = document("ModelEndpoint", "{name: x}", "{provider: mock}", api_version="modelbus.dev/v2")
    assert config_error(text).startswith("doc 1 (ModelEndpoint x): apiVersion: ")


def test_an_out_of_range_number_is_an_error_naming_the_field() -> None:
    message = config_error(endpoint_doc("x", "{provider: mock, timeout_ms: 0}"))
    assert message.startswith("doc 1 (ModelEndpoint x): spec.timeout_ms: ")


def test_an_alias_without_targets_is_an_error() -> None:
    assert config_error(alias_doc("fast", "[]")).startswith("doc 1 (ModelAlias fast): spec.targets: ")


def test_every_invalid_document_is_reported_at_once() -> None:
    text = docs(
        endpoint_doc("a", "{provider: cohere}"),
        MOCK_ENDPOINT,
        endpoint_doc("b", "{provider: mock, colour: red}"),
    )
    message = config_error(text)
    assert "doc 1 (ModelEndpoint a): spec.provider" in message
    assert "doc 3 (ModelEndpoint b): spec.colour: unknown field" in message


def test_a_document_that_is_not_a_mapping_is_an_error() -> None:
    assert config_error("- just\n- a list\n").startswith("doc 1")


def test_text_that_is_not_yaml_is_an_error_naming_the_source() -> None:
    with pytest.raises(ConfigError) as caught:
        load_documents("key: [unclosed", source="routes.yaml")
    assert caught.value.message.startswith("routes.yaml: not valid YAML or JSON")


def test_an_alias_pointing_at_a_missing_endpoint_is_an_error() -> None:
    message = config_error(docs(MOCK_ENDPOINT, alias_doc("fast", "[{endpoint: mock}, {endpoint: ghost}]")))
    assert message == "ModelAlias fast: spec.targets[1].endpoint: no endpoint named 'ghost'"


def test_an_alias_target_without_a_model_needs_an_endpoint_default_model() -> None:
    text = docs(endpoint_doc("bare", "{provider: openai}"), alias_doc("fast", "[{endpoint: bare}]"))
    message = config_error(text)
    assert message.startswith("ModelAlias fast: spec.targets[0].model: required")
    assert "'bare' has no default_model" in message


def test_an_endpoint_defined_twice_is_an_error() -> None:
    assert "ModelEndpoint mock: defined twice" in config_error(docs(MOCK_ENDPOINT, MOCK_ENDPOINT))


def test_a_default_provider_that_is_not_an_endpoint_is_an_error() -> None:
    defaults = document("RoutingDefaults", "{name: d}", "{default_provider: nope}")
    assert "RoutingDefaults d: spec.default_provider: no endpoint named 'nope'" in config_error(
        docs(MOCK_ENDPOINT, defaults)
    )


# ---------------------------------------------------------------- compiled results


def test_an_alias_target_without_a_model_uses_the_endpoint_default_model() -> None:
    config = compile_text(docs(MOCK_ENDPOINT, alias_doc("fast", "[{endpoint: mock, weight: 2}]")))
    (target,) = config.aliases["fast"].targets
    assert (target.endpoint, target.model, target.weight) == ("mock", "mock-1", 2.0)


def test_a_namespaced_endpoint_is_named_namespace_slash_name() -> None:
    text = docs(
        endpoint_doc("ep", "{provider: openai, default_model: gpt}", namespace="team"),
        alias_doc("fast", "[{endpoint: team/ep}]"),
    )
    config = compile_text(text)
    assert list(config.endpoints) == ["team/ep"]
    assert config.endpoints["team/ep"].name == "team/ep"
    assert config.aliases["fast"].targets[0].endpoint == "team/ep"


def test_json_input_is_accepted_as_one_document_or_an_array() -> None:
    endpoint = {
        "apiVersion": "modelbus.dev/v1",
        "kind": "ModelEndpoint",
        "metadata": {"name": "j"},
        "spec": {
            "provider": "openai",
            "base_url": "https://api.example.com/v1/",
            "auth": {"secretRef": "env:K"},
        },
    }
    alias = {
        "apiVersion": "modelbus.dev/v1",
        "kind": "ModelAlias",
        "metadata": {"name": "a"},
        "spec": {"targets": [{"endpoint": "j", "model": "m"}]},
    }
    single = compile_text(json.dumps(endpoint))
    assert single.endpoints["j"].base_url == "https://api.example.com/v1"
    assert single.endpoints["j"].auth_ref == "env:K"
    several = compile_text(json.dumps([endpoint, alias]))
    assert several.aliases["a"].targets[0].model == "m"


def test_json_errors_are_reported_like_yaml_errors() -> None:
    raw = {
        "apiVersion": "modelbus.dev/v1",
        "kind": "ModelEndpoint",
        "metadata": {"name": "j"},
        "spec": {"provider": "openai", "base_url": "nope"},
    }
    assert config_error(json.dumps(raw)) == "doc 1 (ModelEndpoint j): spec.base_url: not a URL"


def test_routing_defaults_are_carried_into_the_compiled_config() -> None:
    spec = "{strategy: round-robin, default_provider: mock, max_retries: 5}"
    defaults = document("RoutingDefaults", "{name: d}", spec)
    config = compile_text(docs(MOCK_ENDPOINT, defaults), revision=9)
    assert config.revision == 9
    assert config.defaults.strategy == "round-robin"
    assert config.defaults.default_provider == "mock"
    assert config.defaults.max_retries == 5


@pytest.mark.parametrize(
    ("provider", "base_url", "locality"),
    [
        ("mock", None, "local"),
        ("ollama", None, "local"),
        ("ollama", "https://ollama.example.com", "local"),
        ("openai", None, "remote"),
        ("openai-compatible", "http://localhost:8000/v1", "local"),
        ("openai-compatible", "http://vllm.localhost:8000/v1", "local"),
        ("openai-compatible", "http://127.0.0.1:8000/v1", "local"),
        ("openai-compatible", "http://[::1]:8000/v1", "local"),
        ("openai-compatible", "http://10.1.2.3/v1", "local"),
        ("openai-compatible", "http://192.168.1.20:8080/v1", "local"),
        ("openai-compatible", "http://172.16.0.5/v1", "local"),
        ("openai", "https://api.openai.com/v1", "remote"),
        ("openai-compatible", "https://8.8.8.8/v1", "remote"),
    ],
)
def test_locality_is_local_only_when_data_stays_on_the_host_or_network(
    provider: str, base_url: str | None, locality: str
) -> None:
    assert derive_locality(provider, base_url) == locality


def test_an_explicit_locality_overrides_the_derived_one() -> None:
    config = compile_text(
        endpoint_doc("x", "{provider: openai-compatible, base_url: 'http://127.0.0.1:1', locality: remote}")
    )
    assert config.endpoints["x"].locality == "remote"


@pytest.mark.parametrize(("provider", "allowed"), [("mock", True), ("ollama", True), ("openai", False)])
def test_private_addresses_are_allowed_by_default_only_for_local_provider_types(provider: str, allowed: bool) -> None:
    assert compile_text(endpoint_doc("x", f"{{provider: {provider}}}")).endpoints["x"].allow_private is allowed


def test_allow_private_can_be_set_explicitly() -> None:
    config = compile_text(
        docs(
            endpoint_doc("a", "{provider: openai, allowPrivate: true}"),
            endpoint_doc("b", "{provider: ollama, allowPrivate: false}"),
        )
    )
    assert config.endpoints["a"].allow_private is True
    assert config.endpoints["b"].allow_private is False


# ---------------------------------------------------------------- built-in example


def test_the_built_in_example_maps_every_standard_alias_to_the_mock_endpoint() -> None:
    config = compile_text(EXAMPLE.read_text(), source=str(EXAMPLE))
    assert isinstance(config, RoutingConfig)
    assert set(config.aliases) == {"default", "fast", "smart", "cheap", "local"}
    for alias in config.aliases.values():
        assert [t.endpoint for t in alias.targets] == ["mock"]
    mock = config.endpoints["mock"]
    assert mock.provider == "mock"
    assert mock.locality == "local"
    assert mock.auth_ref is None


# ---------------------------------------------------------------- endpoints from the environment


def test_no_keys_in_the_environment_adds_no_endpoints() -> None:
    assert endpoints_from_env({}) == []
    assert endpoints_from_env({"OPENAI_API_KEY": ""}) == []


def test_only_vendors_with_a_key_set_get_an_endpoint_that_references_the_key() -> None:
    env = {"OPENAI_API_KEY": "sk-very-secret", "GROQ_API_KEY": "gsk-also-secret", "UNRELATED": "x"}
    found = endpoints_from_env(env)
    assert [d["metadata"]["name"] for d in found] == ["openai", "groq"]
    assert found[0]["spec"]["auth"] == {"secretRef": "env:OPENAI_API_KEY"}
    assert found[1]["spec"]["auth"] == {"secretRef": "env:GROQ_API_KEY"}
    dumped = json.dumps(found)
    assert "sk-very-secret" not in dumped
    assert "gsk-also-secret" not in dumped


def test_base_url_and_model_can_be_overridden_from_the_environment() -> None:
    env = {
        "OPENAI_API_KEY": "k",
        "OPENAI_BASE_URL": "http://127.0.0.1:9999/v1",
        "OPENAI_MODEL": "gpt-test",
    }
    (doc,) = endpoints_from_env(env)
    assert doc["spec"]["base_url"] == "http://127.0.0.1:9999/v1"
    assert doc["spec"]["default_model"] == "gpt-test"


def test_endpoints_from_every_known_key_compile_alongside_the_example() -> None:
    env = {key_var: "value" for _, key_var, *_ in OPENAI_FORMAT_VENDORS}
    resources = parse_resources([*load_documents(EXAMPLE.read_text()), *endpoints_from_env(env)])
    config = compile_config(resources)
    for name, key_var, provider, _, model in OPENAI_FORMAT_VENDORS:
        endpoint = config.endpoints[name]
        assert endpoint.provider == provider
        assert endpoint.auth_ref == f"env:{key_var}"
        assert endpoint.default_model == model
        assert endpoint.locality == "remote"
        assert endpoint.allow_private is False
