"""The OpenAI adapter end to end against llm-katan, a real third-party OpenAI server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shared import headers as H
from shared.client import ModelbusClient
from shared.errors import RateLimited
from shared.natsserver import EmbeddedNats
from tests.conftest import Katan, Stack, run, start_stack, stop_process
from tests.integration.provider_harness import complete, katan_fleet, render_documents, stream

KEY = "katan-test-key-31337"
HELLO = [{"role": "user", "content": "hello katan"}]


def _config(katan: Katan, limited: Katan) -> str:
    docs = [
        {
            "kind": "ModelEndpoint",
            "metadata": {"name": "katan"},
            "spec": {
                "provider": "openai",
                "base_url": f"{katan.base_url}/v1",
                "default_model": "echo",
                "auth": {"secretRef": "env:KATAN_KEY"},
                "allowPrivate": True,
            },
        },
        {
            "kind": "ModelEndpoint",
            "metadata": {"name": "katan-wrong-key"},
            "spec": {
                "provider": "openai-compatible",
                "base_url": f"{katan.base_url}/v1",
                "default_model": "echo",
                "auth": {"secretRef": "env:KATAN_WRONG_KEY"},
                "allowPrivate": True,
            },
        },
        {
            "kind": "ModelEndpoint",
            "metadata": {"name": "katan-limited"},
            "spec": {
                "provider": "openai-compatible",
                "base_url": f"{limited.base_url}/v1",
                "default_model": "echo",
                "auth": {"secretRef": "env:KATAN_KEY"},
                "allowPrivate": True,
            },
        },
        {
            "kind": "ModelEndpoint",
            "metadata": {"name": "closed-port"},
            "spec": {
                "provider": "openai-compatible",
                "base_url": "http://127.0.0.1:9/v1",
                "default_model": "x",
                "allowPrivate": True,
                "timeout_ms": 2000,
            },
        },
        {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "katan"}]}},
        {
            "kind": "ModelAlias",
            "metadata": {"name": "survives-outage"},
            "spec": {"targets": [{"endpoint": "closed-port"}, {"endpoint": "katan"}]},
        },
    ]
    return render_documents(docs)


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("katan")
    ok_args = ["--validate-keys", "--api-keys", f"openai={KEY}"]
    with katan_fleet(tmp_path_factory, ok_args, roles=("ok", "limited")) as katans:
        config = tmp / "config.yaml"
        config.write_text(_config(katans["ok"], katans["limited"]))
        env = {"KATAN_KEY": KEY, "KATAN_WRONG_KEY": "not-the-key"}
        s = start_stack(nats_server.url, config, tmp / "home", env=env)
        try:
            yield s
        finally:
            stop_process(s.proc)


def test_completion_reaches_llm_katan_with_the_bearer_key_and_comes_back(stack: Stack) -> None:
    status, headers, body = run(complete(stack.url, {"messages": HELLO}))
    assert status == 200, body
    assert headers[H.PROVIDER] == "openai"
    assert headers[H.ENDPOINT] == "katan"
    assert body["model"] == "echo"
    assert "hello katan" in body["choices"][0]["message"]["content"]
    assert body["usage"]["total_tokens"] > 0


def test_streaming_through_llm_katan_yields_the_same_text_and_usage(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}))
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert "hello katan" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streaming_without_include_usage_sends_no_usage_chunk(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "stream": True}))
    assert chunks and all(chunk.usage is None for chunk in chunks)


def test_tool_calls_come_back_in_the_openai_shape(stack: Stack) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    status, _, body = run(complete(stack.url, {"messages": HELLO, "tools": tools}))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_wrong_upstream_key_is_a_non_retryable_auth_failure(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "katan-wrong-key", "messages": HELLO}))
    assert status == 401
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["retryable"] is False
    assert "not-the-key" not in json.dumps(body)


def test_upstream_rate_limit_is_a_retryable_429(stack: Stack) -> None:
    async def twice() -> None:
        client = await ModelbusClient.connect(stack.url)
        try:
            await client.complete({"model": "katan-limited", "messages": HELLO})
            await client.complete({"model": "katan-limited", "messages": HELLO})
        finally:
            await client.close()

    with pytest.raises(RateLimited) as caught:
        run(twice())
    assert caught.value.retryable is True
    assert caught.value.http_status == 429


def test_unreachable_endpoint_falls_back_to_the_next_target(stack: Stack) -> None:
    status, headers, body = run(complete(stack.url, {"model": "survives-outage", "messages": HELLO}))
    assert status == 200, body
    assert headers[H.ATTEMPTS] == "2"
    assert headers[H.ENDPOINT] == "katan"


def test_upstream_key_never_appears_in_service_logs(stack: Stack) -> None:
    run(complete(stack.url, {"messages": HELLO}))
    assert KEY not in stack.log()
