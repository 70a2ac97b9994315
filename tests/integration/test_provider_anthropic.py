"""The Anthropic adapter end to end: the real stack against llm-katan's Anthropic Messages API.

llm-katan checks the ``x-api-key`` header (``--validate-keys``) and echoes what it
was sent (max_tokens, temperature, image blocks), so these tests see the native
request as Anthropic would. Upstream failures come from llm-katan's own switches:
``--error-rate 1.0`` (500), ``--rate-limit-after 1`` (429) and ``--timeout-after 1`` (504).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared import headers as H
from shared.errors import ModelbusError, UpstreamUnavailable
from shared.natsserver import EmbeddedNats
from tests.conftest import Katan, Stack, run, start_stack, stop_process
from tests.integration.provider_harness import ONE_ATTEMPT, complete, katan_fleet, render_documents, stream, text

KEY = "sk-ant-katan-test-31337"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello katan"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
PIXEL = (  # a 1x1 PNG
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _endpoint(name: str, katan: Katan, key_var: str = "ANTHROPIC_KEY", **options: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": "anthropic",
        "base_url": f"{katan.base_url}/v1",  # llm-katan serves /v1/messages at its root
        "default_model": "echo",
        "auth": {"secretRef": f"env:{key_var}"},
        "allowPrivate": True,  # llm-katan listens on loopback
        "timeout_ms": 10_000,
    }
    if options:
        spec["options"] = options
    return {"kind": "ModelEndpoint", "metadata": {"name": name}, "spec": spec}


def _config(katan: Katan, failing: Katan, limited: Katan, slow: Katan) -> str:
    docs = [
        _endpoint("claude", katan, max_tokens="1024"),
        _endpoint("claude-wrong-key", katan, key_var="WRONG_KEY"),
        _endpoint("claude-failing", failing),
        _endpoint("claude-limited", limited),
        _endpoint("claude-timeout", slow),
        {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "claude"}]}},
        ONE_ATTEMPT,
    ]
    return render_documents(docs)


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("anthropic")
    with katan_fleet(tmp_path_factory, ["--validate-keys", "--api-keys", f"anthropic={KEY}"]) as katans:
        config = tmp / "config.yaml"
        config.write_text(_config(katans["ok"], katans["failing"], katans["limited"], katans["slow"]))
        s = start_stack(nats_server.url, config, tmp / "home", env={"ANTHROPIC_KEY": KEY, "WRONG_KEY": "not-the-key"})
        try:
            yield s
        finally:
            stop_process(s.proc)


# ---------------------------------------------------------------- answers


def test_completion_reaches_llm_katan_with_the_api_key_and_comes_back(stack: Stack) -> None:
    status, headers, body = run(complete(stack.url, {"messages": HELLO}))
    assert status == 200, body
    assert headers[H.PROVIDER] == "anthropic"
    assert headers[H.ENDPOINT] == "claude"
    assert body["model"] == "echo"
    choice = body["choices"][0]
    assert "hello katan" in choice["message"]["content"]
    assert "max_tokens=1024" in choice["message"]["content"]  # the endpoint's max_tokens option
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


def test_the_requests_token_limit_and_temperature_reach_anthropic(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"messages": HELLO, "max_tokens": 77, "temperature": 0.2}))
    assert status == 200, body
    assert "max_tokens=77 temperature=0.2" in body["choices"][0]["message"]["content"]


def test_an_image_reaches_anthropic_as_an_image_block(stack: Stack) -> None:
    parts = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    status, _, body = run(complete(stack.url, {"messages": [{"role": "user", "content": parts}]}))
    assert status == 200, body
    assert "[image:image/png]" in body["choices"][0]["message"]["content"]


def test_streaming_yields_the_text_then_a_usage_chunk(stack: Stack) -> None:
    request = {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    chunks = run(stream(stack.url, request))
    assert "hello katan" in text(chunks)
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streaming_without_include_usage_sends_no_usage_chunk(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "stream": True}))
    assert chunks and all(chunk.usage is None for chunk in chunks)


def test_tool_calls_come_back_in_the_openai_shape(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"messages": HELLO, "tools": TOOLS}))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "test_city"}


def test_streamed_tool_calls_arrive_as_deltas_that_join_into_json_arguments(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "tools": TOOLS, "tool_choice": "required", "stream": True}))
    deltas = [d for chunk in chunks for c in chunk.choices for d in c.delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert len(deltas) > 2 and all(d.index == 0 and d.id is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "test_city"}
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["tool_calls"]


def test_a_tool_result_conversation_is_accepted(stack: Stack) -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "minus four degrees"},
    ]
    status, _, body = run(complete(stack.url, {"messages": messages}))
    assert status == 200, body
    assert "minus four degrees" in body["choices"][0]["message"]["content"]


# ---------------------------------------------------------------- failures


def test_a_parameter_anthropic_cannot_honour_is_a_400_naming_it(stack: Stack) -> None:
    request = {"messages": HELLO, "response_format": {"type": "json_object"}}
    status, _, body = run(complete(stack.url, request))
    assert status == 400
    assert body["error"]["param"] == "response_format"
    assert body["error"]["retryable"] is False


def test_wrong_upstream_key_is_a_non_retryable_auth_failure(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "claude-wrong-key", "messages": HELLO}))
    assert status == 401
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["retryable"] is False
    assert "not-the-key" not in json.dumps(body)


def test_an_upstream_500_is_a_retryable_error(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "claude-failing", "messages": HELLO}))
    assert status == 500
    assert body["error"]["retryable"] is True
    assert "internal server error" in body["error"]["message"]


def test_an_upstream_500_on_a_stream_is_a_retryable_error(stack: Stack) -> None:
    with pytest.raises(UpstreamUnavailable) as caught:
        run(stream(stack.url, {"model": "claude-failing", "messages": HELLO, "stream": True}))
    assert caught.value.retryable is True


def test_upstream_rate_limit_after_the_first_request_is_a_retryable_429(stack: Stack) -> None:
    first, _, _ = run(complete(stack.url, {"model": "claude-limited", "messages": HELLO}))
    status, _, body = run(complete(stack.url, {"model": "claude-limited", "messages": HELLO}))
    assert first == 200
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["retryable"] is True


def test_upstream_timeout_after_the_first_request_is_a_retryable_504(stack: Stack) -> None:
    first, _, _ = run(complete(stack.url, {"model": "claude-timeout", "messages": HELLO}))
    with pytest.raises(ModelbusError) as caught:
        run(stream(stack.url, {"model": "claude-timeout", "messages": HELLO, "stream": True}))
    assert first == 200
    assert caught.value.http_status == 504
    assert caught.value.retryable is True


def test_upstream_key_never_appears_in_service_logs(stack: Stack) -> None:
    run(complete(stack.url, {"messages": HELLO}))
    assert KEY not in stack.log()
