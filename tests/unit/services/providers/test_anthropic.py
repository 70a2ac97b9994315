"""The Anthropic adapter: request, response, stream and error mapping on recorded native payloads.

The payloads follow Anthropic's published examples (https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/docs/build-with-claude/streaming, https://docs.anthropic.com/en/api/errors).
HTTP goes through ``httpx.MockTransport``, so each test sees exactly what the adapter sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from services.providers.anthropic import AnthropicAdapter
from services.providers.base import EndpointConnection
from services.providers.http import UpstreamClient
from shared.chat import ChatCompletion, ChatCompletionChunk, decode_request
from shared.errors import (
    AuthFailed,
    BadUpstreamRequest,
    BadUpstreamResponse,
    ConfigError,
    InvalidRequest,
    ProviderError,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shared.routing import Endpoint

MODEL = "claude-sonnet-4-5"
KEY = "sk-ant-test-key"

TEXT_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Hello!"}],
    "model": "claude-sonnet-4-5-20250929",
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 6},
}

TOOL_MESSAGE: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "stop_reason": "tool_use",
    "content": [
        {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA"},
        },
    ],
    "usage": {"input_tokens": 472, "output_tokens": 89},
}


TOOL_USE_ID = "toolu_01T1x1fJ34qAmk2tNTrN7Up6"


def sse(*events: dict[str, Any]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "stop_sequence": None,
        "usage": {"input_tokens": 472, "output_tokens": 2, "cache_read_input_tokens": 0},
        "content": [],
        "stop_reason": None,
    },
}

TOOL_STREAM = sse(
    MESSAGE_START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Okay, let"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "'s check."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {},
        },
    },
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"location":'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ' "San Fra'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ncisco, CA"}'}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 89},
    },
    {"type": "message_stop"},
)

Handler = Callable[[httpx.Request], httpx.Response]


class Upstream:
    """A recorded upstream: remembers the requests, answers with the given handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    @property
    def body(self) -> Any:
        return json.loads(self.requests[-1].content)


def answer(body: Any = TEXT_MESSAGE, status: int = 200, **headers: str) -> Handler:
    return lambda _: httpx.Response(status, json=body, headers=headers)


def stream_answer(body: bytes) -> Handler:
    return lambda _: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def adapter(upstream: Upstream | None = None, base_url: str | None = None, **options: Any) -> AnthropicAdapter:
    async def credential(ref: str, endpoint_name: str) -> str:
        return KEY

    endpoint = Endpoint(
        name="claude", provider="anthropic", base_url=base_url, auth_ref="env:ANTHROPIC_KEY", options=options
    )
    connection = EndpointConnection(endpoint, credential)
    if upstream is not None:
        connection._http = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(upstream))
    return AnthropicAdapter(connection)


def request(messages: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
    messages = messages or [{"role": "user", "content": "hello"}]
    return decode_request(json.dumps({"messages": messages, **fields}).encode())


def complete(a: AnthropicAdapter, **fields: Any) -> ChatCompletion:
    messages = fields.pop("messages", None)
    return asyncio.run(a.complete(request(messages, **fields), MODEL, timeout_s=5))


def sent(messages: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
    """The native body the adapter sends for an OpenAI-shaped request."""
    upstream = Upstream(answer())
    complete(adapter(upstream), messages=messages, **fields)
    return upstream.body


def stream(a: AnthropicAdapter, **fields: Any) -> list[ChatCompletionChunk]:
    async def collect() -> list[ChatCompletionChunk]:
        return [c async for c in a.stream(request(stream=True, **fields), MODEL, timeout_s=5)]

    return asyncio.run(asyncio.wait_for(collect(), 5))


def stream_until_failure(a: AnthropicAdapter) -> tuple[list[ChatCompletionChunk], ProviderError]:
    got: list[ChatCompletionChunk] = []

    async def collect() -> None:
        async for chunk in a.stream(request(stream=True), MODEL, timeout_s=5):
            got.append(chunk)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(asyncio.wait_for(collect(), 5))
    return got, caught.value


def rejected(**fields: Any) -> InvalidRequest:
    messages = fields.pop("messages", None)
    with pytest.raises(InvalidRequest) as caught:
        sent(messages, **fields)
    return caught.value


# ---------------------------------------------------------------- request: transport


def test_the_request_goes_to_messages_with_the_api_key_and_version_headers() -> None:
    upstream = Upstream(answer())
    complete(adapter(upstream))
    sent_request = upstream.requests[0]
    assert str(sent_request.url) == "https://api.anthropic.com/v1/messages"
    assert sent_request.headers["x-api-key"] == KEY
    assert sent_request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent_request.headers
    assert "anthropic-beta" not in sent_request.headers


def test_endpoint_options_set_the_version_beta_header_and_base_url() -> None:
    upstream = Upstream(answer())
    a = adapter(upstream, "http://127.0.0.1:8000/v1/", anthropic_version="2024-01-01", anthropic_beta="a-1,b-2")
    complete(a)
    assert str(upstream.requests[0].url) == "http://127.0.0.1:8000/v1/messages"
    assert upstream.requests[0].headers["anthropic-version"] == "2024-01-01"
    assert upstream.requests[0].headers["anthropic-beta"] == "a-1,b-2"


# ---------------------------------------------------------------- request: messages


def test_system_and_developer_messages_become_the_top_level_system_in_order() -> None:
    body = sent(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "answer in French"}]},
        ]
    )
    assert body["system"] == [{"type": "text", "text": "be brief"}, {"type": "text", "text": "answer in French"}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


PARIS = '{"city":"Paris"}'


def test_a_tool_round_trip_maps_to_tool_use_and_merged_tool_results() -> None:
    body = sent(
        [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "21C"}]},
        ]
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "21C"}]},
        ],
    }


def test_an_earlier_refusal_goes_back_as_assistant_text_and_empty_system_text_is_left_out() -> None:
    body = sent(
        [
            {"role": "system", "content": ""},
            {"role": "user", "content": "do the bad thing"},
            {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            {"role": "user", "content": "ok, something else"},
        ],
        stop=["###", "END"],
    )
    assert "system" not in body
    assert body["messages"][1]["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert body["stop_sequences"] == ["###", "END"]


def test_tool_call_arguments_that_are_not_a_json_object_are_a_400_naming_them() -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    err = rejected(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}])
    assert err.param == "messages[1].tool_calls[0].function.arguments"


def test_images_go_as_base64_or_url_sources() -> None:
    parts = [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]
    body = sent([{"role": "user", "content": parts}])
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    ["http://example.com/cat.jpg", "data:image/bmp;base64,Qk0=", "data:image/png,rawbytes", "file:///etc/passwd"],
)
def test_images_anthropic_cannot_take_are_a_400_naming_the_field(url: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": url}}]
    err = rejected(messages=[{"role": "user", "content": "x"}, {"role": "user", "content": parts}])
    assert err.param == "messages[1].content[0].image_url.url"
    assert err.status == 400


# ---------------------------------------------------------------- request: tools and parameters

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}


def test_tools_map_to_input_schema_and_keep_strict() -> None:
    body = sent(tools=[TOOL, {"type": "function", "function": {"name": "now"}}])
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "native"),
    [
        ("none", {"type": "none"}),
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_maps_to_anthropic_types(choice: Any, native: dict[str, Any]) -> None:
    assert sent(tools=[TOOL], tool_choice=choice)["tool_choice"] == native


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    body = sent(tools=[TOOL], parallel_tool_calls=False)
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_sampling_stop_user_and_json_schema_are_mapped_and_seed_is_dropped() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    body = sent(
        temperature=0.3,
        top_p=0.9,
        stop="END",
        user="user-42",
        seed=7,
        metadata={"team": "x"},
        presence_penalty=0,
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
    )
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert not {"seed", "presence_penalty", "response_format", "stream"} & set(body)


def test_max_tokens_comes_from_the_request_then_the_option_then_4096() -> None:
    assert sent(max_completion_tokens=50, max_tokens=99)["max_tokens"] == 50
    assert sent(max_tokens=99)["max_tokens"] == 99
    upstream = Upstream(answer())
    complete(adapter(upstream, max_tokens="1024"))
    assert upstream.body["max_tokens"] == 1024
    assert sent()["max_tokens"] == 4096


def test_a_max_tokens_option_that_is_not_a_positive_number_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        adapter(max_tokens="lots")
    assert "options.max_tokens" in caught.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_parameters_anthropic_cannot_honour_are_a_400_naming_them(fields: dict[str, Any], param: str) -> None:
    err = rejected(**fields)
    assert (err.status, err.param, err.code) == (400, param, "unsupported_parameter")


# ---------------------------------------------------------------- response


def test_a_text_message_maps_to_a_chat_completion_with_usage() -> None:
    completion = complete(adapter(Upstream(answer())))
    assert completion.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert completion.model == "claude-sonnet-4-5-20250929"
    choice = completion.choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == ("Hello!", None, "stop")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        12,
        6,
        18,
    )


def test_tool_use_blocks_become_openai_tool_calls_with_json_string_arguments() -> None:
    completion = complete(adapter(Upstream(answer(TOOL_MESSAGE))), tools=[TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the current weather in San Francisco for you."
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("toolu_01A09q90qw90lq917835lq9", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA"}


def test_a_message_with_only_tool_use_has_null_content() -> None:
    only_tool = {**TOOL_MESSAGE, "content": TOOL_MESSAGE["content"][1:]}
    assert complete(adapter(Upstream(answer(only_tool)))).choices[0].message.content is None


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons_map_to_openai_finish_reasons(stop_reason: str, finish: str) -> None:
    message = {**TEXT_MESSAGE, "stop_reason": stop_reason}
    assert complete(adapter(Upstream(answer(message)))).choices[0].finish_reason == finish


def test_cached_prompt_tokens_count_as_prompt_tokens_and_reads_are_reported_as_cached() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 900}
    completion = complete(adapter(Upstream(answer({**TEXT_MESSAGE, "usage": usage}))))
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1010
    assert completion.usage.total_tokens == 1015
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 900


def test_thinking_blocks_are_left_out_of_the_answer() -> None:
    blocks = [{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "42"}]
    completion = complete(adapter(Upstream(answer({**TEXT_MESSAGE, "content": blocks}))))
    assert completion.choices[0].message.content == "42"


# ---------------------------------------------------------------- stream


def test_a_streamed_tool_call_arrives_as_openai_deltas_then_a_usage_chunk() -> None:
    upstream = Upstream(stream_answer(TOOL_STREAM))
    chunks = stream(adapter(upstream), tools=[TOOL])
    assert upstream.body["stream"] is True
    assert upstream.requests[0].headers["accept"] == "text/event-stream"
    assert {c.id for c in chunks} == {"msg_014p7gG3wDgGV9EUtLvnow3U"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert text == "Okay, let's check."
    deltas = [d for chunk in chunks for c in chunk.choices for d in c.delta.tool_calls or []]
    first = deltas[0]
    assert (first.index, first.id, first.type) == (0, TOOL_USE_ID, "function")
    assert first.function is not None and first.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None and d.function and d.function.name is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"location": "San Francisco, CA"}
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["tool_calls"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (472, 89)
    assert usage_chunk.usage.prompt_tokens_details is not None
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens == 0


def test_a_streamed_tool_call_without_argument_deltas_still_gets_a_json_object() -> None:
    body = sse(
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "now"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    )
    chunks = stream(adapter(Upstream(stream_answer(body))))
    deltas = [d for chunk in chunks for c in chunk.choices for d in c.delta.tool_calls or []]
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == "{}"


def test_unknown_stream_events_and_delta_types_are_ignored() -> None:
    body = sse(
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "brand_new_event", "anything": 1},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "42"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    )
    chunks = stream(adapter(Upstream(stream_answer(body))))
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == "42"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_an_error_event_mid_stream_is_a_retryable_error_not_a_clean_end() -> None:
    body = sse(
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    got, err = stream_until_failure(adapter(Upstream(stream_answer(body))))
    assert "".join(c.delta.content or "" for chunk in got for c in chunk.choices) == "Hel"
    assert isinstance(err, UpstreamUnavailable)
    assert (err.http_status, err.retryable) == (503, True)
    assert "Overloaded" in err.message


def test_an_invalid_request_error_event_is_not_retryable() -> None:
    body = sse(MESSAGE_START, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    _, err = stream_until_failure(adapter(Upstream(stream_answer(body))))
    assert isinstance(err, BadUpstreamRequest) and err.retryable is False


def test_a_stream_that_stops_before_the_message_ends_is_a_502() -> None:
    body = sse(
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    )
    _, err = stream_until_failure(adapter(Upstream(stream_answer(body))))
    assert isinstance(err, BadUpstreamResponse) and "message_stop" in err.message


def test_a_malformed_stream_event_is_a_502() -> None:
    body = sse(MESSAGE_START) + b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n'
    _, err = stream_until_failure(adapter(Upstream(stream_answer(body))))
    assert isinstance(err, BadUpstreamResponse) and "content_block_delta" in err.message


def test_a_json_error_answered_with_200_to_a_stream_request_is_a_502() -> None:
    error = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    _, err = stream_until_failure(adapter(Upstream(answer(error))))
    assert isinstance(err, BadUpstreamResponse) and "boom" in err.message


def test_a_stream_request_answered_with_429_keeps_the_retry_hint() -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    _, err = stream_until_failure(adapter(Upstream(answer(error, 429, **{"retry-after": "12"}))))
    assert isinstance(err, RateLimited) and err.retry_after == 12.0


# ---------------------------------------------------------------- errors


def test_429_is_retryable_with_retry_after_and_anthropics_message() -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests exceeded"}}
    with pytest.raises(RateLimited) as caught:
        complete(adapter(Upstream(answer(error, 429, **{"retry-after": "7"}))))
    assert caught.value.retryable is True and caught.value.retry_after == 7.0
    assert "Number of requests exceeded" in caught.value.message


def test_without_retry_after_the_latest_anthropic_rate_limit_reset_is_the_retry_hint() -> None:
    now = dt.datetime.now(dt.UTC)
    soon, later = ((now + dt.timedelta(seconds=s)).isoformat().replace("+00:00", "Z") for s in (20, 50))
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}

    def retry_hint(**headers: str) -> float | None:
        with pytest.raises(RateLimited) as caught:
            complete(adapter(Upstream(answer(error, 429, **headers))))
        return caught.value.retry_after

    hint = retry_hint(**{"anthropic-ratelimit-requests-reset": soon, "anthropic-ratelimit-tokens-reset": later})
    assert hint is not None and 45 <= hint <= 50
    assert retry_hint(**{"retry-after": "3", "anthropic-ratelimit-tokens-reset": later}) == 3.0
    assert retry_hint(**{"anthropic-ratelimit-tokens-reset": "not a time"}) is None


def test_529_overloaded_is_a_retryable_503() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamUnavailable) as caught:
        complete(adapter(Upstream(answer(error, 529))))
    assert (caught.value.http_status, caught.value.retryable) == (503, True)


@pytest.mark.parametrize(
    ("status", "error_type", "cls", "retryable"),
    [
        (400, "invalid_request_error", BadUpstreamRequest, False),
        (401, "authentication_error", AuthFailed, False),
        (404, "not_found_error", BadUpstreamRequest, False),
        (500, "api_error", UpstreamUnavailable, True),
        (504, "timeout_error", UpstreamTimeout, True),
    ],
)
def test_http_errors_map_through_the_shared_status_mapping(
    status: int, error_type: str, cls: type[ProviderError], retryable: bool
) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": f"the {error_type}"}, "request_id": "req_1"}
    with pytest.raises(ProviderError) as caught:
        complete(adapter(Upstream(answer(error, status))))
    assert type(caught.value) is cls and caught.value.retryable is retryable
    assert f"the {error_type}" in caught.value.message


def test_an_error_body_answered_with_200_is_a_502_with_the_reason() -> None:
    error = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    with pytest.raises(BadUpstreamResponse) as caught:
        complete(adapter(Upstream(answer(error))))
    assert caught.value.http_status == 502 and caught.value.retryable is False
    assert "Internal server error" in caught.value.message


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b'{"id": "msg_1", "type": "message"}'])
def test_a_malformed_answer_is_a_502(body: bytes) -> None:
    with pytest.raises(BadUpstreamResponse) as caught:
        complete(adapter(Upstream(lambda _: httpx.Response(200, content=body))))
    assert "malformed message" in caught.value.message


@pytest.mark.parametrize(
    ("exc", "cls"), [(httpx.ConnectError("refused"), UpstreamUnavailable), (httpx.ReadTimeout("slow"), UpstreamTimeout)]
)
def test_transport_failures_are_retryable(exc: Exception, cls: type[ProviderError]) -> None:
    def fail(_: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(cls) as caught:
        complete(adapter(Upstream(fail)))
    assert caught.value.retryable is True
