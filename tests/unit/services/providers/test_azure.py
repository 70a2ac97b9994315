"""The Azure OpenAI adapter: URL forms, api-key auth, Azure's stream events and error hints.

Native payloads follow Azure's REST reference
(https://learn.microsoft.com/azure/ai-foundry/openai/reference) and are served
through ``httpx.MockTransport``: no network.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from services.providers.azure import AzureOpenAIAdapter
from services.providers.base import EndpointConnection
from services.providers.http import UpstreamClient
from services.providers.openai import OpenAIAdapter
from services.providers.registry import ADAPTERS
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, decode_request
from shared.errors import AuthFailed, BadUpstreamRequest, BadUpstreamResponse, ConfigError, RateLimited
from shared.routing import Endpoint

KEY = "azure-key-0123456789"
RESOURCE = "https://res.openai.azure.com"
FILTERS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
COMPLETION = {
    "id": "chatcmpl-9xyz",
    "object": "chat.completion",
    "created": 1716900000,
    "model": "gpt-4o-2024-05-13",
    "system_fingerprint": "fp_5f4bad809a",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTERS}],
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "logprobs": None,
            "content_filter_results": {},
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9x",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
        }
    ],
    "usage": {
        "prompt_tokens": 80,
        "completion_tokens": 17,
        "total_tokens": 97,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}
STREAM_EVENTS: list[dict[str, Any]] = [
    # Azure's first event: prompt filter results only, with empty id/model/object.
    {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTERS}],
    },
    {
        "choices": [
            {
                "content_filter_results": {},
                "delta": {"content": "", "refusal": None, "role": "assistant"},
                "finish_reason": None,
                "index": 0,
                "logprobs": None,
            }
        ],
        "created": 1716900001,
        "id": "chatcmpl-9abc",
        "model": "gpt-4o-2024-05-13",
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_5f4bad809a",
    },
    {
        "choices": [
            {
                "content_filter_results": FILTERS,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
                "finish_reason": None,
                "index": 0,
            }
        ],
        "created": 1716900001,
        "id": "chatcmpl-9abc",
        "model": "gpt-4o-2024-05-13",
        "object": "chat.completion.chunk",
    },
    {
        "choices": [
            {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}, "index": 0},
        ],
        "created": 1716900001,
        "id": "chatcmpl-9abc",
        "model": "gpt-4o-2024-05-13",
        "object": "chat.completion.chunk",
    },
    {
        "choices": [
            {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ':"Paris"}'}}]}, "index": 0},
        ],
        "created": 1716900001,
        "id": "chatcmpl-9abc",
        "model": "gpt-4o-2024-05-13",
        "object": "chat.completion.chunk",
    },
    {
        "choices": [{"delta": {}, "finish_reason": "tool_calls", "index": 0, "content_filter_results": {}}],
        "created": 1716900001,
        "id": "chatcmpl-9abc",
        "model": "gpt-4o-2024-05-13",
        "object": "chat.completion.chunk",
    },
    # Asynchronous content filter: an annotation after the finish, with no delta.
    {
        "choices": [
            {
                "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 20},
                "content_filter_results": FILTERS,
                "finish_reason": None,
                "index": 0,
            }
        ],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
    },
    {
        "choices": [],
        "created": 1716900001,
        "id": "chatcmpl-9abc",
        "model": "gpt-4o-2024-05-13",
        "object": "chat.completion.chunk",
        "usage": {"prompt_tokens": 80, "completion_tokens": 17, "total_tokens": 97},
    },
]


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


class Upstream:
    """Records requests; answers with a canned response."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def make(
    base_url: str | None = RESOURCE,
    answer: Callable[[httpx.Request], httpx.Response] | None = None,
    *,
    key: str | None = KEY,
    **options: Any,
) -> tuple[AzureOpenAIAdapter, Upstream]:
    async def credential(ref: str, endpoint: str) -> str:
        assert key is not None
        return key

    endpoint = Endpoint(
        name="azure",
        provider="azure-openai",
        base_url=base_url,
        auth_ref="env:AZURE_OPENAI_API_KEY" if key else None,
        options=options,
    )
    connection = EndpointConnection(endpoint, credential)
    upstream = Upstream(answer or (lambda _: httpx.Response(200, json=COMPLETION)))
    connection._http = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(upstream))
    return AzureOpenAIAdapter(connection), upstream


def req(**fields: Any) -> ChatCompletionRequest:
    fields.setdefault("messages", [{"role": "user", "content": "weather in Paris?"}])
    return decode_request(json.dumps(fields).encode())


def complete(adapter: AzureOpenAIAdapter, request: ChatCompletionRequest, model: str = "gpt-4o") -> ChatCompletion:
    return asyncio.run(adapter.complete(request, model, timeout_s=5))


def stream(adapter: AzureOpenAIAdapter, request: ChatCompletionRequest) -> list[ChatCompletionChunk]:
    async def collect() -> list[ChatCompletionChunk]:
        return [chunk async for chunk in adapter.stream(request, "gpt-4o", timeout_s=5)]

    return asyncio.run(asyncio.wait_for(collect(), 5))


def url_for(base_url: str, model: str = "gpt-4o", **options: Any) -> str:
    adapter, upstream = make(base_url, **options)
    complete(adapter, req(), model)
    return str(upstream.requests[0].url)


# ---------------------------------------------------------------- identity


def test_azure_is_registered_subclasses_the_openai_adapter_and_names_itself_azure_ai_openai() -> None:
    assert ADAPTERS["azure-openai"] is AzureOpenAIAdapter
    assert issubclass(AzureOpenAIAdapter, OpenAIAdapter)
    assert AzureOpenAIAdapter.gen_ai_provider == "azure.ai.openai"


# ---------------------------------------------------------------- URL forms


def test_the_resource_root_gets_the_model_as_deployment_and_the_api_version() -> None:
    assert url_for(RESOURCE, api_version="2024-10-21") == (
        f"{RESOURCE}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    )


def test_a_base_url_ending_in_openai_gets_deployments_appended_once() -> None:
    assert url_for(f"{RESOURCE}/openai/", "my-deploy", api_version="2024-10-21") == (
        f"{RESOURCE}/openai/deployments/my-deploy/chat/completions?api-version=2024-10-21"
    )


def test_each_model_goes_to_its_own_deployment_on_one_endpoint() -> None:
    adapter, upstream = make(api_version="2024-10-21")
    complete(adapter, req(), "gpt-4o")
    complete(adapter, req(), "gpt-4o-mini")
    assert [r.url.path for r in upstream.requests] == [
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/deployments/gpt-4o-mini/chat/completions",
    ]


def test_a_deployment_name_is_escaped_in_the_path() -> None:
    assert "/deployments/a%2Fb%20c/chat/completions" in url_for(RESOURCE, "a/b c", api_version="2024-10-21")


def test_an_aegis_base_url_that_names_the_deployment_gets_no_second_deployment() -> None:
    base = f"{RESOURCE}/openai/deployments/gpt-4o"
    assert url_for(base, "whatever-model", api_version="2024-06-01") == (
        f"{base}/chat/completions?api-version=2024-06-01"
    )


def test_a_base_url_ending_in_openai_v1_uses_the_v1_api_without_api_version() -> None:
    assert url_for(f"{RESOURCE}/openai/v1", api_version="2024-10-21") == f"{RESOURCE}/openai/v1/chat/completions"


def test_api_style_v1_on_the_resource_root_uses_the_v1_api() -> None:
    assert url_for(RESOURCE, api_style="v1") == f"{RESOURCE}/openai/v1/chat/completions"


def test_a_deployment_url_without_api_version_is_a_400_naming_the_option() -> None:
    with pytest.raises(ConfigError) as caught:
        make(RESOURCE)
    assert caught.value.http_status == 400
    assert "api_version" in caught.value.message


def test_a_missing_base_url_or_an_unknown_api_style_is_a_400() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        make(None, api_version="2024-10-21")
    with pytest.raises(ConfigError, match="api_style"):
        make(RESOURCE, api_version="2024-10-21", api_style="legacy")


# ---------------------------------------------------------------- auth and body


def test_the_key_goes_in_the_api_key_header_never_as_a_bearer_token() -> None:
    adapter, upstream = make(api_version="2024-10-21")
    complete(adapter, req())
    headers = upstream.requests[0].headers
    assert headers["api-key"] == KEY
    assert "authorization" not in headers


def test_the_body_is_openais_with_the_deployment_as_model() -> None:
    adapter, upstream = make(api_version="2024-10-21")
    complete(adapter, req(temperature=0.1, max_tokens=9), "gpt-4o")
    body = json.loads(upstream.requests[0].content)
    assert body == {
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "model": "gpt-4o",
        "temperature": 0.1,
        "max_tokens": 9,
    }


def test_a_streamed_call_asks_azure_for_usage() -> None:
    adapter, upstream = make(api_version="2024-10-21", answer=lambda _: httpx.Response(200, content=sse(STREAM_EVENTS)))
    stream(adapter, req(stream=True))
    assert json.loads(upstream.requests[0].content)["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------- responses and streams


def test_an_azure_completion_with_filter_results_maps_to_openais_shape() -> None:
    adapter, _ = make(api_version="2024-10-21")
    completion = complete(adapter, req())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 64


def test_the_stream_drops_azures_filter_only_events_and_keeps_tool_call_deltas_and_usage() -> None:
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: httpx.Response(200, content=sse(STREAM_EVENTS)))
    chunks = stream(adapter, req(stream=True))
    assert all(c.id == "chatcmpl-9abc" for c in chunks)
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or []]
    assert deltas[0].id == "call_1" and deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == '{"city":"Paris"}'
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 97


def test_a_content_filter_finish_reason_passes_through() -> None:
    events = [
        {
            "choices": [{"delta": {"content": "I can"}, "index": 0, "finish_reason": "content_filter"}],
            "created": 1,
            "id": "c",
            "model": "gpt-4o",
            "object": "chat.completion.chunk",
        }
    ]
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: httpx.Response(200, content=sse(events)))
    assert stream(adapter, req(stream=True))[0].choices[0].finish_reason == "content_filter"


def test_a_malformed_stream_event_that_is_not_an_azure_annotation_is_a_502() -> None:
    events = [{"choices": [{"index": 0, "text": "legacy"}], "id": "x"}]
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: httpx.Response(200, content=sse(events)))
    with pytest.raises(BadUpstreamResponse) as caught:
        stream(adapter, req(stream=True))
    assert caught.value.http_status == 502


def test_an_error_event_mid_stream_ends_the_stream_with_the_upstreams_error_not_a_skipped_annotation() -> None:
    events = [{"error": {"code": "server_error", "message": "The server had an error while processing your request."}}]
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: httpx.Response(200, content=sse(events)))
    with pytest.raises(BadUpstreamResponse) as caught:
        stream(adapter, req(stream=True))
    assert "The server had an error while processing your request." in caught.value.message


# ---------------------------------------------------------------- errors


def _azure_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


def test_a_429_reads_retry_after_ms() -> None:
    answer = _azure_error(429, "429", "Rate limit exceeded.", {"retry-after-ms": "1500", "retry-after": "2"})
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: answer)
    with pytest.raises(RateLimited) as caught:
        complete(adapter, req())
    assert caught.value.retry_after == 1.5
    assert caught.value.retryable is True
    assert "Rate limit exceeded." in caught.value.message


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"x-ratelimit-reset-tokens": "6", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-requests": "1"}, 6),
        (
            {"x-ratelimit-reset-requests": "1", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-tokens": "6"},
            1,
        ),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m30s"}, 90),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-tokens": "-1"}, None),
        ({"x-ratelimit-reset-tokens": "soon"}, None),
    ],
)
def test_without_retry_after_a_429_falls_back_to_the_rate_limit_reset_headers(
    headers: dict[str, str], seconds: float | None
) -> None:
    answer = _azure_error(429, "429", "Requests to the ChatCompletions_Create Operation have exceeded", headers)
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: answer)
    with pytest.raises(RateLimited) as caught:
        complete(adapter, req())
    if seconds is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == pytest.approx(seconds)


def test_a_prompt_rejected_by_azures_content_filter_is_a_non_retryable_400_with_that_code() -> None:
    answer = _azure_error(400, "content_filter", "The response was filtered due to the prompt triggering a policy.")
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: answer)
    with pytest.raises(BadUpstreamRequest) as caught:
        complete(adapter, req())
    assert caught.value.code == "content_filter"
    assert caught.value.retryable is False


def test_a_wrong_key_is_a_non_retryable_auth_failure() -> None:
    answer = _azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: answer)
    with pytest.raises(AuthFailed) as caught:
        complete(adapter, req())
    assert caught.value.retryable is False


@pytest.mark.parametrize("body", [b'{"error": {"code": "500", "message": "oops"}}', b"<html>gateway</html>"])
def test_a_200_with_an_error_or_a_malformed_body_is_a_502(body: bytes) -> None:
    adapter, _ = make(api_version="2024-10-21", answer=lambda _: httpx.Response(200, content=body))
    with pytest.raises(BadUpstreamResponse) as caught:
        complete(adapter, req())
    assert caught.value.http_status == 502
