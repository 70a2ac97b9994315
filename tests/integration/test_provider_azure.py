"""The Azure OpenAI adapter end to end against llm-katan's Azure routes (a real third-party server).

llm-katan serves ``/openai/deployments/{id}/chat/completions`` (answering as
model ``{id}``) and ``/openai/v1/chat/completions`` (answering as the body's
model), and with ``--validate-keys`` rejects any key but the one it was given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared import headers as H
from shared.errors import ModelbusError
from shared.natsserver import EmbeddedNats
from tests.conftest import Katan, Stack, run, start_stack, stop_process
from tests.integration.provider_harness import complete, katan_fleet, render_documents, stream

KEY = "azure-katan-key-4242"
HELLO = [{"role": "user", "content": "hello azure"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
VERSION = {"api_version": "2024-10-21"}


def _endpoint(
    name: str, base_url: str, model: str, *, key_var: str | None = "AZURE_KEY", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "provider": "azure-openai",
        "base_url": base_url,
        "default_model": model,
        "allowPrivate": True,
    }
    if key_var:
        body["auth"] = {"secretRef": f"env:{key_var}"}
    return {"kind": "ModelEndpoint", "metadata": {"name": name}, "spec": {**body, **spec}}


def _config(katan: Katan, failing: Katan, limited: Katan, timing_out: Katan) -> str:
    docs = [
        _endpoint("azure", katan.base_url, "gpt-4o-deploy", options=VERSION),
        _endpoint("azure-aegis", f"{katan.base_url}/openai/deployments/gpt-4o", "gpt-4o", options=VERSION),
        _endpoint("azure-v1", f"{katan.base_url}/openai/v1", "gpt-4o-mini"),
        _endpoint("azure-wrong-key", katan.base_url, "gpt-4o-deploy", key_var="AZURE_WRONG_KEY", options=VERSION),
        _endpoint("azure-no-version", katan.base_url, "gpt-4o-deploy"),
        _endpoint("azure-500", failing.base_url, "d", options=VERSION),
        _endpoint("azure-limited", limited.base_url, "d", options=VERSION),
        _endpoint("azure-timeout", timing_out.base_url, "d", options=VERSION),
        {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "azure"}]}},
        # No retries: each failure below is the adapter's own answer, not the router's.
        {"kind": "RoutingDefaults", "metadata": {"name": "defaults"}, "spec": {"max_retries": 0}},
    ]
    return render_documents(docs)


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("azure")
    with katan_fleet(tmp_path_factory, ["--validate-keys", "--api-keys", f"azure_openai={KEY}"]) as katans:
        config = tmp / "config.yaml"
        config.write_text(_config(katans["ok"], katans["failing"], katans["limited"], katans["slow"]))
        env = {"AZURE_KEY": KEY, "AZURE_WRONG_KEY": "not-the-azure-key"}
        s = start_stack(nats_server.url, config, tmp / "home", env=env)
        try:
            yield s
        finally:
            stop_process(s.proc)


def _error(stack: Stack, model: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    status, _, body = run(complete(stack.url, {"model": model, "messages": HELLO, **extra}))
    return status, body["error"]


def test_a_completion_reaches_the_deployment_with_the_api_key_and_comes_back(stack: Stack) -> None:
    status, headers, body = run(complete(stack.url, {"messages": HELLO}))
    assert status == 200, body
    assert headers[H.PROVIDER] == "azure-openai"
    assert headers[H.ENDPOINT] == "azure"
    assert body["model"] == "gpt-4o-deploy"  # llm-katan answers as the deployment in the URL
    assert "hello azure" in body["choices"][0]["message"]["content"]
    assert body["usage"]["total_tokens"] > 0


def test_streaming_from_a_deployment_yields_the_text_and_a_final_usage_chunk(stack: Stack) -> None:
    chunks = run(stream(stack.url, {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}))
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert "hello azure" in text
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tool_calls_come_back_in_the_openai_shape(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"messages": HELLO, "tools": TOOLS}))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_an_aegis_style_base_url_keeps_its_own_deployment(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "azure-aegis/other-model", "messages": HELLO}))
    assert status == 200, body
    assert body["model"] == "gpt-4o"  # the deployment named in base_url, not a second one appended


def test_the_v1_api_is_used_for_a_base_url_ending_in_openai_v1(stack: Stack) -> None:
    status, _, body = run(complete(stack.url, {"model": "azure-v1", "messages": HELLO}))
    assert status == 200, body
    assert body["model"] == "gpt-4o-mini"  # llm-katan's v1 route answers as the body's model
    chunks = run(stream(stack.url, {"model": "azure-v1", "messages": HELLO, "stream": True}))
    assert "hello azure" in "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)


def test_a_wrong_key_is_a_non_retryable_401_that_never_shows_the_key(stack: Stack) -> None:
    status, error = _error(stack, "azure-wrong-key")
    assert status == 401
    assert error["type"] == "authentication_error"
    assert error["retryable"] is False
    assert "not-the-azure-key" not in json.dumps(error)


def test_a_deployment_url_without_api_version_is_a_clear_400(stack: Stack) -> None:
    status, error = _error(stack, "azure-no-version")
    assert status == 400
    assert "api_version" in error["message"]
    assert error["retryable"] is False


def test_an_upstream_500_is_a_retryable_error(stack: Stack) -> None:
    status, error = _error(stack, "azure-500")
    assert status == 500
    assert error["retryable"] is True


def test_an_upstream_rate_limit_is_a_retryable_429(stack: Stack) -> None:
    status, _, _ = run(complete(stack.url, {"model": "azure-limited", "messages": HELLO}))
    assert status == 200  # llm-katan --rate-limit-after 1 lets the first request through
    status, error = _error(stack, "azure-limited")
    assert status == 429
    assert error["type"] == "rate_limit_error"
    assert error["retryable"] is True


def test_an_upstream_gateway_timeout_is_a_retryable_504(stack: Stack) -> None:
    status, _, _ = run(complete(stack.url, {"model": "azure-timeout", "messages": HELLO}))
    assert status == 200  # llm-katan --timeout-after 1 answers once, then 504s
    status, error = _error(stack, "azure-timeout")
    assert status == 504
    assert error["retryable"] is True


def test_a_failing_stream_ends_with_the_mapped_error(stack: Stack) -> None:
    with pytest.raises(ModelbusError) as caught:
        run(stream(stack.url, {"model": "azure-500", "messages": HELLO, "stream": True}))
    assert caught.value.http_status == 500
    assert caught.value.retryable is True


def test_the_azure_key_never_appears_in_service_logs(stack: Stack) -> None:
    run(complete(stack.url, {"messages": HELLO}))
    assert KEY not in stack.log()
