"""The Gemini adapter end to end: the real stack against llm-katan's Gemini/Vertex AI API.

llm-katan (provider ``vertexai``) serves ``/v1beta/models/{m}:generateContent`` and the
Vertex AI ``/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent``
routes, and echoes what it was sent (maxOutputTokens, temperature, inline images).
With ``--validate-keys`` it checks ``Authorization: Bearer`` (or a ``?key=`` query
parameter, which modelbus never sends); it has no ``x-goog-api-key`` check, so the
AI Studio key header is covered by the unit tests, and here only shown to stay out
of the URL. Upstream failures come from llm-katan's own switches:
``--error-rate 1.0`` (500), ``--rate-limit-after 1`` (429), ``--timeout-after 1`` (504).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared import headers as H
from shared.chat import ChatCompletionChunk
from shared.errors import ModelbusError, UpstreamUnavailable
from shared.natsserver import EmbeddedNats
from tests.conftest import Katan, Stack, run, start_stack, stop_process
from tests.integration.provider_harness import ONE_ATTEMPT, complete, katan_fleet, render_documents, stream, text

KEY = "ya29.katan-test-token-31337"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello katan"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]
PIXEL = (  # a 1x1 PNG
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _endpoint(name: str, katan: Katan, key_var: str = "GEMINI_TOKEN", **options: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": "gemini",
        "base_url": katan.base_url,
        "default_model": "echo",
        "auth": {"secretRef": f"env:{key_var}"},
        "allowPrivate": True,  # llm-katan listens on loopback
        "timeout_ms": 10_000,
        "options": options,
    }
    return {"kind": "ModelEndpoint", "metadata": {"name": name}, "spec": spec}


def _config(katan: Katan, failing: Katan, limited: Katan, slow: Katan) -> str:
    token = {"credential": "access_token"}
    docs = [
        _endpoint("gemini", katan, **token),
        _endpoint("gemini-vertex", katan, project="soc-prod", location="europe-west4"),
        _endpoint("gemini-api-key", katan),
        _endpoint("gemini-wrong-key", katan, key_var="WRONG_KEY", vertex="true", project="soc-prod"),
        _endpoint("gemini-failing", failing, **token),
        _endpoint("gemini-limited", limited, **token),
        _endpoint("gemini-timeout", slow, **token),
        {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "gemini"}]}},
        ONE_ATTEMPT,
    ]
    return render_documents(docs)


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gemini")
    with katan_fleet(tmp_path_factory, ["--validate-keys", "--api-keys", f"vertexai={KEY}"]) as katans:
        config = tmp / "config.yaml"
        config.write_text(_config(katans["ok"], katans["failing"], katans["limited"], katans["slow"]))
        s = start_stack(nats_server.url, config, tmp / "home", env={"GEMINI_TOKEN": KEY, "WRONG_KEY": "not-the-key"})
        try:
            yield s
        finally:
            stop_process(s.proc)


def _finishes(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]


# ---------------------------------------------------------------- answers


def test_completion_reaches_llm_katan_with_the_bearer_token_and_comes_back(stack: Stack) -> None:
    status, headers, body = run(complete(stack.url, {"messages": HELLO}))
    assert status == 200, body
    assert headers[H.PROVIDER] == "gemini"
    assert headers[H.ENDPOINT] == "gemini"
    assert body["model"] == "echo"
    choice = body["choices"][0]
    assert "hello katan" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


def test_vertex_ai_endpoints_use_the_project_path_and_the_bearer_token(stack: Stack) -> None:
    status, headers, body = run(complete(stack.url, {"model": "gemini-vertex", "messages": HELLO}))
    assert status == 200, body
    assert headers[H.ENDPOINT] == "gemini-vertex"
    assert "hello katan" in body["choices"][0]["message"]["content"]
    chunks = run(stream(stack.url, {"model": "gemini-vertex", "messages": HELLO, "stream": True}))
    assert "hello katan" in text(chunks) and _finishes(chunks) == ["stop"]


def test_the_requests_token_limit_and_temperature_reach_gemini(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"messages": HELLO, "max_tokens": 77, "temperature": 0.2}))
    assert status == 200, body
    assert "max_tokens=77 temperature=0.2" in body["choices"][0]["message"]["content"]


def test_an_image_reaches_gemini_as_inline_data(stack: Stack) -> None:
    parts = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    status, _, body = run(complete(stack.url, {"messages": [{"role": "user", "content": parts}]}))
    assert status == 200, body
    assert "[image:image/png]" in body["choices"][0]["message"]["content"]


def test_json_mode_reaches_gemini_as_a_json_response_mime_type(stack: Stack) -> None:
    request = {"messages": HELLO, "response_format": {"type": "json_object"}}
    status, _, body = run(complete(stack.url, request))
    assert status == 200, body
    assert "hello katan" in json.loads(body["choices"][0]["message"]["content"])["response"]


def test_streaming_yields_the_text_then_a_usage_chunk(stack: Stack) -> None:
    request = {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    chunks = run(stream(stack.url, request))
    assert "hello katan" in text(chunks)
    assert len(chunks) > 3  # chunk by chunk, not one buffered answer
    assert _finishes(chunks) == ["stop"]
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
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "test_city"}


def test_streamed_tool_calls_arrive_as_one_delta_with_the_whole_arguments(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "tools": TOOLS, "tool_choice": "required", "stream": True}))
    (delta,) = [d for chunk in chunks for c in chunk.choices for d in c.delta.tool_calls or []]
    assert delta.index == 0 and delta.id is not None and delta.id.startswith("call_")
    assert delta.function is not None and delta.function.name == "get_weather"
    assert json.loads(delta.function.arguments or "") == {"city": "test_city"}
    assert _finishes(chunks) == ["tool_calls"]


def test_a_tool_result_conversation_is_accepted(stack: Stack) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "minus four degrees"},
    ]
    status, _, body = run(complete(stack.url, {"messages": messages}))
    assert status == 200, body
    # system instruction, user, model (functionCall) and user (functionResponse) all arrive
    assert "messages=4" in body["choices"][0]["message"]["content"]


# ---------------------------------------------------------------- failures


def test_a_tool_result_with_no_earlier_call_is_a_400_naming_the_message(stack: Stack) -> None:
    messages = [*HELLO, {"role": "tool", "tool_call_id": "call_missing", "content": "x"}]
    status, _, body = run(complete(stack.url, {"messages": messages}))
    assert status == 400
    assert body["error"]["param"] == "messages[2].tool_call_id"
    assert body["error"]["retryable"] is False


def test_an_ai_studio_key_travels_in_x_goog_api_key_never_in_the_url(stack: Stack) -> None:
    # llm-katan only looks at Authorization and ?key=, so the header key counts as missing there.
    status, _, body = run(complete(stack.url, {"model": "gemini-api-key", "messages": HELLO}))
    assert status == 401
    # llm-katan accepts only Bearer or ?key=, so the x-goog-api-key header is refused: the key went
    # in neither the URL nor Authorization (the upstream's own text is withheld on auth failures).
    assert "rejected the credential with 401" in body["error"]["message"]
    assert body["error"]["retryable"] is False


def test_wrong_upstream_token_is_a_non_retryable_auth_failure(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "gemini-wrong-key", "messages": HELLO}))
    assert status == 401
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["retryable"] is False
    assert "not-the-key" not in json.dumps(body)


def test_an_upstream_500_is_a_retryable_error(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "gemini-failing", "messages": HELLO}))
    assert status == 500
    assert body["error"]["retryable"] is True
    assert "internal server error" in body["error"]["message"]


def test_an_upstream_500_on_a_stream_is_a_retryable_error(stack: Stack) -> None:
    with pytest.raises(UpstreamUnavailable) as caught:
        run(stream(stack.url, {"model": "gemini-failing", "messages": HELLO, "stream": True}))
    assert caught.value.retryable is True


def test_upstream_rate_limit_after_the_first_request_is_a_retryable_429(stack: Stack) -> None:
    first, _, _ = run(complete(stack.url, {"model": "gemini-limited", "messages": HELLO}))
    status, _, body = run(complete(stack.url, {"model": "gemini-limited", "messages": HELLO}))
    assert first == 200
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["retryable"] is True


def test_upstream_timeout_after_the_first_request_is_a_retryable_504(stack: Stack) -> None:
    first, _, _ = run(complete(stack.url, {"model": "gemini-timeout", "messages": HELLO}))
    with pytest.raises(ModelbusError) as caught:
        run(stream(stack.url, {"model": "gemini-timeout", "messages": HELLO, "stream": True}))
    assert first == 200
    assert caught.value.http_status == 504
    assert caught.value.retryable is True


def test_upstream_token_never_appears_in_service_logs(stack: Stack) -> None:
    run(complete(stack.url, {"messages": HELLO}))
    assert KEY not in stack.log()
