"""Client-facing chat messages: what a caller's JSON becomes, and what it gets back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaResponseFormat,
    ResponseMessage,
    ToolCall,
    ToolChoiceFunction,
    ToolMessage,
    Usage,
    decode_request,
    encoder,
)
from shared.errors import InvalidRequest

USER_HI: dict[str, Any] = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    """A request body with one user message plus ``fields``."""
    return json.dumps({"messages": [USER_HI], **fields}).encode()


def round_trip(raw: bytes) -> ChatCompletionRequest:
    """Decode, encode, decode again; the two decodes must be equal."""
    first = decode_request(raw)
    second = decode_request(encoder.encode(first))
    assert second == first
    return second


def rejection(raw: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        decode_request(raw)
    return caught.value


# ---------------------------------------------------------------- round trips


def test_plain_text_request_survives_a_round_trip() -> None:
    req = round_trip(body(model="fast", temperature=0.5, max_tokens=10, seed=7, user="u1"))
    assert req.model == "fast"
    assert req.temperature == 0.5
    assert req.output_token_limit == 10


def test_user_message_with_text_and_image_parts_survives_a_round_trip() -> None:
    raw = json.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is in this picture?"},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "data:image/png;base64,iVBORw0KGgo=",
                                "detail": "high",
                            },
                        },
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    ],
                }
            ]
        }
    ).encode()
    req = round_trip(raw)
    parts = req.messages[0].content
    assert isinstance(parts, list)
    assert isinstance(parts[1], ImagePart)
    assert parts[1].image_url.url.startswith("data:image/png")
    assert parts[1].image_url.detail == "high"
    assert isinstance(parts[2], ImagePart) and parts[2].image_url.detail is None


def test_assistant_tool_calls_and_tool_results_survive_a_round_trip() -> None:
    raw = json.dumps(
        {
            "messages": [
                {"role": "system", "content": "use tools"},
                {"role": "developer", "content": [{"type": "text", "text": "be terse"}]},
                USER_HI,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ]
        }
    ).encode()
    req = round_trip(raw)
    assistant = req.messages[3]
    assert assistant.content is None
    assert assistant.tool_calls == [ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments='{"q": "x"}'))]
    tool = req.messages[4]
    assert isinstance(tool, ToolMessage)
    assert tool.tool_call_id == "call_1"
    assert tool.content == "42"


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            "strict": True,
        },
    }
]


@pytest.mark.parametrize("choice", ["none", "auto", "required"])
def test_tools_with_a_named_tool_choice_survive_a_round_trip(choice: str) -> None:
    req = round_trip(body(tools=TOOLS, tool_choice=choice, parallel_tool_calls=False))
    assert req.tool_choice == choice
    assert req.tools is not None and req.tools[0].function.parameters == TOOLS[0]["function"]["parameters"]


def test_a_forced_function_tool_choice_survives_a_round_trip() -> None:
    forced = {"type": "function", "function": {"name": "lookup"}}
    req = round_trip(body(tools=TOOLS, tool_choice=forced))
    assert isinstance(req.tool_choice, ToolChoiceFunction)
    assert req.tool_choice.function.name == "lookup"
    assert json.loads(encoder.encode(req))["tool_choice"] == forced


def test_json_object_response_format_survives_a_round_trip() -> None:
    req = round_trip(body(response_format={"type": "json_object"}))
    assert isinstance(req.response_format, JsonObjectFormat)
    assert json.loads(encoder.encode(req))["response_format"] == {"type": "json_object"}


def test_json_schema_response_format_survives_a_round_trip() -> None:
    fmt: dict[str, Any] = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "description": "the answer",
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "strict": True,
        },
    }
    req = round_trip(body(response_format=fmt))
    assert isinstance(req.response_format, JsonSchemaResponseFormat)
    assert req.response_format.json_schema.schema == fmt["json_schema"]["schema"]
    assert json.loads(encoder.encode(req))["response_format"] == fmt


@pytest.mark.parametrize("stop", ["END", ["END", "\n\n"]])
def test_stop_as_a_string_or_a_list_survives_a_round_trip(stop: str | list[str]) -> None:
    assert round_trip(body(stop=stop)).stop == stop


def test_stream_options_survive_a_round_trip_and_ask_for_usage() -> None:
    req = round_trip(body(stream=True, stream_options={"include_usage": True}))
    assert req.stream is True
    assert req.include_usage is True


def test_streaming_without_stream_options_does_not_ask_for_usage() -> None:
    assert round_trip(body(stream=True)).include_usage is False


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert round_trip(body(max_tokens=10, max_completion_tokens=20)).output_token_limit == 20


# ---------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("fields", "param", "reason"),
    [
        ({"temperature": 3}, "temperature", "<= 2.0"),
        ({"temperature": -0.1}, "temperature", ">= 0.0"),
        ({"top_p": 1.5}, "top_p", "<= 1.0"),
        ({"max_tokens": 0}, "max_tokens", ">= 1"),
        ({"n": 2}, "n", "<= 1"),
        ({"stream": "yes"}, "stream", "Expected `bool`"),
        ({"tool_choice": "maybe"}, "tool_choice", "'maybe'"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "'xml'"),
        ({"stop": 5}, "stop", "Expected"),
    ],
)
def test_an_invalid_parameter_is_rejected_naming_the_field_and_the_reason(
    fields: dict[str, Any], param: str, reason: str
) -> None:
    err = rejection(body(**fields))
    assert err.param == param
    assert err.code == "invalid_field"
    assert err.http_status == 400
    assert err.message.startswith(f"{param}: ")
    assert reason in err.message


def test_message_content_of_the_wrong_type_is_rejected_naming_its_path() -> None:
    err = rejection(b'{"messages": [{"role": "user", "content": 5}]}')
    assert err.param == "messages[0].content"
    assert "Expected `str | array`, got `int`" in err.message


def test_an_unsupported_content_part_is_rejected_naming_its_path() -> None:
    raw = json.dumps({"messages": [{"role": "user", "content": [{"type": "input_audio", "x": 1}]}]})
    err = rejection(raw.encode())
    assert err.param == "messages[0].content[0].type"
    assert "'input_audio'" in err.message


def test_a_later_message_is_named_by_its_index() -> None:
    raw = json.dumps({"messages": [USER_HI, {"role": "assistant", "content": 1}]})
    assert rejection(raw.encode()).param == "messages[1].content"


def test_malformed_json_is_rejected_as_invalid_json() -> None:
    err = rejection(b'{"messages": [')
    assert err.code == "invalid_json"
    assert err.http_status == 400
    assert "not valid JSON" in err.message


def test_a_body_that_is_not_an_object_is_rejected() -> None:
    assert rejection(b"[]").code == "invalid_field"


def test_an_unknown_top_level_field_is_rejected_naming_the_field() -> None:
    err = rejection(body(temprature=0.2))
    assert err.code == "invalid_field"
    assert "temprature" in err.message


def test_an_unknown_top_level_field_is_named_in_param() -> None:
    assert rejection(body(temprature=0.2)).param == "temprature"


def test_a_missing_required_field_is_named_in_param() -> None:
    err = rejection(b'{"messages": [{"role": "tool", "content": "42"}]}')
    assert err.param == "messages[0].tool_call_id"


def test_a_missing_required_field_is_named_in_the_message() -> None:
    err = rejection(b'{"messages": [{"role": "tool", "content": "42"}]}')
    assert "tool_call_id" in err.message
    assert err.param is not None and err.param.startswith("messages[0]")


def test_an_empty_conversation_is_rejected() -> None:
    err = rejection(b'{"messages": []}')
    assert err.param == "messages"
    assert "length >= 1" in err.message


def test_a_request_without_messages_is_rejected() -> None:
    err = rejection(b'{"model": "fast"}')
    assert "messages" in err.message


def test_an_unknown_role_is_rejected_naming_the_role() -> None:
    err = rejection(b'{"messages": [{"role": "robot", "content": "beep"}]}')
    assert err.param == "messages[0].role"
    assert "'robot'" in err.message


# ---------------------------------------------------------------- responses


def tool_call() -> ToolCall:
    return ToolCall(id="call_1", function=FunctionCall(name="lookup", arguments='{"q":"x"}'))


def test_a_completion_encodes_with_object_and_assistant_role() -> None:
    completion = ChatCompletion(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[Choice(index=0, message=ResponseMessage(content="hello"), finish_reason="stop")],
        usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    )
    out = json.loads(encoder.encode(completion))
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {
        "content": "hello",
        "role": "assistant",
        "tool_calls": None,
        "refusal": None,
    }
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def test_a_tool_only_completion_encodes_content_as_null_not_missing() -> None:
    completion = ChatCompletion(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[
            Choice(
                index=0,
                message=ResponseMessage(content=None, tool_calls=[tool_call()]),
                finish_reason="tool_calls",
            )
        ],
    )
    message = json.loads(encoder.encode(completion))["choices"][0]["message"]
    assert "content" in message and message["content"] is None
    assert message["role"] == "assistant"
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q":"x"}'},
        }
    ]


def test_a_chunk_encodes_with_object_and_only_the_delta_fields_set() -> None:
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[ChunkChoice(index=0, delta=Delta(role="assistant", content="Hel"))],
    )
    out = json.loads(encoder.encode(chunk))
    assert out["object"] == "chat.completion.chunk"
    assert out["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert out["choices"][0]["finish_reason"] is None


def test_a_usage_chunk_encodes_with_no_choices() -> None:
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[],
        usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
    )
    out = json.loads(encoder.encode(chunk))
    assert out["object"] == "chat.completion.chunk"
    assert out["choices"] == []
    assert out["usage"]["total_tokens"] == 7
