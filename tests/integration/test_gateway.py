"""The HTTP gateway's OpenAI side, its keys, model list and health, against a real stack,
driven by the official openai SDK.

One stack for the module: nats-server, secrets, config, a router, a provider
worker (the mock provider answers) and the gateway on a free loopback port, with
a small body limit (``MODELBUS_HTTP_MAX_BODY``) so the 413 test sends little.
The Anthropic side is ``test_gateway_anthropic.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from shared.admin import ApplyRequest, ApplyResult
from shared.bus import connect
from shared.natsserver import EmbeddedNats
from shared.subjects import CONFIG_APPLY
from tests.conftest import run
from tests.integration.procs import Services, services, start_gateway, write_gateway_keys

KEY = "mb-test-default-key-0123456789abcdef"
SECOND_KEY = "mb-test-second-key-0123456789abcdef"
MAX_BODY = 64 * 1024
HELLO: Any = [{"role": "user", "content": "hello gateway"}]
LOOKUP_TOOL: Any = {
    "type": "function",
    "function": {"name": "lookup", "description": "Look a word up", "parameters": {"type": "object"}},
}


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def _mock(name: str, **options: Any) -> str:
    return _doc("ModelEndpoint", name, {"provider": "mock", "default_model": "m", "options": options})


def _alias(name: str, endpoint: str, model: str | None = None) -> str:
    target = {"endpoint": endpoint, **({"model": model} if model else {})}
    return _doc("ModelAlias", name, {"targets": [target]})


CONFIG = "\n---\n".join(
    [
        _doc("ModelEndpoint", "mock", {"provider": "mock", "default_model": "mock-1"}),
        _mock("mock-limited", fail_status=429, retry_after=7, fail_message="slow down"),
        _mock("mock-failing", fail_status=500),
        _mock("mock-breaks", fail_status=502, fail_after_chunks=2),
        _mock("mock-slow-stream", reply="one two", itl_ms=1300),
        _alias("default", "mock", "mock-default"),
        _alias("fast", "mock", "mock-fast"),
        _alias("limited", "mock-limited"),
        _alias("failing", "mock-failing"),
        _alias("breaks", "mock-breaks"),
        _alias("slow-stream", "mock-slow-stream"),
        _doc("Agent", "helper", {"model_ref": "fast"}),
        # One attempt per request and no breaker in the way: each error test sees its own error.
        _doc("RoutingDefaults", "defaults", {"max_retries": 0, "breaker_failures": 1000}),
    ]
)


@dataclass
class GatewayStack:
    url: str
    nats_url: str
    keys_file: Path
    services: Services

    def auth(self, key: str = KEY) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def ready(self) -> Any:
        return httpx.get(f"{self.url}/readyz", timeout=10).json()


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    home = tmp_path_factory.mktemp("gateway")
    config = home / "gateway.yaml"
    config.write_text(CONFIG)
    keys_file = home / "gateway-keys.json"
    write_gateway_keys(keys_file, {"default": KEY, "second": SECOND_KEY})
    with services(nats_server.url, home / "home", config) as s:
        url = start_gateway(s, keys_file, env={"MODELBUS_HTTP_MAX_BODY": str(MAX_BODY)})
        yield GatewayStack(url, nats_server.url, keys_file, s)


@pytest.fixture(scope="module")
def client(stack: GatewayStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


# ---------------------------------------------------------------- answers


def test_the_openai_sdk_gets_the_mock_s_answer_with_the_routing_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=HELLO)
    completion = raw.parse()
    assert completion.choices[0].message.content == "mock:mock-fast says: hello gateway"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert raw.headers["x-modelbus-endpoint"] == "mock"
    assert raw.headers["x-modelbus-model"] == "mock-fast"
    assert raw.headers["x-modelbus-attempts"] == "1"
    assert len(raw.headers["x-request-id"]) == 32


def test_the_client_s_request_id_comes_back_and_its_agent_header_routes_the_request(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="ignored-when-an-agent-is-named",
        messages=HELLO,
        extra_headers={"x-request-id": "req-gateway-1", "x-modelbus-agent": "helper", "x-modelbus-run-id": "run-1"},
    )
    assert raw.headers["x-request-id"] == "req-gateway-1"
    assert raw.headers["x-modelbus-model"] == "mock-fast"  # the agent's model_ref is the alias fast


def test_a_stream_arrives_chunk_by_chunk_and_has_no_usage_chunk_unless_asked(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fast", messages=HELLO, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock:mock-fast says: hello gateway"
    assert len(chunks) == 5  # one per word, then the finish chunk
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in chunks)


def test_a_stream_with_include_usage_ends_with_the_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fast",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (2, 4)
    assert all(c.usage is None for c in chunks[:-1])


def test_the_stream_on_the_wire_is_sse_chunks_then_data_done(stack: GatewayStack) -> None:
    body = {"model": "fast", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=stack.auth(), timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"]
        assert r.headers["x-modelbus-endpoint"] == "mock"
        assert r.headers["x-modelbus-model"] == "mock-fast"
        assert r.headers["x-modelbus-attempts"] == "1"
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: {") for line in events[:-1])
    assert json.loads(events[0][len("data: ") :])["object"] == "chat.completion.chunk"


def test_a_forced_tool_call_comes_back_as_tool_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="fast",
        messages=HELLO,
        tools=[LOOKUP_TOOL],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"input": "hello gateway"}


def test_a_streamed_tool_call_arrives_as_tool_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fast",
            messages=HELLO,
            tools=[LOOKUP_TOOL],
            tool_choice="required",
            stream=True,
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function is not None and deltas[0].function.name == "lookup"
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function is not None)
    assert json.loads(arguments) == {"input": "hello gateway"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_an_idle_stream_is_kept_open_with_sse_comments_the_sdk_skips(stack: GatewayStack) -> None:
    body = {"model": "slow-stream", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=stack.auth(), timeout=20) as r:
        lines = [line for line in r.iter_lines() if line]
    assert ": keepalive" in lines  # the 1.3 s between the two words is longer than the keepalive period
    assert lines[-1] == "data: [DONE]"
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0, timeout=20) as sdk:
        chunks = list(sdk.chat.completions.create(model="slow-stream", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two"


def test_concurrent_requests_each_get_their_own_answer(stack: GatewayStack) -> None:
    async def ask_all() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(headers=stack.auth(), timeout=20) as http:

            async def ask(i: int) -> tuple[int, str]:
                body = {
                    "model": "fast",
                    "messages": [{"role": "user", "content": f"question {i}"}],
                    "stream": i % 2 == 0,
                }
                answer = await http.post(f"{stack.url}/v1/chat/completions", json=body)
                if i % 2:
                    return answer.status_code, answer.json()["choices"][0]["message"]["content"]
                chunks = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
                return answer.status_code, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)

            return await asyncio.gather(*(ask(i) for i in range(64)))

    answers = run(ask_all())
    assert answers == [(200, f"mock:mock-fast says: question {i}") for i in range(64)]


def test_a_client_that_leaves_mid_stream_does_not_disturb_the_gateway(
    stack: GatewayStack, client: openai.OpenAI
) -> None:
    body = {"model": "slow-stream", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=stack.auth(), timeout=20) as r:
        first = next(line for line in r.iter_lines() if line)
    assert json.loads(first[len("data: ") :])["choices"][0]["delta"]["content"] == "one"
    assert client.chat.completions.create(model="fast", messages=HELLO).choices
    assert stack.services.procs["gateway"].poll() is None


# ---------------------------------------------------------------- errors


def test_a_bad_field_is_a_bad_request_error_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fast", messages=HELLO, temperature=5)
    assert caught.value.status_code == 400
    assert caught.value.param == "temperature"


def test_a_wrong_key_is_an_authentication_error_that_never_echoes_the_key(stack: GatewayStack) -> None:
    wrong = "mb-wrong-key-0123456789"
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=wrong, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk.chat.completions.create(model="fast", messages=HELLO)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert wrong not in caught.value.response.text
    assert wrong not in stack.services.log("gateway")


def test_no_key_is_a_401_in_openai_s_error_shape(stack: GatewayStack) -> None:
    answer = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": "fast", "messages": HELLO}, timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "missing_api_key"
    assert answer.json()["error"]["type"] == "authentication_error"


def test_an_unknown_alias_is_a_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-alias", messages=HELLO)
    assert "no-such-alias" in caught.value.message
    assert caught.value.response.headers["x-request-id"]


def test_a_body_over_the_limit_is_a_413(client: openai.OpenAI, stack: GatewayStack) -> None:
    big: Any = [{"role": "user", "content": "x" * (MAX_BODY + 1)}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="fast", messages=big)
    assert caught.value.status_code == 413
    assert caught.value.code == "payload_too_large"


def test_a_rate_limit_is_a_rate_limit_error_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="limited", messages=HELLO)
    headers = caught.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"], headers["x-should-retry"]) == ("7", "7000", "true")
    assert headers["x-modelbus-attempts"] == "1"


def test_a_stream_refused_before_its_first_token_is_an_http_error_not_an_event(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="limited", messages=HELLO, stream=True)


def test_an_upstream_server_error_is_an_internal_server_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="failing", messages=HELLO)
    assert caught.value.status_code == 500


def test_a_stream_that_fails_after_it_began_ends_with_an_error_event_and_no_done(
    client: openai.OpenAI, stack: GatewayStack
) -> None:
    stream = iter(client.chat.completions.create(model="breaks", messages=HELLO, stream=True))
    assert [next(stream).choices[0].delta.content for _ in range(2)] == ["mock:m", " says:"]
    with pytest.raises(openai.APIError) as caught:
        next(stream)
    assert caught.value.message == "mock failure 502"
    body = {"model": "breaks", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=stack.auth(), timeout=20) as r:
        lines = [line for line in r.iter_lines() if line]
    assert json.loads(lines[-1][len("data: ") :])["error"]["message"] == "mock failure 502"
    assert "data: [DONE]" not in lines


def test_malformed_json_is_a_400_and_the_gateway_keeps_serving(stack: GatewayStack, client: openai.OpenAI) -> None:
    answer = httpx.post(
        f"{stack.url}/v1/chat/completions",
        content=b'{"messages": [ this is not json',
        headers={**stack.auth(), "content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_json"
    assert client.chat.completions.create(model="fast", messages=HELLO).choices


def test_an_unknown_path_is_a_404_and_a_wrong_method_a_405(stack: GatewayStack) -> None:
    assert httpx.get(f"{stack.url}/v1/nothing-here", headers=stack.auth(), timeout=10).status_code == 404
    answer = httpx.get(f"{stack.url}/v1/chat/completions", headers=stack.auth(), timeout=10)
    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "method_not_allowed"


# ---------------------------------------------------------------- models, health, keys


def test_models_list_names_the_aliases_endpoints_and_agents(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert {"default", "fast", "limited", "failing", "breaks", "slow-stream"} <= set(ids[:6])
    assert "mock" in ids  # an endpoint with a default model is a valid `model`
    assert ids[-1] == "helper"  # the agent
    assert all(m.object == "model" and m.owned_by == "modelbus" and m.created > 0 for m in models)


def test_a_new_alias_shows_in_the_model_list_within_a_second(stack: GatewayStack, client: openai.OpenAI) -> None:
    alias = {
        "apiVersion": "modelbus.dev/v1",
        "kind": "ModelAlias",
        "metadata": {"name": "fresh"},
        "spec": {"targets": [{"endpoint": "mock", "model": "fresh-1"}]},
    }

    async def apply() -> ApplyResult:
        nc = await connect("gateway-test", stack.nats_url)
        try:
            msg = await nc.request(CONFIG_APPLY, msgspec.json.encode(ApplyRequest(documents=json.dumps(alias))), 20)
        finally:
            await nc.close()
        return msgspec.json.decode(msg.data, type=ApplyResult)

    result = run(apply())
    applied = time.monotonic()
    while "fresh" not in {m.id for m in client.models.list()}:
        assert time.monotonic() - applied < 1.0, "the new alias did not show within a second"
        time.sleep(0.02)
    assert stack.ready()["revision"] == result.revision


def test_healthz_and_readyz_answer_without_a_key(stack: GatewayStack) -> None:
    assert httpx.get(f"{stack.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["revision"] >= 1


def test_models_need_a_key(stack: GatewayStack) -> None:
    assert httpx.get(f"{stack.url}/v1/models", timeout=10).status_code == 401


def test_a_removed_key_is_refused_within_a_second_without_a_restart(stack: GatewayStack) -> None:
    def status(key: str) -> int:
        answer = httpx.post(
            f"{stack.url}/v1/chat/completions",
            json={"model": "fast", "messages": HELLO},
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
        return answer.status_code

    assert status(SECOND_KEY) == 200
    write_gateway_keys(stack.keys_file, {"default": KEY})
    removed = time.monotonic()
    while status(SECOND_KEY) != 401:
        assert time.monotonic() - removed < 1.0, "the removed key still worked after a second"
        time.sleep(0.02)
    assert status(KEY) == 200
    assert stack.services.procs["gateway"].poll() is None
    assert SECOND_KEY not in stack.services.log("gateway")
    assert "removed second" in stack.services.log("gateway")


def test_the_key_never_reaches_the_process_arguments(stack: GatewayStack) -> None:
    with open(f"/proc/{stack.services.procs['gateway'].pid}/cmdline", "rb") as f:
        argv = f.read()
    assert KEY.encode() not in argv and SECOND_KEY.encode() not in argv
    assert KEY not in stack.keys_file.read_text()  # the file holds hashes only


# Last in the module: it restarts the module's nats-server under every process.
def test_after_nats_comes_back_the_gateway_serves_and_follows_the_configuration_again(
    stack: GatewayStack, nats_server: EmbeddedNats, client: openai.OpenAI
) -> None:
    nats_server.kill()
    deadline = time.monotonic() + 10
    while stack.ready().get("reason") != "not connected to NATS":
        assert time.monotonic() < deadline, "readyz never said NATS is gone"
        time.sleep(0.05)
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 503
    nats_server.restart()
    deadline = time.monotonic() + 15
    while stack.ready()["status"] != "ready":
        assert time.monotonic() < deadline, "readyz did not come back after NATS did"
        time.sleep(0.05)
    deadline = time.monotonic() + 15
    while True:  # the routers may still be re-following the configuration themselves
        try:
            completion = client.chat.completions.create(model="fast", messages=HELLO)
            break
        except openai.APIStatusError:
            assert time.monotonic() < deadline, "no answer through the gateway after NATS came back"
            time.sleep(0.1)
    assert completion.choices[0].message.content == "mock:mock-fast says: hello gateway"
    alias = {
        "apiVersion": "modelbus.dev/v1",
        "kind": "ModelAlias",
        "metadata": {"name": "after-restart"},
        "spec": {"targets": [{"endpoint": "mock", "model": "m"}]},
    }

    async def apply() -> None:
        nc = await connect("gateway-test", stack.nats_url)
        try:
            await nc.request(CONFIG_APPLY, msgspec.json.encode(ApplyRequest(documents=json.dumps(alias))), 20)
        finally:
            await nc.close()

    run(apply())
    applied = time.monotonic()
    while "after-restart" not in {m.id for m in client.models.list()}:
        assert time.monotonic() - applied < 1.0, "the gateway stopped following the configuration"
        time.sleep(0.02)
