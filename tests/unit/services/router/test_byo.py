"""The Modelbus-Env header: the Aegis BYO allowlist, its errors, and the ephemeral route it builds."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from services.router.byo import ALLOWLIST, ByoEnv, byo_route, check_enabled, parse_env_header
from shared.errors import InvalidRequest, PolicyDenied
from shared.routing import RoutingDefaults, endpoint_decoder
from shared.subjects import provider_subject

TOKEN = "sk-byo-canary-0123456789abcdef"
GOOD: dict[str, Any] = {
    "ANTHROPIC_BASE_URL": "https://openrouter.ai/api/v1",
    "ANTHROPIC_AUTH_TOKEN": TOKEN,
    "ANTHROPIC_DEFAULT_MODEL": "openai/gpt-4.1",
    "ANTHROPIC_DEFAULT_FAST_MODEL": "openai/gpt-4.1-mini",
    "API_TIMEOUT_MS": "60000",
}


def header(**changes: Any) -> str:
    env = {**GOOD, **changes}
    return json.dumps({k: v for k, v in env.items() if v is not ...})


def rejected(value: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_env_header(value)
    err = info.value
    assert err.http_status == 400
    assert err.param == "Modelbus-Env"
    assert TOKEN not in err.message and TOKEN not in str(err) and TOKEN not in repr(err)
    return err


# ---------------------------------------------------------------- allowlist


def test_the_five_allowlisted_keys_are_accepted() -> None:
    env = parse_env_header(header())
    assert env == ByoEnv(
        base_url="https://openrouter.ai/api/v1",
        default_model="openai/gpt-4.1",
        auth_token=TOKEN,
        default_fast_model="openai/gpt-4.1-mini",
        timeout_ms=60_000,
    )
    assert set(GOOD) == set(ALLOWLIST)


def test_only_base_url_and_default_model_are_required() -> None:
    env = parse_env_header(
        json.dumps({"ANTHROPIC_BASE_URL": "http://lmstudio.example:1234/v1", "ANTHROPIC_DEFAULT_MODEL": "m"})
    )
    assert (env.auth_token, env.default_fast_model, env.timeout_ms) == (None, None, None)


def test_a_timeout_may_be_an_integer() -> None:
    assert parse_env_header(header(API_TIMEOUT_MS=3_000_000)).timeout_ms == 3_000_000


def test_a_provider_native_secret_name_is_rejected_naming_the_key_but_not_its_value() -> None:
    err = rejected(header(OPENAI_API_KEY="sk-openai-value-42"))
    assert "OPENAI_API_KEY" in err.message
    assert "denied provider-native secret name" in err.message
    assert "sk-openai-value-42" not in err.message
    assert err.code == "byo_secret_name_denied"


@pytest.mark.parametrize(
    "key", ["AZURE_OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "GOOGLE_API_KEY", "ANTHROPIC_API_KEY"]
)
def test_every_denylisted_family_is_called_out(key: str) -> None:
    err = rejected(header(**{key: "value-that-must-not-appear"}))
    assert key in err.message and "denied provider-native secret name" in err.message
    assert "value-that-must-not-appear" not in err.message


def test_any_other_key_is_rejected_naming_it_and_listing_the_allowed_keys() -> None:
    err = rejected(header(HOME="/root"))
    assert "HOME: not allowed" in err.message
    assert "ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN" in err.message
    assert "/root" not in err.message
    assert err.code == "byo_key_not_allowed"


def test_a_key_that_is_not_a_variable_name_is_not_echoed() -> None:
    err = rejected(header(**{"sk-pasted-secret-as-a-key": "x"}))
    assert "sk-pasted-secret-as-a-key" not in err.message
    assert "1 key that is not a variable name" in err.message


# ---------------------------------------------------------------- malformed


@pytest.mark.parametrize("value", ["", "{", "not json", f'["{TOKEN}"]', '"a string"', "null", f'{{"x": "{TOKEN}"'])
def test_malformed_json_or_a_non_object_is_a_400(value: str) -> None:
    err = rejected(value)
    assert "must be a JSON object" in err.message


def test_a_missing_base_url_is_a_400() -> None:
    assert "ANTHROPIC_BASE_URL is required" in rejected(header(ANTHROPIC_BASE_URL=...)).message
    assert "ANTHROPIC_BASE_URL is required" in rejected(header(ANTHROPIC_BASE_URL="")).message


def test_a_missing_default_model_is_a_400() -> None:
    assert "ANTHROPIC_DEFAULT_MODEL is required" in rejected(header(ANTHROPIC_DEFAULT_MODEL=...)).message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example/v1",
        "openrouter.ai/api/v1",
        "https:///v1",
        "https://host:99999/v1",
        f"https://user:{TOKEN}@host.example/v1",
        f"https://host.example/v1?key={TOKEN}",
        "https://host.example/v1 x",
    ],
)
def test_a_base_url_that_is_not_a_plain_http_url_is_a_400_without_echoing_it(url: str) -> None:
    err = rejected(header(ANTHROPIC_BASE_URL=url))
    assert "ANTHROPIC_BASE_URL" in err.message
    assert url not in err.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1234/v1",
        "http://localhost:11434/v1",
        "http://api.localhost/v1",
        "http://10.0.0.5/v1",
        "http://192.168.1.2/v1",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://127.1/v1",
        "http://2130706433/v1",
        "http://0x7f000001/v1",
        "http://0.0.0.0/v1",
    ],
)
def test_a_base_url_on_a_loopback_or_private_address_is_refused(url: str) -> None:
    err = rejected(header(ANTHROPIC_BASE_URL=url))
    assert err.code == "byo_private_address"


def test_values_must_be_strings() -> None:
    assert "ANTHROPIC_DEFAULT_MODEL must be a string" in rejected(header(ANTHROPIC_DEFAULT_MODEL=5)).message
    assert "ANTHROPIC_AUTH_TOKEN must be a string" in rejected(header(ANTHROPIC_AUTH_TOKEN=["x"])).message


@pytest.mark.parametrize("value", ["60s", "-1", "0", True, 1.5, "99999999999999"])
def test_a_timeout_that_is_not_a_positive_whole_number_is_a_400(value: Any) -> None:
    assert "API_TIMEOUT_MS" in rejected(header(API_TIMEOUT_MS=value)).message


def test_a_token_with_spaces_or_control_characters_is_a_400_without_echoing_it() -> None:
    err = rejected(header(ANTHROPIC_AUTH_TOKEN=TOKEN + "\n"))
    assert "ANTHROPIC_AUTH_TOKEN must be printable ASCII" in err.message


# ---------------------------------------------------------------- the token stays hidden


def test_the_token_is_redacted_from_repr_and_str() -> None:
    env = parse_env_header(header())
    for text in (repr(env), str(env), f"{env}", repr([env])):
        assert TOKEN not in text
        assert "<redacted>" in text
    assert "openrouter.ai" in repr(env)


def test_the_route_carries_the_token_beside_the_endpoint_never_in_it() -> None:
    route = byo_route(parse_env_header(header()), None)
    assert route.credential == TOKEN
    assert TOKEN not in repr(route)
    (target,) = route.targets
    assert TOKEN.encode() not in bytes(target.endpoint_raw)
    assert target.endpoint.auth_ref is None


# ---------------------------------------------------------------- the route


def test_the_byo_route_is_one_ephemeral_openai_compatible_target() -> None:
    route = byo_route(parse_env_header(header()), "default")
    (target,) = route.targets
    endpoint = target.endpoint
    assert endpoint.name == "byo:openrouter.ai"
    assert endpoint.provider == "openai-compatible"
    assert endpoint.base_url == "https://openrouter.ai/api/v1"
    assert endpoint.timeout_ms == 60_000
    assert endpoint.allow_private is False
    assert endpoint.locality == "remote"
    assert target.subject == provider_subject("openai-compatible")
    assert endpoint_decoder.decode(bytes(target.endpoint_raw)) == endpoint
    assert target.capabilities == frozenset() and target.context_window is None


def test_the_endpoint_name_keeps_an_explicit_port() -> None:
    route = byo_route(parse_env_header(header(ANTHROPIC_BASE_URL="https://GPU.Example.com:8443/v1")), None)
    assert route.targets[0].endpoint.name == "byo:gpu.example.com:8443"


def test_without_api_timeout_the_endpoint_keeps_the_default_timeout() -> None:
    route = byo_route(parse_env_header(header(API_TIMEOUT_MS=...)), None)
    assert route.targets[0].endpoint.timeout_ms == 60_000
    assert msgspec.json.decode(bytes(route.targets[0].endpoint_raw)).get("timeout_ms") is None


@pytest.mark.parametrize(
    ("requested", "upstream"),
    [
        (None, "openai/gpt-4.1"),
        ("", "openai/gpt-4.1"),
        ("default", "openai/gpt-4.1"),
        ("fast", "openai/gpt-4.1-mini"),
        ("anthropic/claude-sonnet-4", "anthropic/claude-sonnet-4"),
    ],
)
def test_the_requested_model_picks_the_upstream_model(requested: str | None, upstream: str) -> None:
    assert byo_route(parse_env_header(header()), requested).targets[0].model == upstream


def test_fast_without_a_fast_model_uses_the_default_model() -> None:
    env = parse_env_header(header(ANTHROPIC_DEFAULT_FAST_MODEL=...))
    assert byo_route(env, "fast").targets[0].model == "openai/gpt-4.1"


def test_without_a_token_the_route_has_no_credential() -> None:
    assert byo_route(parse_env_header(header(ANTHROPIC_AUTH_TOKEN=...)), None).credential is None


# ---------------------------------------------------------------- operator switch


def test_byo_disabled_by_the_operator_is_a_403() -> None:
    check_enabled(RoutingDefaults())
    with pytest.raises(PolicyDenied) as info:
        check_enabled(RoutingDefaults(byo_enabled=False))
    assert info.value.http_status == 403
    assert info.value.message == "BYO endpoints are disabled by the operator"
