"""The Ollama adapter end to end: client → router → provider worker → a fake Ollama server.

llm-katan has no Ollama protocol, so :mod:`tests.fakes.ollama` (built from
Ollama's published /api/chat docs) runs in this process on loopback ports;
the stack is the real one, over a private nats-server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared import headers as H
from shared.errors import ModelbusError
from shared.natsserver import EmbeddedNats
from tests.conftest import Stack, run, start_stack, stop_process
from tests.fakes.ollama import FakeOllama
from tests.integration.provider_harness import complete, render_documents, stream

PROXY_KEY = "ollama-proxy-key-777"
HELLO = [{"role": "user", "content": "hello ollama"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
        },
    }
]
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-pixel").decode()


class Fakes:
    """The fake servers behind the stack's endpoints."""

    def __init__(self) -> None:
        self.main = FakeOllama()
        self.proxy = FakeOllama(api_key=PROXY_KEY)
        self.failing = FakeOllama(fail_status=500)
        self.limited = FakeOllama(fail_status=429, fail_after=1, retry_after="7")
        self.slow = FakeOllama(latency_s=3.0)

    def all(self) -> list[FakeOllama]:
        return [self.main, self.proxy, self.failing, self.limited, self.slow]


def _endpoint(name: str, base_url: str, **spec: Any) -> dict[str, Any]:
    # No allowPrivate: provider ollama allows loopback by default.
    body = {"provider": "ollama", "base_url": base_url, "default_model": "llama3.2", **spec}
    return {"kind": "ModelEndpoint", "metadata": {"name": name}, "spec": body}


def _config(fakes: Fakes) -> str:
    docs = [
        _endpoint("ollama", fakes.main.base_url, options={"num_ctx": "4096", "keep_alive": "10m"}),
        _endpoint("ollama-proxy", fakes.proxy.base_url, auth={"secretRef": "env:OLLAMA_PROXY_KEY"}),
        _endpoint("ollama-proxy-wrong-key", fakes.proxy.base_url, auth={"secretRef": "env:OLLAMA_WRONG_KEY"}),
        _endpoint("ollama-v1", f"{fakes.main.base_url}/v1"),
        _endpoint("ollama-500", fakes.failing.base_url),
        _endpoint("ollama-limited", fakes.limited.base_url),
        _endpoint("ollama-slow", fakes.slow.base_url, timeout_ms=300),
        {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "ollama"}]}},
        # No retries: each failure below is the adapter's own answer, not the router's.
        {"kind": "RoutingDefaults", "metadata": {"name": "defaults"}, "spec": {"max_retries": 0}},
    ]
    return render_documents(docs)


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    servers = Fakes()
    started: list[FakeOllama] = []
    try:
        for fake in servers.all():
            started.append(fake.start())
        yield servers
    finally:
        for fake in started:
            fake.stop()


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ollama")
    config = tmp / "config.yaml"
    config.write_text(_config(fakes))
    env = {"OLLAMA_PROXY_KEY": PROXY_KEY, "OLLAMA_WRONG_KEY": "not-the-proxy-key"}
    s = start_stack(nats_server.url, config, tmp / "home", env=env)
    try:
        yield s
    finally:
        stop_process(s.proc)


def _error(stack: Stack, model: str, **extra: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    status, headers, body = run(complete(stack.url, {"model": model, "messages": HELLO, **extra}))
    return status, body["error"], headers


# ---------------------------------------------------------------- answers


def test_a_completion_reaches_ollamas_chat_api_and_comes_back_openai_shaped(stack: Stack, fakes: Fakes) -> None:
    status, headers, body = run(complete(stack.url, {"messages": HELLO, "temperature": 0.3, "max_tokens": 50}))
    assert status == 200, body
    assert headers[H.PROVIDER] == "ollama"
    assert headers[H.ENDPOINT] == "ollama"
    assert body["object"] == "chat.completion"
    assert body["model"] == "llama3.2"
    assert body["choices"][0]["message"]["content"] == "echo: hello ollama"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0
    sent = fakes.main.requests[-1].body
    assert sent["stream"] is False
    assert sent["options"] == {"num_ctx": 4096, "temperature": 0.3, "num_predict": 50}
    assert sent["keep_alive"] == "10m"
    assert "authorization" not in fakes.main.requests[-1].headers


def test_streaming_yields_the_text_as_it_comes_and_a_final_usage_chunk(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}))
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert text == "echo: hello ollama"
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) == 3
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_a_token_limit_ends_the_answer_with_finish_reason_length(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"messages": HELLO, "max_completion_tokens": 1}))
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "echo:"


def test_tool_calls_come_back_with_json_string_arguments(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"messages": HELLO, "tools": TOOLS}))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 3}


def test_streamed_tool_calls_arrive_as_openai_tool_call_deltas(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "tools": TOOLS, "stream": True}))
    deltas = [d for chunk in chunks for c in chunk.choices for d in c.delta.tool_calls or []]
    assert len(deltas) == 1
    function = deltas[0].function
    assert function is not None and function.arguments is not None
    assert deltas[0].index == 0 and deltas[0].id and function.name == "get_weather"
    assert json.loads(function.arguments) == {"city": "Paris", "days": 3}
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["tool_calls"]


def test_a_tool_result_turn_goes_back_with_object_arguments_and_the_tool_name(stack: Stack, fakes: Fakes) -> None:
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "-3C and snowing"},
    ]
    status, _, body = run(complete(stack.url, {"messages": messages, "tools": TOOLS}))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "the tool get_weather said -3C and snowing"
    sent = fakes.main.requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert sent[2] == {
        "role": "tool",
        "content": "-3C and snowing",
        "tool_name": "get_weather",
        "tool_call_id": "call_7",
    }


def test_a_base64_image_reaches_ollama_without_the_data_prefix(stack: Stack, fakes: Fakes) -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    status, _, body = run(
        complete(stack.url, {"model": "ollama/llava", "messages": [{"role": "user", "content": content}]})
    )
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "echo: what is this? [1 image(s)]"
    assert fakes.main.requests[-1].body["messages"][0]["images"] == [PIXEL]


def test_json_mode_asks_ollama_for_format_json(stack: Stack, fakes: Fakes) -> None:
    status, _, body = run(complete(stack.url, {"messages": HELLO, "response_format": {"type": "json_object"}}))
    assert status == 200, body
    assert json.loads(body["choices"][0]["message"]["content"]) == {"echo": "echo: hello ollama"}
    assert fakes.main.requests[-1].body["format"] == "json"


def test_a_proxy_credential_is_sent_as_a_bearer_token(stack: Stack, fakes: Fakes) -> None:
    status, _, body = run(complete(stack.url, {"model": "ollama-proxy", "messages": HELLO}))
    assert status == 200, body
    assert fakes.proxy.requests[-1].headers["authorization"] == f"Bearer {PROXY_KEY}"


# ---------------------------------------------------------------- refusals and failures


def test_an_https_image_url_is_a_400_naming_the_field_before_any_upstream_call(stack: Stack, fakes: Fakes) -> None:
    before = len(fakes.main.requests)
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    status, error, _ = _error(stack, "ollama", messages=[{"role": "user", "content": content}])
    assert status == 400
    assert error["param"] == "messages[0].content[0].image_url.url"
    assert error["retryable"] is False
    assert len(fakes.main.requests) == before


def test_a_forced_tool_choice_is_a_400_naming_the_param(stack: Stack) -> None:
    status, error, _ = _error(stack, "ollama", tools=TOOLS, tool_choice="required")
    assert status == 400
    assert error["param"] == "tool_choice"


def test_a_base_url_ending_in_v1_is_a_400_pointing_to_openai_compatible(stack: Stack) -> None:
    status, error, _ = _error(stack, "ollama-v1")
    assert status == 400
    assert "openai-compatible" in error["message"]
    assert error["retryable"] is False


def test_an_unknown_model_is_a_non_retryable_404_with_ollamas_message(stack: Stack) -> None:
    status, error, _ = _error(stack, "ollama/llama9")
    assert status == 404
    assert error["retryable"] is False
    assert 'model "llama9" not found' in error["message"]


def test_a_wrong_proxy_key_is_a_non_retryable_401_that_never_shows_the_key(stack: Stack) -> None:
    status, error, _ = _error(stack, "ollama-proxy-wrong-key")
    assert status == 401
    assert error["retryable"] is False
    assert "not-the-proxy-key" not in json.dumps(error)


def test_an_upstream_500_is_retryable(stack: Stack) -> None:
    status, error, _ = _error(stack, "ollama-500")
    assert status == 500
    assert error["retryable"] is True
    assert "simulated failure 500" in error["message"]


def test_an_upstream_rate_limit_is_a_retryable_429_with_its_retry_after(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "ollama-limited", "messages": HELLO}))
    assert status == 200, body  # the fake lets the first request through
    status, error, headers = _error(stack, "ollama-limited")
    assert status == 429
    assert error["type"] == "rate_limit_error"
    assert error["retryable"] is True
    assert headers[H.RETRY_AFTER] == "7"


def test_a_slow_server_is_a_retryable_504_once_the_endpoint_timeout_passes(stack: Stack) -> None:
    status, error, _ = _error(stack, "ollama-slow")
    assert status == 504
    assert error["retryable"] is True


def test_an_error_line_mid_stream_ends_the_stream_with_a_502(stack: Stack) -> None:
    with pytest.raises(ModelbusError) as caught:
        run(stream(stack.url, {"model": "ollama/broken-stream", "messages": HELLO, "stream": True}))
    assert caught.value.http_status == 502
    assert "llama runner process has terminated" in caught.value.message


def test_a_200_that_is_not_json_is_a_502(stack: Stack) -> None:
    status, error, _ = _error(stack, "ollama/garbage")
    assert status == 502
    assert error["retryable"] is False
