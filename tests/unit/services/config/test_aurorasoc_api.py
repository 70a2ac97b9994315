"""AuroraSOC's provider API on modelbus resources: the inventory and the planned changes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.config.aurorasoc_api import (
    LlmConfig,
    boot_auth_ref,
    inventory,
    plan_config,
    provider_secret_name,
    with_auth,
)
from services.config.compile import compile_config
from services.config.documents import load_documents, parse_documents
from services.config.formats import AURORA_BACKENDS
from services.config.manager import stored
from services.config.resources import API_VERSION, Resource
from shared.admin import ConfigRecord, StoredResource
from shared.envelopes import SecretInfo
from shared.errors import ConfigError, InvalidRequest, NotFound

KEY = "sk-env-key-do-not-show-1234"


def native(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


DOCS = [
    native("ModelEndpoint", "mock", {"provider": "mock", "default_model": "mock-1"}),
    native(
        "ModelEndpoint",
        "openai",
        {
            "provider": "openai-compatible",
            "base_url": "https://api.openai.com/v1",
            "default_model": "gpt-4o",
            "auth": {"secretRef": "env:LLM_OPENAI_COMPATIBLE_API_KEY"},
        },
    ),
    native("ModelEndpoint", "gemini", {"provider": "gemini", "default_model": "gemini-2.5-pro"}),
    native("ModelEndpoint", "bare", {"provider": "openai-compatible", "base_url": "http://127.0.0.1:8000/v1"}),
    native("ModelAlias", "default", {"targets": [{"endpoint": "openai"}, {"endpoint": "mock"}]}),
]


def resources(docs: list[dict[str, Any]] = DOCS) -> list[StoredResource]:
    parsed = parse_documents(load_documents("\n---\n".join(json.dumps(d) for d in docs)))
    return [stored(r) for r in parsed.resources]


def record(docs: list[dict[str, Any]] = DOCS) -> ConfigRecord:
    parsed = parse_documents(load_documents("\n---\n".join(json.dumps(d) for d in docs)))
    return ConfigRecord(
        revision=1,
        time="2026-01-01T00:00:00Z",
        actor="test",
        action="apply",
        changes=[],
        resources=[stored(r) for r in parsed.resources],
        routing=compile_config(parsed.resources, revision=1),
    )


def by_key(planned: list[Resource]) -> dict[tuple[str, str], Resource]:
    return {(r.kind, r.name): r for r in planned}


# ---------------------------------------------------------------- inventory


def test_the_active_backend_is_the_first_target_of_the_default_alias() -> None:
    view = inventory(record(), {})
    assert view.active_backend == "openai"
    assert [p.name for p in view.providers if p.active] == ["openai"]


def test_the_inventory_lists_every_endpoint_with_type_model_and_base_url() -> None:
    providers = {p.name: p for p in inventory(record(), {}).providers}
    assert sorted(providers) == ["bare", "gemini", "mock", "openai"]
    openai = providers["openai"]
    assert (openai.provider, openai.model, openai.base_url) == (
        "openai-compatible",
        "gpt-4o",
        "https://api.openai.com/v1",
    )
    assert providers["bare"].model is None


def test_key_presence_comes_from_the_describe_reply_by_reference_and_never_a_value() -> None:
    ref = "env:LLM_OPENAI_COMPATIBLE_API_KEY"
    keys = {ref: SecretInfo(name=ref, key_present=True, key_last4=KEY[-4:], source="env")}
    providers = {p.name: p for p in inventory(record(), keys).providers}
    openai = providers["openai"]
    assert (openai.key_present, openai.key_last4, openai.source, openai.auth_ref) == (True, "1234", "env", ref)
    mock = providers["mock"]
    assert (mock.key_present, mock.key_last4, mock.source, mock.auth_ref) == (False, None, None, None)


def test_a_reference_without_a_value_shows_no_source() -> None:
    ref = "env:LLM_OPENAI_COMPATIBLE_API_KEY"
    providers = {p.name: p for p in inventory(record(), {ref: SecretInfo(name=ref, key_present=False)}).providers}
    assert (providers["openai"].key_present, providers["openai"].source) == (False, None)


def test_data_leaves_the_host_only_for_remote_endpoints() -> None:
    providers = {p.name: p for p in inventory(record(), {}).providers}
    assert providers["openai"].data_leaves_host is True
    assert providers["gemini"].data_leaves_host is True
    assert providers["mock"].data_leaves_host is False
    assert providers["bare"].data_leaves_host is False  # loopback URL


def test_without_a_default_alias_there_is_no_active_backend() -> None:
    assert inventory(record(DOCS[:-1]), {}).active_backend is None
    assert inventory(None, {}).providers == []


# ---------------------------------------------------------------- PUT config


def test_switching_provider_points_default_at_it_alone_with_its_default_model() -> None:
    planned = by_key(plan_config(resources(), LlmConfig(provider="mock")))
    assert list(planned) == [("ModelAlias", "default")]
    targets = planned[("ModelAlias", "default")].spec.targets
    assert [(t.endpoint, t.model) for t in targets] == [("mock", "mock-1")]


def test_a_model_becomes_the_endpoints_default_model_and_the_alias_target() -> None:
    planned = by_key(plan_config(resources(), LlmConfig(provider="openai", model="gpt-4.1", orchestrator_model="o3")))
    assert planned[("ModelEndpoint", "openai")].spec.default_model == "gpt-4.1"
    assert planned[("ModelEndpoint", "openai")].spec.auth.secret_ref == "env:LLM_OPENAI_COMPATIBLE_API_KEY"
    assert planned[("ModelAlias", "default")].spec.targets[0].model == "gpt-4.1"
    orchestrator = planned[("ModelAlias", "orchestrator")].spec.targets
    assert [(t.endpoint, t.model) for t in orchestrator] == [("openai", "o3")]


def test_a_base_url_updates_the_endpoint() -> None:
    planned = by_key(plan_config(resources(), LlmConfig(provider="openai", base_url="https://gw.example.com/v1/")))
    assert planned[("ModelEndpoint", "openai")].spec.base_url == "https://gw.example.com/v1"


def test_resources_written_by_the_admin_api_are_never_replaced_by_boot_defaults() -> None:
    for resource in plan_config(resources(), LlmConfig(provider="openai", model="gpt-4.1")):
        assert resource.source == API_VERSION


def test_gemini_takes_no_base_url() -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan_config(resources(), LlmConfig(provider="gemini", base_url="https://example.com"))
    assert caught.value.message == "Gemini takes no base_url"
    assert caught.value.param == "base_url"


def test_a_blank_base_url_is_left_alone_even_for_gemini() -> None:
    planned = by_key(plan_config(resources(), LlmConfig(provider="gemini", base_url=" ", model="")))
    assert list(planned) == [("ModelAlias", "default")]


def test_an_unknown_provider_is_not_found_naming_it() -> None:
    with pytest.raises(NotFound) as caught:
        plan_config(resources(), LlmConfig(provider="deepseek"))
    assert "'deepseek'" in caught.value.message
    assert caught.value.param == "provider"


def test_an_endpoint_without_a_model_needs_one() -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan_config(resources(), LlmConfig(provider="bare"))
    assert caught.value.param == "model"
    planned = by_key(plan_config(resources(), LlmConfig(provider="bare", model="qwen")))
    assert planned[("ModelEndpoint", "bare")].spec.default_model == "qwen"


def test_a_bad_base_url_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        plan_config(resources(), LlmConfig(provider="openai", base_url="ftp://nowhere"))
    assert "spec.base_url: not a URL" in caught.value.message
    assert caught.value.param == "base_url"


# ---------------------------------------------------------------- keys


def test_a_provider_key_is_the_stored_secret_llm_providers_name() -> None:
    assert provider_secret_name("openai") == "llm-providers/openai"


def test_with_auth_sets_or_removes_only_the_credential_reference() -> None:
    updated = with_auth(resources(), "openai", "secret:llm-providers/openai")
    assert updated.spec.auth.secret_ref == "secret:llm-providers/openai"
    assert updated.spec.base_url == "https://api.openai.com/v1"
    assert with_auth(resources(), "openai", None).spec.auth is None


def test_with_auth_on_an_unknown_endpoint_is_not_found() -> None:
    with pytest.raises(NotFound):
        with_auth(resources(), "nope", None)


@pytest.mark.parametrize("backend", sorted(AURORA_BACKENDS))
def test_the_boot_reference_of_an_aurorasoc_backend_is_its_key_variable_when_set(backend: str) -> None:
    name, _, prefix, _ = AURORA_BACKENDS[backend]
    assert boot_auth_ref(name, {f"{prefix}_API_KEY": KEY}) == f"env:{prefix}_API_KEY"


def test_a_backend_whose_key_variable_is_unset_boots_keyless() -> None:
    assert boot_auth_ref("vllm", {}) is None
    assert boot_auth_ref("vllm", {"LLM_VLLM_API_KEY": ""}) is None


def test_an_endpoint_that_is_not_an_aurorasoc_backend_has_no_boot_reference() -> None:
    assert boot_auth_ref("groq", {"LLM_GROQ_API_KEY": KEY}) is None
