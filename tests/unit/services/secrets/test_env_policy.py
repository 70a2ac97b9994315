"""Which ``env:`` references the secrets service answers: never its own credentials, and only what is allowed."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import msgspec
import pytest

from services.secrets import wire
from services.secrets.env_policy import ALLOW_ENV, EnvPolicy
from services.secrets.service import SecretsService, StoreUnavailable
from shared import headers as H
from shared.envelopes import SecretList, SecretsDescribe
from shared.errors import PolicyDenied
from tests.conftest import run

OWN = "own-credential-0123456789-never-handed-out"
KEY = "sk-worker-key-0123456789abcdef"

# What the secrets service runs on: a compromised worker must get none of it.
OWN_VARIABLES = [
    "NATS_PASSWORD",
    "NATS_USER",
    "NATS_URL",
    "MODELBUS_MASTER_KEY",
    "MODELBUS_MASTER_KEY_FILE",
    "MODELBUS_MASTER_KEY_PREVIOUS",
    "MODELBUS_STATE_PASSWORD",
    "MODELBUS_STATE_USER",
    "MODELBUS_ADMIN_TOKEN",
    "MODELBUS_AUDIT_KEY",
    "MODELBUS_VAULT_ADDR",
    ALLOW_ENV,
    "VAULT_TOKEN",
    "VAULT_TOKEN_FILE",
    "VAULT_ADDR",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "nats_password",  # reserved in any case
]

# What the configuration importers reference (services/config: boot_env, formats, aurorasoc_api).
WORKER_VARIABLES = [
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "AZURE_OPENAI_KEY",
    "AZURE_OPENAI_API_KEY",
    "TOGETHER_API_KEY",
    "GROQ_API_KEY",
    "DEEPSEEK_API_KEY",
    "MISTRAL_API_KEY",
    "OPENROUTER_API_KEY",
    "XAI_API_KEY",
    "LLM_OPENAI_API_KEY",
    "LLM_OPENAI_COMPATIBLE_API_KEY",
    "ORLOJ_SECRET_openai-api-key",
]


class WatchedEnv(Mapping[str, str]):
    """An environment that records which variables were looked at."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values  # not ``values``: that is Mapping's method
        self.read: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.read.append(key)
        return self._values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.append(key)
        return self._values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def refusal_of(ref: str, env: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    return run(wire.answer_get(SecretsService(env=env), msgspec.json.encode({"ref": ref})))


@pytest.mark.parametrize("variable", OWN_VARIABLES)
def test_the_services_own_credentials_are_refused_naming_the_reference_never_the_value(variable: str) -> None:
    body, headers = refusal_of(f"env:{variable}", {variable: OWN})
    assert headers == {H.STATUS: "403"}
    error = json.loads(body)["error"]
    assert error["code"] == "secret_ref_refused"
    assert f"env:{variable}" in error["message"]
    assert "never handed out" in error["message"]
    assert OWN.encode() not in body and OWN[-4:].encode() not in body


@pytest.mark.parametrize("variable", ["NATS_PASSWORD", "MODELBUS_MASTER_KEY", "VAULT_TOKEN", "OPENAI_API_KEY"])
def test_a_refused_name_gets_the_same_answer_whether_or_not_it_is_set_and_is_never_read(variable: str) -> None:
    allowing_nothing = {ALLOW_ENV: "LLM_*"}  # OPENAI_API_KEY: refused by the allow-list instead
    set_env = WatchedEnv({**allowing_nothing, variable: OWN})
    unset_env = WatchedEnv(dict(allowing_nothing))
    assert refusal_of(f"env:{variable}", set_env) == refusal_of(f"env:{variable}", unset_env)
    assert variable not in set_env.read  # decided on the name: no lookup, so no timing to tell by


@pytest.mark.parametrize("variable", WORKER_VARIABLES)
def test_by_default_the_variables_the_configuration_formats_reference_still_resolve(variable: str) -> None:
    assert run(SecretsService(env={variable: KEY}).resolve(f"env:{variable}")) == KEY


def test_the_allow_list_narrows_env_references_to_matching_names() -> None:
    env = {
        ALLOW_ENV: "OPENAI_*, LLM_*_API_KEY",
        "OPENAI_API_KEY": KEY,
        "LLM_GROQ_API_KEY": KEY,
        "ANTHROPIC_API_KEY": KEY,
    }
    service = SecretsService(env=env)
    assert run(service.resolve("env:OPENAI_API_KEY")) == KEY
    assert run(service.resolve("env:LLM_GROQ_API_KEY")) == KEY
    with pytest.raises(PolicyDenied) as caught:
        run(service.resolve("env:ANTHROPIC_API_KEY"))
    assert ALLOW_ENV in caught.value.message and "OPENAI_*" in caught.value.message
    assert KEY not in caught.value.message


@pytest.mark.parametrize("patterns", ["*", "NATS_*,MODELBUS_*,VAULT_*", "*PASSWORD*"])
def test_no_allow_list_pattern_can_let_the_services_own_credentials_out(patterns: str) -> None:
    env = {ALLOW_ENV: patterns, "NATS_PASSWORD": OWN, "MODELBUS_MASTER_KEY": OWN, "VAULT_TOKEN": OWN}
    service = SecretsService(env=env)
    for variable in ("NATS_PASSWORD", "MODELBUS_MASTER_KEY", "VAULT_TOKEN"):
        with pytest.raises(PolicyDenied):
            run(service.resolve(f"env:{variable}"))


def test_an_empty_allow_list_counts_as_unset_and_patterns_match_case_sensitively() -> None:
    assert EnvPolicy.from_env({ALLOW_ENV: " , "}).allows("OPENAI_API_KEY")
    policy = EnvPolicy.from_env({ALLOW_ENV: "openai_*"})
    assert not policy.allows("OPENAI_API_KEY")
    assert policy.allows("openai_key")


def test_a_bare_name_does_not_get_round_the_allow_list_through_its_orloj_variable() -> None:
    env = {ALLOW_ENV: "OPENAI_*", "ORLOJ_SECRET_search-key": OWN}
    with pytest.raises(StoreUnavailable) as caught:  # not read; no store here, so stored secrets answer 503
        run(SecretsService(env=env).resolve("search-key"))
    assert OWN not in caught.value.message
    allowed = {ALLOW_ENV: "OPENAI_*,ORLOJ_SECRET_*", "ORLOJ_SECRET_search-key": KEY}
    assert run(SecretsService(env=allowed).resolve("search-key")) == KEY


def test_a_bare_name_can_never_reach_a_reserved_variable() -> None:
    # ORLOJ_SECRET_ is always prepended, so a name cannot make it NATS_PASSWORD or the like.
    env = WatchedEnv({"NATS_PASSWORD": OWN})
    with pytest.raises(StoreUnavailable):
        run(SecretsService(env=env).resolve("NATS_PASSWORD"))
    assert all(name.startswith("ORLOJ_SECRET_") for name in env.read if name != ALLOW_ENV)


def test_describe_shows_a_refused_variable_as_absent_without_its_last_four() -> None:
    env = {"NATS_PASSWORD": OWN, "OPENAI_API_KEY": KEY}
    listing = run(SecretsService(env=env).describe(SecretsDescribe(refs=["env:NATS_PASSWORD", "env:OPENAI_API_KEY"])))
    refused, allowed = listing.items
    assert (refused.key_present, refused.key_last4, refused.source) == (False, None, None)
    assert (allowed.key_present, allowed.key_last4) == (True, KEY[-4:])


def test_the_list_shows_only_the_orloj_variables_the_policy_allows() -> None:
    env = {ALLOW_ENV: "ORLOJ_SECRET_TEAM_*", "ORLOJ_SECRET_TEAM_A": KEY, "ORLOJ_SECRET_OTHER": KEY}
    body, headers = run(wire.answer_list(SecretsService(env=env), b""))
    assert headers == {H.STATUS: "200"}
    assert [i.name for i in msgspec.json.decode(body, type=SecretList).items] == ["TEAM_A"]
