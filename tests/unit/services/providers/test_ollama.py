"""The Ollama adapter: native /api/chat request, response, NDJSON stream and error mapping.

Native payloads are the examples of Ollama's API docs
(https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion),
served through ``httpx.MockTransport``: no network.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.providers.base import EndpointConnection
from services.providers.http import UpstreamClient
from services.providers.ollama import DEFAULT_BASE_URL, OllamaAdapter
from services.providers.registry import ADAPTERS
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, decode_request
from shared.errors import (
    AuthFailed,
    BadUpstreamRequest,
    BadUpstreamResponse,
    ConfigError,
    InvalidRequest,
    ModelbusError,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shared.routing import Endpoint

MODEL = "llama3.2"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_FUNCTION: dict[str, Any] = {
    "name": "get_current_weather",
    "description": "Get the current weather for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "format": {"type": "string", "enum": ["celsius"]}},
        "required": ["location", "format"],
    },
    "strict": True,
}
WEATHER_TOOL = {"type": "function", "function": WEATHER_FUNCTION}

# ---------------------------------------------------------------- recorded native answers (from the API docs)

DOC_ANSWER = {
    "model": "llama3.2",
    "created_at": "2023-12-12T14:13:43.416799Z",
    "message": {"role": "assistant", "content": "Hello! How are you today?"},
    "done": True,
    "total_duration": 5191566416,
    "load_duration": 2154458,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 383809000,
    "eval_count": 298,
    "eval_duration": 4799921000,
}
DOC_TOOL_ANSWER = {
    "model": "llama3.2",
    "created_at": "2024-07-22T20:33:28.123648Z",
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "get_current_weather", "arguments": {"format": "celsius", "location": "Paris, FR"}}}
        ],
    },
    "done_reason": "stop",
    "done": True,
    "total_duration": 885095291,
    "load_duration": 3753500,
    "prompt_eval_count": 122,
    "prompt_eval_duration": 328493000,
    "eval_count": 33,
    "eval_duration": 552222000,
}
DOC_STREAM = [
    {
        "model": "llama3.2",
        "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "message": {"role": "assistant", "content": "The", "images": None},
        "done": False,
    },
    {
        "model": "llama3.2",
        "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "message": {"role": "assistant", "content": " sky", "images": None},
        "done": False,
    },
    {
        "model": "llama3.2",
        "created_at": "2023-08-04T19:22:45.499127Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 4883583458,
        "load_duration": 1334875,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 342546000,
        "eval_count": 282,
        "eval_duration": 4535599000,
    },
]


def _tool_line(name: str, arguments: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    if call_id:
        call["id"] = call_id
    return {
        "model": MODEL,
        "created_at": "2025-05-29T09:00:00Z",
        "message": {"role": "assistant", "content": "", "tool_calls": [call]},
        "done": False,
    }


def ndjson(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


# ---------------------------------------------------------------- helpers


class Upstream:
    """A MockTransport handler that records requests and answers with a canned response."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.requests[-1].content))


def make(
    answer: Callable[[httpx.Request], httpx.Response] | None = None,
    *,
    base_url: str | None = None,
    key: str | None = None,
    **options: Any,
) -> tuple[OllamaAdapter, Upstream]:
    async def credential(ref: str, endpoint: str) -> str:
        assert key is not None
        return key

    endpoint = Endpoint(
        name="local-ollama",
        provider="ollama",
        base_url=base_url,
        auth_ref="env:OLLAMA_KEY" if key else None,
        options=options,
    )
    connection = EndpointConnection(endpoint, credential)
    upstream = Upstream(answer or (lambda _: httpx.Response(200, json=DOC_ANSWER)))
    connection._http = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(upstream))
    return OllamaAdapter(connection), upstream


def req(**fields: Any) -> ChatCompletionRequest:
    fields.setdefault("messages", [{"role": "user", "content": "why is the sky blue?"}])
    return decode_request(json.dumps(fields).encode())


def complete(adapter: OllamaAdapter, request: ChatCompletionRequest) -> ChatCompletion:
    return asyncio.run(adapter.complete(request, MODEL, timeout_s=5))


def stream(adapter: OllamaAdapter, request: ChatCompletionRequest) -> list[ChatCompletionChunk]:
    async def collect() -> list[ChatCompletionChunk]:
        return [chunk async for chunk in adapter.stream(request, MODEL, timeout_s=5)]

    return asyncio.run(asyncio.wait_for(collect(), 5))


def sent(request: ChatCompletionRequest, **options: Any) -> dict[str, Any]:
    """The native body the adapter posts for ``request``."""
    adapter, upstream = make(**options)
    complete(adapter, request)
    return upstream.body


def rejected(request: ChatCompletionRequest) -> InvalidRequest:
    adapter, upstream = make()
    with pytest.raises(InvalidRequest) as caught:
        complete(adapter, request)
    assert upstream.requests == []
    return caught.value


# ---------------------------------------------------------------- endpoint and URL


def test_the_adapter_is_registered_as_ollama_and_names_itself_ollama_in_spans() -> None:
    assert ADAPTERS["ollama"] is OllamaAdapter
    assert OllamaAdapter.gen_ai_provider == "ollama"


def test_without_a_base_url_the_call_goes_to_the_local_ollama_chat_endpoint() -> None:
    adapter, upstream = make()
    complete(adapter, req())
    assert str(upstream.requests[0].url) == f"{DEFAULT_BASE_URL}/api/chat"


def test_a_base_url_with_a_trailing_slash_gets_api_chat_once() -> None:
    adapter, upstream = make(base_url="http://gpu-box:11434/")
    complete(adapter, req())
    assert str(upstream.requests[0].url) == "http://gpu-box:11434/api/chat"


def test_a_base_url_ending_in_v1_is_a_400_pointing_to_openai_compatible() -> None:
    with pytest.raises(ConfigError) as caught:
        make(base_url="http://127.0.0.1:11434/v1")
    assert caught.value.http_status == 400
    assert "openai-compatible" in caught.value.message
    assert "/v1" in caught.value.message


def test_no_auth_header_is_sent_when_the_endpoint_has_no_credential() -> None:
    adapter, upstream = make()
    complete(adapter, req())
    assert "authorization" not in upstream.requests[0].headers


def test_a_credential_is_sent_as_a_bearer_token_for_a_proxy_in_front_of_ollama() -> None:
    adapter, upstream = make(key="proxy-key")
    complete(adapter, req())
    assert upstream.requests[0].headers["authorization"] == "Bearer proxy-key"


# ---------------------------------------------------------------- request mapping


def test_a_plain_call_sends_model_messages_and_stream_false() -> None:
    body = sent(req())
    assert body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "why is the sky blue?"}],
        "stream": False,
    }


def test_system_and_developer_turns_become_system_messages_and_text_parts_are_joined() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "rule one"}, {"type": "text", "text": "rule two"}]},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]},
    ]
    body = sent(req(messages=messages))
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "rule one\nrule two"},
        {"role": "user", "content": "hello\nthere"},
    ]


def test_data_uri_images_are_sent_as_bare_base64_in_images() -> None:
    content = [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "high"}},
    ]
    body = sent(req(messages=[{"role": "user", "content": content}]))
    assert body["messages"] == [{"role": "user", "content": "what is in this image?", "images": [PNG_B64]}]


def test_an_https_image_url_is_a_400_naming_the_field() -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    error = rejected(req(messages=[{"role": "system", "content": "x"}, {"role": "user", "content": content}]))
    assert error.param == "messages[1].content[0].image_url.url"
    assert error.http_status == 400
    assert "base64" in error.message


def test_a_data_uri_that_is_not_base64_is_a_400() -> None:
    content = [{"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]
    assert (
        rejected(req(messages=[{"role": "user", "content": content}])).param == "messages[0].content[0].image_url.url"
    )


def test_assistant_tool_calls_get_object_arguments_and_tool_results_name_their_tool() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": '{"location": "Paris, FR"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
    ]
    body = sent(req(messages=messages))
    assert body["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "function": {"name": "get_current_weather", "arguments": {"location": "Paris, FR"}}},
            {"id": "call_2", "function": {"name": "get_time", "arguments": {}}},
        ],
    }
    assert body["messages"][2] == {
        "role": "tool",
        "content": "22 degrees",
        "tool_name": "get_current_weather",
        "tool_call_id": "call_1",
    }
    assert body["messages"][3]["tool_name"] == "get_time"


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"a string"'])
def test_tool_call_arguments_that_are_not_a_json_object_are_a_400_naming_the_field(arguments: str) -> None:
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}],
        },
    ]
    assert rejected(req(messages=messages)).param == "messages[1].tool_calls[0].function.arguments"


def test_tools_pass_through_in_openai_function_format_without_strict() -> None:
    body = sent(req(tools=[WEATHER_TOOL], tool_choice="auto"))
    function = {k: v for k, v in WEATHER_FUNCTION.items() if k != "strict"}
    assert body["tools"] == [{"type": "function", "function": function}]


def test_tool_choice_none_sends_no_tools() -> None:
    assert "tools" not in sent(req(tools=[WEATHER_TOOL], tool_choice="none"))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_current_weather"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER_TOOL], "parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_parameters_ollama_cannot_honour_are_a_400_naming_the_param(fields: dict[str, Any], param: str) -> None:
    error = rejected(req(**fields))
    assert error.param == param
    assert error.code == "unsupported_parameter"


def test_sampling_parameters_go_to_options() -> None:
    body = sent(
        req(
            temperature=0.2,
            top_p=0.9,
            seed=101,
            max_tokens=64,
            stop="\n\n",
            presence_penalty=0.5,
            frequency_penalty=-0.5,
        )
    )
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 101,
        "num_predict": 64,
        "stop": ["\n\n"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    }


def test_max_completion_tokens_wins_over_max_tokens_as_num_predict() -> None:
    assert sent(req(max_tokens=10, max_completion_tokens=20))["options"] == {"num_predict": 20}


def test_parameters_without_an_ollama_equivalent_are_dropped() -> None:
    body = sent(req(user="u1", metadata={"a": "b"}, store=True, service_tier="auto", reasoning_effort="low", n=1))
    assert set(body) == {"model", "messages", "stream"}


def test_json_mode_sends_format_json_and_a_json_schema_sends_the_schema() -> None:
    assert sent(req(response_format={"type": "json_object"}))["format"] == "json"
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    body = sent(req(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}))
    assert body["format"] == schema
    assert "format" not in sent(req(response_format={"type": "text"}))


def test_endpoint_options_arrive_as_num_ctx_keep_alive_and_think_even_as_strings() -> None:
    body = sent(req(temperature=0), num_ctx="8192", keep_alive="300", think="false")
    assert body["options"] == {"num_ctx": 8192, "temperature": 0.0}
    assert body["keep_alive"] == 300
    assert body["think"] is False
    body = sent(req(), keep_alive="10m", think="high")
    assert (body["keep_alive"], body["think"]) == ("10m", "high")


@pytest.mark.parametrize("options", [{"num_ctx": "lots"}, {"num_ctx": 0}, {"think": "maybe"}, {"keep_alive": [1]}])
def test_an_unusable_endpoint_option_is_a_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        make(**options)
    assert caught.value.http_status == 400
    assert next(iter(options)) in caught.value.message


# ---------------------------------------------------------------- response mapping


def test_a_non_streamed_answer_becomes_a_chat_completion_with_usage() -> None:
    adapter, _ = make()
    completion = complete(adapter, req())
    assert completion.model == "llama3.2"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.content == "Hello! How are you today?"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        26,
        298,
        324,
    )


def test_tool_calls_come_back_with_json_string_arguments_and_finish_reason_tool_calls() -> None:
    adapter, _ = make(lambda _: httpx.Response(200, json=DOC_TOOL_ANSWER))
    choice = complete(adapter, req(tools=[WEATHER_TOOL])).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"format": "celsius", "location": "Paris, FR"}


def test_an_ollama_tool_call_id_is_kept() -> None:
    answer = {**DOC_TOOL_ANSWER, "message": _tool_line("f", {}, "call_abc")["message"]}
    adapter, _ = make(lambda _: httpx.Response(200, json=answer))
    calls = complete(adapter, req()).choices[0].message.tool_calls
    assert calls is not None and calls[0].id == "call_abc"


@pytest.mark.parametrize(("done_reason", "finish"), [("length", "length"), ("stop", "stop"), ("load", "stop")])
def test_done_reason_maps_to_the_openai_finish_reason(done_reason: str, finish: str) -> None:
    adapter, _ = make(lambda _: httpx.Response(200, json={**DOC_ANSWER, "done_reason": done_reason}))
    assert complete(adapter, req()).choices[0].finish_reason == finish


def test_a_cached_prompt_without_prompt_eval_count_counts_as_zero_prompt_tokens() -> None:
    answer = {k: v for k, v in DOC_ANSWER.items() if k != "prompt_eval_count"}
    adapter, _ = make(lambda _: httpx.Response(200, json=answer))
    usage = complete(adapter, req()).usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (0, 298)


# ---------------------------------------------------------------- stream mapping


def test_the_ndjson_stream_becomes_chunks_then_a_finish_chunk_then_a_usage_chunk() -> None:
    adapter, upstream = make(lambda _: httpx.Response(200, content=ndjson(DOC_STREAM)))
    chunks = stream(adapter, req(stream=True))
    assert upstream.body["stream"] is True
    assert [c.choices[0].delta.content for c in chunks[:2]] == ["The", " sky"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.role is None
    assert chunks[2].choices[0].finish_reason == "stop"
    assert chunks[3].choices == []
    assert chunks[3].usage is not None and chunks[3].usage.total_tokens == 26 + 282
    assert len({c.id for c in chunks}) == 1
    assert all(c.model == "llama3.2" for c in chunks)


def test_streamed_tool_calls_become_indexed_deltas_with_id_name_and_arguments() -> None:
    lines = [
        _tool_line("get_current_weather", {"location": "Paris"}, "call_a"),
        _tool_line("get_time", {"zone": "CET"}),
        {**DOC_STREAM[-1], "eval_count": 12},
    ]
    adapter, _ = make(lambda _: httpx.Response(200, content=ndjson(lines)))
    chunks = stream(adapter, req(stream=True, tools=[WEATHER_TOOL]))
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or []]
    assert [d.index for d in deltas] == [0, 1]
    assert deltas[0].id == "call_a" and deltas[1].id is not None and deltas[1].id.startswith("call_")
    assert [d.type for d in deltas] == ["function", "function"]
    assert [d.function.name for d in deltas if d.function] == ["get_current_weather", "get_time"]
    assert [json.loads(d.function.arguments or "") for d in deltas if d.function] == [
        {"location": "Paris"},
        {"zone": "CET"},
    ]
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_chunks_are_yielded_as_lines_arrive_not_after_the_stream_ends() -> None:
    first_seen = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield ndjson(DOC_STREAM[:1])
        await asyncio.wait_for(first_seen.wait(), 2)  # the rest only once the first chunk was consumed
        yield ndjson(DOC_STREAM[1:])

    adapter, _ = make(lambda _: httpx.Response(200, content=body()))

    async def collect() -> list[str]:
        texts: list[str] = []
        async for chunk in adapter.stream(req(stream=True), MODEL, timeout_s=5):
            first_seen.set()
            texts.extend(c.delta.content or "" for c in chunk.choices)
        return texts

    assert "".join(asyncio.run(collect())) == "The sky"


def test_an_error_line_mid_stream_is_a_502_with_ollamas_message() -> None:
    lines: list[dict[str, Any]] = [DOC_STREAM[0], {"error": "llama runner process has terminated"}]
    adapter, _ = make(lambda _: httpx.Response(200, content=ndjson(lines)))
    with pytest.raises(BadUpstreamResponse) as caught:
        stream(adapter, req(stream=True))
    assert caught.value.http_status == 502
    assert "llama runner process has terminated" in caught.value.message


def test_a_stream_that_ends_without_done_is_a_502() -> None:
    adapter, _ = make(lambda _: httpx.Response(200, content=ndjson(DOC_STREAM[:2])))
    with pytest.raises(BadUpstreamResponse, match="done"):
        stream(adapter, req(stream=True))


def test_a_malformed_stream_line_is_a_502() -> None:
    adapter, _ = make(lambda _: httpx.Response(200, content=b'{"model": "x", "message": {"content": 5}}\n'))
    with pytest.raises(BadUpstreamResponse, match="malformed"):
        stream(adapter, req(stream=True))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (400, BadUpstreamRequest, False),
        (401, AuthFailed, False),
        (404, BadUpstreamRequest, False),
        (429, RateLimited, True),
        (500, UpstreamUnavailable, True),
        (503, UpstreamUnavailable, True),
        (504, UpstreamTimeout, True),
    ],
)
def test_error_statuses_map_through_the_shared_table_with_ollamas_message(
    status: int, error_type: type[ModelbusError], retryable: bool
) -> None:
    message = 'model "llama9" not found, try pulling it first'
    adapter, _ = make(lambda _: httpx.Response(status, json={"error": message}))
    for call in (lambda: complete(adapter, req()), lambda: stream(adapter, req(stream=True))):
        with pytest.raises(error_type) as caught:
            call()
        assert caught.value.retryable is retryable
        assert message in caught.value.message


def test_a_429_carries_the_retry_after_hint() -> None:
    adapter, _ = make(lambda _: httpx.Response(429, json={"error": "busy"}, headers={"retry-after": "3"}))
    with pytest.raises(RateLimited) as caught:
        complete(adapter, req())
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize(
    "body",
    [b'{"error": "unexpected server status"}', b"<html>bad gateway</html>", b'{"model": "x", "done": false}'],
)
def test_a_200_with_an_error_body_or_no_answer_is_a_502(body: bytes) -> None:
    adapter, _ = make(lambda _: httpx.Response(200, content=body))
    with pytest.raises(BadUpstreamResponse) as caught:
        complete(adapter, req())
    assert caught.value.http_status == 502
    assert caught.value.retryable is False


def test_an_unreachable_server_is_a_retryable_error_without_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused to http://user:pw@127.0.0.1:11434", request=request)

    adapter, _ = make(refuse, base_url="http://user:pw@127.0.0.1:11434")
    with pytest.raises(UpstreamUnavailable) as caught:
        complete(adapter, req())
    assert caught.value.retryable is True
    assert "pw" not in caught.value.message
