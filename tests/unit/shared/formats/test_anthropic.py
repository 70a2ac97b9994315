"""Anthropic's Messages format in both directions, on Anthropic's documented example payloads.

Examples are copied from Anthropic's docs: "Using the Messages API"
(https://docs.anthropic.com/en/docs/build-with-claude/working-with-messages), the tool-use
guide (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use) and
"Streaming Messages" (https://docs.anthropic.com/en/docs/build-with-claude/streaming). Where the
docs use a shell variable (``$IMAGE_BASE64``) a short base64 string stands in.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ImagePart,
    JsonSchemaResponseFormat,
    UserMessage,
    completion_decoder,
    decode_request,
)
from shared.errors import InvalidRequest
from shared.formats import anthropic
from shared.formats.anthropic import wire

MODEL = "claude-sonnet-4-5"

# ---------------------------------------------------------------- documented requests

BASIC_REQUEST = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, Claude"}]}

MULTI_TURN_REQUEST = {
    "model": MODEL,
    "max_tokens": 1024,
    "messages": [
        {"role": "user", "content": "Hello, Claude"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Can you describe LLMs to me?"},
    ],
}

ANT = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
VISION_REQUEST = {
    "model": MODEL,
    "max_tokens": 1024,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"type": "image", "source": {"type": "url", "url": ANT}},
                {"type": "text", "text": "What is in the above image?"},
            ],
        }
    ],
}

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "description": 'The unit of temperature, either "celsius" or "fahrenheit"',
            },
        },
        "required": ["location"],
    },
}

TOOL_RESULT_REQUEST = {
    "model": MODEL,
    "max_tokens": 1024,
    "tools": [WEATHER_TOOL],
    "messages": [
        {"role": "user", "content": "What is the weather like in San Francisco?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"location": "San Francisco, CA", "unit": "celsius"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"}
            ],
        },
    ],
}

STREAMED_TOOL_REQUEST = {
    "model": MODEL,
    "max_tokens": 1024,
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "any"},
    "messages": [{"role": "user", "content": "What is the weather like in San Francisco?"}],
    "stream": True,
}

# ---------------------------------------------------------------- documented answers

BASIC_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Hello!"}],
    "model": MODEL,
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 6},
}

PREFILL_MESSAGE = {
    "id": "msg_01Q8Faay6S7QPTvEUUQARt7h",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "C"}],
    "model": MODEL,
    "stop_reason": "max_tokens",
    "stop_sequence": None,
    "usage": {"input_tokens": 42, "output_tokens": 1},
}

TOOL_USE_MESSAGE = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "content": [
        {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "celsius"},
        },
    ],
    "usage": {"input_tokens": 472, "output_tokens": 89},
}

# ---------------------------------------------------------------- documented streams (SSE name, data)

BASIC_STREAM = [
    (
        "message_start",
        '{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", '
        '"role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, '
        '"stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}',
    ),
    (
        "content_block_start",
        '{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}',
    ),
    ("ping", '{"type": "ping"}'),
    (
        "content_block_delta",
        '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}',
    ),
    (
        "content_block_delta",
        '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}',
    ),
    ("content_block_stop", '{"type": "content_block_stop", "index": 0}'),
    (
        "message_delta",
        '{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, '
        '"usage": {"output_tokens": 15}}',
    ),
    ("message_stop", '{"type": "message_stop"}'),
]


def _text_delta(text: str) -> tuple[str, str]:
    return "content_block_delta", json.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    )


def _json_delta(partial: str) -> tuple[str, str]:
    return "content_block_delta", json.dumps(
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": partial}}
    )


TOOL_TEXT = ["Okay", ",", " let", "'s", " check", " the", " weather", " for", " San", " Francisco", ",", " CA", ":"]
TOOL_JSON = ["", '{"location":', ' "San', " Francisc", "o,", ' CA"', ", ", '"unit": "fah', 'renheit"}']
TOOL_STREAM = [
    (
        "message_start",
        '{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant",'
        '"model":"claude-sonnet-4-5-20250929","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},'
        '"content":[],"stop_reason":null}}',
    ),
    ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
    ("ping", '{"type": "ping"}'),
    *[_text_delta(t) for t in TOOL_TEXT],
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    (
        "content_block_start",
        '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
        '"id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}',
    ),
    *[_json_delta(p) for p in TOOL_JSON],
    ("content_block_stop", '{"type":"content_block_stop","index":1}'),
    (
        "message_delta",
        '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}',
    ),
    ("message_stop", '{"type":"message_stop"}'),
]

THINKING_STREAM = [
    (
        "message_start",
        '{"type": "message_start", "message": {"id": "msg_01...", "type": "message", "role": "assistant", '
        '"content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null}}',
    ),
    (
        "content_block_start",
        '{"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}',
    ),
    (
        "content_block_delta",
        '{"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": '
        '"Let me solve this step by step:\\n\\n1. First break down 27 * 453"}}',
    ),
    (
        "content_block_delta",
        '{"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": '
        '"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}',
    ),
    ("content_block_stop", '{"type": "content_block_stop", "index": 0}'),
    (
        "content_block_start",
        '{"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}',
    ),
    (
        "content_block_delta",
        '{"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"}}',
    ),
    ("content_block_stop", '{"type": "content_block_stop", "index": 1}'),
    ("message_delta", '{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}}'),
    ("message_stop", '{"type": "message_stop"}'),
]

# ---------------------------------------------------------------- helpers


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def ingress(body: dict[str, Any]) -> ChatCompletionRequest:
    return anthropic.request_from_native(encode(body))


def upstream(request: ChatCompletionRequest, model: str = MODEL) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(anthropic.request_to_native(request, model, default_max_tokens=4096))
    return body


def as_blocks(body: dict[str, Any]) -> dict[str, Any]:
    """A request with every string content written as one text block (both forms mean the same)."""
    out = dict(body)
    if isinstance(out.get("system"), str):
        out["system"] = [{"type": "text", "text": out["system"]}]
    out["messages"] = [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
        for m in body["messages"]
    ]
    return out


def read(events: list[tuple[str, str]] | list[tuple[str, bytes]]) -> list[ChatCompletionChunk]:
    reader = anthropic.StreamReader()
    chunks: list[ChatCompletionChunk] = []
    for name, data in events:
        chunks.extend(reader.read(name, data.encode() if isinstance(data, str) else data))
    return chunks


def write(chunks: list[ChatCompletionChunk]) -> list[tuple[str, bytes]]:
    writer = anthropic.StreamWriter()
    events = [event for chunk in chunks for event in writer.events(chunk)]
    return events + writer.end()


def payloads(events: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    decoded = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [d["type"] for d in decoded]  # the SSE name is the data's type
    return decoded


def without_created(chunks: list[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    return [msgspec.structs.replace(c, created=0) for c in chunks]


def rejected(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        ingress(body)
    return caught.value


# ---------------------------------------------------------------- requests: round trips


@pytest.mark.parametrize(
    "body", [BASIC_REQUEST, MULTI_TURN_REQUEST, VISION_REQUEST, TOOL_RESULT_REQUEST, STREAMED_TOOL_REQUEST]
)
def test_a_documented_request_survives_the_trip_through_the_internal_contract(body: dict[str, Any]) -> None:
    assert upstream(ingress(body)) == as_blocks(body)


def test_an_internal_request_comes_back_the_same_from_anthropic_s_format() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    internal = decode_request(
        encode(
            {
                "messages": [
                    # Text as parts: Anthropic's system and turns are blocks, so a string comes back as one.
                    {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                    {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "checking"}], "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "minus four"},
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": False,
                "max_tokens": 300,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop": ["END"],
                "user": "user-7",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": {"type": "object"}},
                },
            }
        )
    )
    back = ingress(upstream(internal, "claude"))
    assert back == msgspec.structs.replace(internal, model="claude")


def test_a_streamed_request_asks_for_usage_and_tool_choice_any_is_required() -> None:
    request = ingress(STREAMED_TOOL_REQUEST)
    assert request.stream is True and request.include_usage is True
    assert request.tool_choice == "required"
    assert request.model == MODEL and request.max_tokens == 1024


def test_a_base64_image_becomes_a_data_uri_and_a_url_image_stays_a_url() -> None:
    (user,) = ingress(VISION_REQUEST).messages
    assert isinstance(user, UserMessage) and isinstance(user.content, list)
    urls = [part.image_url.url for part in user.content if isinstance(part, ImagePart)]
    assert urls == ["data:image/jpeg;base64,/9j/4AAQSkZJRg==", ANT]


# ---------------------------------------------------------------- requests: native fields with no counterpart


def test_the_native_structs_keep_cache_control_citations_and_thinking() -> None:
    body = {
        **BASIC_REQUEST,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "top_k": 5,
        "messages": [
            {"role": "user", "content": "27 * 453?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]},
        ],
    }
    native = wire.request_decoder.decode(encode(body))
    assert isinstance(native.system, list) and native.system[0].cache_control == wire.CacheControl(
        type="ephemeral", ttl="1h"
    )
    assert native.thinking == wire.ThinkingConfig(type="enabled", budget_tokens=2048) and native.top_k == 5
    assert native.messages[1].content == [wire.ThinkingBlock(thinking="hmm", signature="sig")]
    answer = wire.message_decoder.decode(
        encode({**BASIC_MESSAGE, "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]})
    )
    assert (answer.content[0].thinking, answer.content[0].signature) == ("hmm", "sig")


def test_cache_control_citations_earlier_thinking_and_is_error_are_dropped() -> None:
    cache = {"type": "ephemeral"}
    body = {
        **TOOL_RESULT_REQUEST,
        "system": [{"type": "text", "text": "be brief", "cache_control": cache}],
        "cache_control": cache,
        "service_tier": "auto",
        "thinking": {"type": "disabled"},
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "weather?", "cache_control": cache, "citations": []}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should call the tool", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}, "cache_control": cache},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "down", "is_error": True}],
            },
        ],
    }
    sent = upstream(ingress(body))
    assert sent["system"] == [{"type": "text", "text": "be brief"}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "down"}]},
    ]
    assert not {"cache_control", "service_tier", "thinking"} & set(sent)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        ({"container": "container_011CpZohnwH4vuy7gazohgSP"}, "container"),
        ({"inference_geo": "us"}, "inference_geo"),
        ({"output_config": {"effort": "max"}}, "output_config.effort"),
        ({"mcp_servers": []}, "mcp_servers"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ],
)
def test_fields_modelbus_cannot_honour_are_a_400_naming_them(change: dict[str, Any], param: str) -> None:
    assert rejected({**BASIC_REQUEST, **change}).param == param


PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
FILE_IMAGE = {"type": "image", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}}


@pytest.mark.parametrize(
    ("block", "param"),
    [
        (PDF, "messages[0].content[1]"),
        (FILE_IMAGE, "messages[0].content[1].source"),
        ({"type": "tool_result", "tool_use_id": "t", "content": [PDF]}, "messages[0].content[1].content[0]"),
        ({"type": "tool_use", "id": "t", "name": "f", "input": {}}, "messages[0].content[1]"),
        ({"type": "search_result", "source": "x", "title": "y", "content": []}, "messages[0].content[1].type"),
    ],
)
def test_blocks_modelbus_cannot_carry_are_a_400_naming_them(block: dict[str, Any], param: str) -> None:
    turn = {"role": "user", "content": [{"type": "text", "text": "look"}, block]}
    assert rejected({**BASIC_REQUEST, "messages": [turn]}).param == param


def test_metadata_stop_sequences_and_output_format_reach_the_internal_request() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = ingress(
        {
            **BASIC_REQUEST,
            "metadata": {"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
            "stop_sequences": ["\n\nHuman:"],
            "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
        }
    )
    assert request.user == "13803d75-b4b5-4c3e-b2a2-6f21399b021b"
    assert request.stop == ["\n\nHuman:"]
    assert isinstance(request.response_format, JsonSchemaResponseFormat)
    assert request.response_format.json_schema.schema == schema
    assert request.reasoning_effort == "low"


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("message", [BASIC_MESSAGE, PREFILL_MESSAGE, TOOL_USE_MESSAGE])
def test_a_documented_message_survives_the_trip_through_a_completion(message: dict[str, Any]) -> None:
    completion = anthropic.completion_from_native(encode(message))
    assert json.loads(anthropic.completion_to_native(completion)) == message


def test_a_completion_comes_back_the_same_from_anthropic_s_format() -> None:
    completion = completion_decoder.decode(
        encode(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "claude-sonnet-4-5-20250929",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "Let me look.",
                            "tool_calls": [
                                {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                            ],
                        },
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": {
                    "prompt_tokens": 1000,
                    "completion_tokens": 5,
                    "total_tokens": 1005,
                    "prompt_tokens_details": {"cached_tokens": 900},
                },
            }
        )
    )
    back = anthropic.completion_from_native(anthropic.completion_to_native(completion))
    assert msgspec.structs.replace(back, created=1) == completion


def test_cache_reads_and_cache_writes_come_back_as_they_were_sent() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 900}
    completion = anthropic.completion_from_native(encode({**BASIC_MESSAGE, "usage": usage}))
    back = json.loads(anthropic.completion_to_native(completion))["usage"]
    assert back == usage


def test_a_completion_whose_tool_arguments_are_not_an_object_has_no_native_form() -> None:
    completion = anthropic.completion_from_native(encode(TOOL_USE_MESSAGE))
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    broken = msgspec.structs.replace(call, function=msgspec.structs.replace(call.function, arguments="[1]"))
    message = msgspec.structs.replace(completion.choices[0].message, tool_calls=[broken])
    choice = msgspec.structs.replace(completion.choices[0], message=message)
    with pytest.raises(anthropic.InvalidAnswer):
        anthropic.completion_to_native(msgspec.structs.replace(completion, choices=[choice]))


# ---------------------------------------------------------------- streams


@pytest.mark.parametrize("stream", [BASIC_STREAM, TOOL_STREAM, THINKING_STREAM])
def test_a_documented_stream_read_written_and_read_again_gives_the_same_chunks(stream: list[tuple[str, str]]) -> None:
    chunks = read(stream)
    assert without_created(read(write(chunks))) == without_created(chunks)


def test_the_basic_stream_is_written_back_as_anthropic_s_event_sequence() -> None:
    events = payloads(write(read(BASIC_STREAM)))
    assert [e["type"] for e in events] == [name for name, _ in BASIC_STREAM if name != "ping"]
    assert events[0]["message"]["id"] == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
    assert events[0]["message"]["model"] == "claude-sonnet-4-5-20250929"
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"] == ["Hello", "!"]
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 25, "output_tokens": 15},
    }
    assert events[-1] == {"type": "message_stop"}


def test_a_streamed_tool_call_is_written_back_as_a_tool_use_block_with_json_deltas() -> None:
    events = payloads(write(read(TOOL_STREAM)))
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}},
    ]
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert "".join(e["delta"]["text"] for e in deltas if e["index"] == 0) == "".join(TOOL_TEXT)
    assert [e["delta"]["partial_json"] for e in deltas if e["index"] == 1] == [p for p in TOOL_JSON if p]
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_thinking_is_left_out_of_a_stream_and_the_text_block_comes_first() -> None:
    chunks = read(THINKING_STREAM)
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == "27 * 453 = 12,231"
    starts = [e for e in payloads(write(chunks)) if e["type"] == "content_block_start"]
    assert starts == [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]


def test_parallel_tool_calls_are_written_as_consecutive_tool_use_blocks() -> None:
    def chunk(**delta: Any) -> ChatCompletionChunk:
        return msgspec.convert(
            {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta}]}, ChatCompletionChunk
        )

    calls = [
        chunk(tool_calls=[{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]),
        chunk(tool_calls=[{"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]),
    ]
    events = payloads(write(calls))
    assert [(e["type"], e.get("index")) for e in events[1:-2]] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    with pytest.raises(anthropic.InvalidAnswer):
        write([*calls, chunk(tool_calls=[{"index": 0, "function": {"arguments": " "}}])])


def test_an_error_event_raises_with_anthropic_s_error_type() -> None:
    overloaded = '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    with pytest.raises(anthropic.StreamError) as caught:
        read([*BASIC_STREAM[:4], ("error", overloaded)])
    assert (caught.value.type, caught.value.message) == ("overloaded_error", "Overloaded")
    assert anthropic.ERROR_STATUS[caught.value.type] == 529


def test_a_content_event_before_message_start_breaks_the_protocol() -> None:
    with pytest.raises(anthropic.InvalidAnswer):
        read(BASIC_STREAM[1:])


def test_a_completion_is_read_from_the_documented_answer_with_usage() -> None:
    completion: ChatCompletion = anthropic.completion_from_native(encode(TOOL_USE_MESSAGE))
    (call,) = completion.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}
    assert completion.usage is not None and completion.usage.total_tokens == 561
