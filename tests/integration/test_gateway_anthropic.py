"""The HTTP gateway's Anthropic side (``/v1/messages``, ``/v1/messages/count_tokens``) against
a real stack, driven by the official anthropic SDK.

One stack for the module, as in ``test_gateway.py``: nats-server, secrets, config,
a router, a provider worker with the mock provider, and the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from shared.formats.anthropic import count_tokens_request_from_native, estimate_input_tokens
from shared.natsserver import EmbeddedNats
from tests.integration.procs import services, start_gateway, write_gateway_keys

KEY = "mb-test-anthropic-key-0123456789abcdef"
MAX_BODY = 64 * 1024
HELLO: Any = [{"role": "user", "content": "hello claude"}]
LOOKUP: Any = {"name": "lookup", "description": "Look a word up", "input_schema": {"type": "object"}}


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def _mock(name: str, **options: Any) -> str:
    return _doc("ModelEndpoint", name, {"provider": "mock", "default_model": "m", "options": options})


def _alias(name: str, endpoint: str, model: str | None = None) -> str:
    return _doc("ModelAlias", name, {"targets": [{"endpoint": endpoint, **({"model": model} if model else {})}]})


CONFIG = "\n---\n".join(
    [
        _doc("ModelEndpoint", "mock", {"provider": "mock", "default_model": "mock-1"}),
        _mock("mock-limited", fail_status=429, retry_after=3),
        _mock("mock-failing", fail_status=500),
        _mock("mock-breaks", fail_status=503, fail_after_chunks=2),
        _alias("fast", "mock", "mock-fast"),
        _alias("limited", "mock-limited"),
        _alias("failing", "mock-failing"),
        _alias("breaks", "mock-breaks"),
        _doc("RoutingDefaults", "defaults", {"max_retries": 0, "breaker_failures": 1000}),
    ]
)


@pytest.fixture(scope="module")
def url(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("gateway-anthropic")
    config = home / "gateway.yaml"
    config.write_text(CONFIG)
    keys_file = home / "gateway-keys.json"
    write_gateway_keys(keys_file, {"default": KEY})
    with services(nats_server.url, home / "home", config) as s:
        yield start_gateway(s, keys_file, env={"MODELBUS_HTTP_MAX_BODY": str(MAX_BODY)})


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


# ---------------------------------------------------------------- answers


def test_the_anthropic_sdk_gets_a_message_with_usage_and_the_request_id(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="fast", max_tokens=100, messages=HELLO)
    message = raw.parse()
    (block,) = message.content
    assert block.type == "text" and block.text == "mock:mock-fast says: hello claude"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 4)
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert (raw.headers["x-modelbus-endpoint"], raw.headers["x-modelbus-model"]) == ("mock", "mock-fast")


def test_a_bearer_key_works_as_well_as_x_api_key(url: str) -> None:
    with anthropic.Anthropic(base_url=url, auth_token=KEY, api_key=None, max_retries=0, timeout=20) as sdk:
        message = sdk.messages.create(model="fast", max_tokens=100, messages=HELLO)
    assert message.stop_reason == "end_turn"


def test_beta_query_and_version_headers_are_accepted_and_ignored(url: str) -> None:
    answer = httpx.post(
        f"{url}/v1/messages?beta=true",
        json={"model": "fast", "max_tokens": 100, "messages": HELLO},
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01", "anthropic-beta": "fine-grained-tool-streaming"},
        timeout=20,
    )
    assert answer.status_code == 200
    assert answer.json()["content"][0]["text"] == "mock:mock-fast says: hello claude"


def test_a_stream_follows_anthropic_s_event_sequence(client: anthropic.Anthropic) -> None:
    events = list(client.messages.create(model="fast", max_tokens=100, messages=HELLO, stream=True))
    names = [event.type for event in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 4


def test_a_ping_follows_message_start_on_the_wire(url: str) -> None:
    body = {"model": "fast", "max_tokens": 100, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{url}/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=20) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        names = [line[len("event: ") :] for line in answer.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "message_stop"


def test_the_sdk_s_stream_helper_assembles_the_text_and_the_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="fast", max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock:mock-fast says: hello claude"
    assert final.usage.output_tokens == 4


def test_a_forced_tool_comes_back_as_a_tool_use_block(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="fast", max_tokens=100, messages=HELLO, tools=[LOOKUP], tool_choice={"type": "tool", "name": "lookup"}
    )
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "lookup"
    assert block.input == {"input": "hello claude"}


def test_a_streamed_tool_use_arrives_as_input_json_deltas(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="fast", max_tokens=100, messages=HELLO, tools=[LOOKUP], tool_choice={"type": "any"}
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas == ["input_json_delta"]
    assert final.content[0].type == "tool_use" and final.content[0].input == {"input": "hello claude"}
    assert final.stop_reason == "tool_use"


def test_count_tokens_answers_modelbus_s_estimate(client: anthropic.Anthropic) -> None:
    request = {"model": "fast", "messages": HELLO, "system": "Be brief.", "tools": [LOOKUP]}
    counted = client.messages.count_tokens(**request)
    expected = estimate_input_tokens(count_tokens_request_from_native(json.dumps(request).encode()))
    assert counted.input_tokens == expected > 0


# ---------------------------------------------------------------- errors


def test_an_unsupported_field_is_a_bad_request_error_naming_it(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="fast", max_tokens=100, messages=HELLO, extra_body={"top_k": 5})
    assert caught.value.type == "invalid_request_error"
    assert "top_k" in caught.value.message


def test_a_wrong_key_is_an_authentication_error_and_no_key_a_401(url: str) -> None:
    with anthropic.Anthropic(base_url=url, api_key="mb-wrong", max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            sdk.messages.create(model="fast", max_tokens=100, messages=HELLO)
    assert "mb-wrong" not in caught.value.response.text
    answer = httpx.post(f"{url}/v1/messages", json={"model": "fast", "max_tokens": 9, "messages": HELLO}, timeout=10)
    assert answer.status_code == 401
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "authentication_error"


def test_an_unknown_model_is_a_not_found_error_with_the_request_id(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=100, messages=HELLO)
    assert caught.value.type == "not_found_error"
    assert caught.value.request_id == caught.value.response.headers["request-id"]


def test_a_body_over_the_limit_is_a_request_too_large_error(client: anthropic.Anthropic) -> None:
    big: Any = [{"role": "user", "content": "x" * (MAX_BODY + 1)}]
    with pytest.raises(anthropic.RequestTooLargeError):
        client.messages.create(model="fast", max_tokens=100, messages=big)


def test_a_rate_limit_is_a_rate_limit_error_with_retry_after(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="limited", max_tokens=100, messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.type == "rate_limit_error"


def test_an_upstream_server_error_is_an_internal_server_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="failing", max_tokens=100, messages=HELLO)
    assert caught.value.status_code == 500


def test_a_stream_that_fails_after_it_began_ends_with_an_error_event(client: anthropic.Anthropic, url: str) -> None:
    stream = iter(client.messages.create(model="breaks", max_tokens=100, messages=HELLO, stream=True))
    names = [next(stream).type for _ in range(4)]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_delta"]
    with pytest.raises(anthropic.APIStatusError) as caught:
        next(stream)
    assert caught.value.type == "overloaded_error"  # a 503, as its status would say
    body = {"model": "breaks", "max_tokens": 100, "messages": HELLO, "stream": True}
    text = httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=20).text
    assert "event: error" in text and "message_stop" not in text


def test_malformed_json_is_a_400_in_anthropic_s_shape(url: str, client: anthropic.Anthropic) -> None:
    answer = httpx.post(
        f"{url}/v1/messages", content=b"{not json", headers={"x-api-key": KEY, "content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert client.messages.create(model="fast", max_tokens=100, messages=HELLO).content
