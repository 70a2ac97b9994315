"""Every error status the gateway answers, as each official SDK sees it, and streams that fail over.

One stack (the mock provider fails with the status each alias names) and both
SDKs. Each status must reach the SDK as its own exception class, with the body
in that API's error shape; a stream that fails before its first token must fail
over to the next target exactly as a NATS request does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from shared.natsserver import EmbeddedNats
from tests.integration.procs import services, start_gateway, write_gateway_keys

KEY = "mb-test-errors-key-0123456789abcdef"
MAX_BODY = 16 * 1024
CHAT: Any = [{"role": "user", "content": "hello errors"}]
UPSTREAM_STATUSES = (403, 500, 502, 503, 504)


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def _mock(name: str, **options: Any) -> str:
    return _doc("ModelEndpoint", name, {"provider": "mock", "default_model": "m", "options": options})


def _alias(name: str, *endpoints: str) -> str:
    return _doc("ModelAlias", name, {"strategy": "failover", "targets": [{"endpoint": e} for e in endpoints]})


CONFIG = "\n---\n".join(
    [
        _mock("ok"),
        _mock("limited", fail_status=429, retry_after=4),
        *(_mock(f"fails-{status}", fail_status=status) for status in UPSTREAM_STATUSES),
        *(_alias(f"fails-{status}", f"fails-{status}") for status in UPSTREAM_STATUSES),
        _alias("limited", "limited"),
        _alias("ok", "ok"),
        _alias("unavailable-then-ok", "fails-503", "ok"),
        _doc("RoutingDefaults", "defaults", {"max_retries": 0, "breaker_failures": 1000}),
    ]
)


@pytest.fixture(scope="module")
def url(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("gateway-errors")
    config = home / "config.yaml"
    config.write_text(CONFIG)
    keys = home / "gateway-keys.json"
    write_gateway_keys(keys, {"default": KEY})
    with services(nats_server.url, home / "home", config) as s:
        yield start_gateway(s, keys, env={"MODELBUS_HTTP_MAX_BODY": str(MAX_BODY)})


@pytest.fixture(scope="module")
def oai(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def claude(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


OPENAI_CLASSES: dict[int, type[openai.APIStatusError]] = {
    403: openai.PermissionDeniedError,
    500: openai.InternalServerError,
    502: openai.InternalServerError,
    503: openai.InternalServerError,
    504: openai.InternalServerError,
}
ANTHROPIC_CLASSES: dict[int, type[anthropic.APIStatusError]] = {
    403: anthropic.PermissionDeniedError,
    500: anthropic.InternalServerError,
    502: anthropic.InternalServerError,
    503: anthropic.ServiceUnavailableError,
    504: anthropic.GatewayTimeoutError,
}


@pytest.mark.parametrize("status", UPSTREAM_STATUSES)
def test_an_upstream_status_is_the_openai_sdk_s_own_exception(oai: openai.OpenAI, status: int) -> None:
    with pytest.raises(OPENAI_CLASSES[status]) as caught:
        oai.chat.completions.create(model=f"fails-{status}", messages=CHAT)
    assert caught.value.status_code == status
    body: Any = caught.value.body
    assert set(body) >= {"message", "type", "code"}  # the SDK unwraps {"error": {...}}
    assert caught.value.response.headers["x-should-retry"] == ("false" if status == 403 else "true")


@pytest.mark.parametrize("status", UPSTREAM_STATUSES)
def test_an_upstream_status_is_the_anthropic_sdk_s_own_exception(claude: anthropic.Anthropic, status: int) -> None:
    with pytest.raises(ANTHROPIC_CLASSES[status]) as caught:
        claude.messages.create(model=f"fails-{status}", max_tokens=10, messages=CHAT)
    assert caught.value.status_code == status
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == anthropic_type(status)


def anthropic_type(status: int) -> str:
    return {403: "permission_error", 503: "overloaded_error", 504: "timeout_error"}.get(status, "api_error")


def test_the_client_side_statuses_are_each_sdk_s_own_exceptions(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="ok", messages=CHAT, temperature=9)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="ok", max_tokens=0, messages=CHAT)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=CHAT)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=10, messages=CHAT)
    big: Any = [{"role": "user", "content": "x" * MAX_BODY}]
    with pytest.raises(openai.APIStatusError) as too_large:
        oai.chat.completions.create(model="ok", messages=big)
    assert too_large.value.status_code == 413
    with pytest.raises(anthropic.RequestTooLargeError):
        claude.messages.create(model="ok", max_tokens=10, messages=big)


def test_a_wrong_key_is_each_sdk_s_authentication_error(url: str) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="mb-wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model="ok", messages=CHAT)
    with anthropic.Anthropic(base_url=url, api_key="mb-wrong", max_retries=0) as sdk2:
        with pytest.raises(anthropic.AuthenticationError):
            sdk2.messages.create(model="ok", max_tokens=10, messages=CHAT)


def test_a_rate_limit_is_each_sdk_s_rate_limit_error_with_retry_after(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="limited", messages=CHAT)
    assert caught.value.response.headers["retry-after"] == "4"
    with pytest.raises(anthropic.RateLimitError) as caught2:
        claude.messages.create(model="limited", max_tokens=10, messages=CHAT)
    assert caught2.value.response.headers["retry-after"] == "4"


def test_a_stream_that_fails_before_its_first_token_fails_over_for_the_openai_sdk(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="unavailable-then-ok", messages=CHAT, stream=True)
    assert (raw.headers["x-modelbus-endpoint"], raw.headers["x-modelbus-attempts"]) == ("ok", "2")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text == "mock:m says: hello errors"


def test_a_stream_that_fails_before_its_first_token_fails_over_for_the_anthropic_sdk(
    claude: anthropic.Anthropic,
) -> None:
    with claude.messages.stream(model="unavailable-then-ok", max_tokens=10, messages=CHAT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock:m says: hello errors"
    assert final.stop_reason == "end_turn"
