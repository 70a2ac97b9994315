"""Ollama's /api/chat format in both directions: the documented examples survive a round trip.

The ``DOC_*`` payloads are the examples of Ollama's API reference
(https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion),
copied as published; only the 3 KB image of the "with images" example is a
1x1 PNG here (same type, same field).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ImagePart,
    ImageURL,
    JsonSchemaFormat,
    JsonSchemaResponseFormat,
    ResponseMessage,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolMessage,
    Usage,
    UserMessage,
    decode_request,
)
from shared.errors import InvalidRequest
from shared.formats import ollama

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The location to get the weather for, e.g. San Francisco, CA",
                },
                "format": {
                    "type": "string",
                    "description": "The format to return the weather in, e.g. 'celsius' or 'fahrenheit'",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location", "format"],
        },
    },
}

# ---------------------------------------------------------------- documented requests

DOC_REQUESTS: dict[str, dict[str, Any]] = {
    "streaming": {"model": "llama3.2", "messages": [{"role": "user", "content": "why is the sky blue?"}]},
    "no streaming": {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "why is the sky blue?"}],
        "stream": False,
    },
    "structured outputs": {
        "model": "llama3.1",
        "messages": [
            {
                "role": "user",
                "content": "Ollama is 22 years old and busy saving the world. "
                "Return a JSON object with the age and availability.",
            }
        ],
        "stream": False,
        "format": {
            "type": "object",
            "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
            "required": ["age", "available"],
        },
        "options": {"temperature": 0},
    },
    "with history": {
        "model": "llama3.2",
        "messages": [
            {"role": "user", "content": "why is the sky blue?"},
            {"role": "assistant", "content": "due to rayleigh scattering."},
            {"role": "user", "content": "how is that different than mie scattering?"},
        ],
    },
    "with images": {
        "model": "llava",
        "messages": [{"role": "user", "content": "what is in this image?", "images": [PNG_B64]}],
    },
    "reproducible outputs": {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Hello!"}],
        "options": {"seed": 101, "temperature": 0},
    },
    "with tools": {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "What is the weather today in Paris?"}],
        "stream": False,
        "tools": [WEATHER_TOOL],
    },
}

# ---------------------------------------------------------------- documented answers

DOC_ANSWERS: dict[str, dict[str, Any]] = {
    "no streaming": {
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
    },
    "structured outputs": {
        "model": "llama3.1",
        "created_at": "2024-12-06T00:46:58.265747Z",
        "message": {"role": "assistant", "content": '{"age": 22, "available": false}'},
        "done_reason": "stop",
        "done": True,
        "total_duration": 2254970291,
        "load_duration": 574751416,
        "prompt_eval_count": 34,
        "prompt_eval_duration": 1502000000,
        "eval_count": 12,
        "eval_duration": 175000000,
    },
    "with images": {
        "model": "llava",
        "created_at": "2023-12-13T22:42:50.203334Z",
        "message": {
            "role": "assistant",
            "content": " The image features a cute, little pig with an angry facial expression. It's wearing a heart"
            " on its shirt and is waving in the air. This scene appears to be part of a drawing or sketching project.",
            "images": None,
        },
        "done": True,
        "total_duration": 1668506709,
        "load_duration": 1986209,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 359682000,
        "eval_count": 83,
        "eval_duration": 1303285000,
    },
    "with tools": {
        "model": "llama3.2",
        "created_at": "2024-07-22T20:33:28.123648Z",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {
                        "name": "get_current_weather",
                        "arguments": {"format": "celsius", "location": "Paris, FR"},
                    }
                }
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
    },
}
DOC_LOAD_ANSWER = {
    "model": "llama3.2",
    "created_at": "2024-09-12T21:17:29.110811Z",
    "message": {"role": "assistant", "content": ""},
    "done_reason": "load",
    "done": True,
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
        "created_at": "2023-08-04T19:22:45.499127Z",
        "done": True,
        "total_duration": 4883583458,
        "load_duration": 1334875,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 342546000,
        "eval_count": 282,
        "eval_duration": 4535599000,
    },
]


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """What of a native answer has an internal counterpart (durations and ``created_at`` do not)."""
    message = answer.get("message") or {}
    return {
        "model": answer["model"],
        "content": message.get("content", ""),
        "tool_calls": [call["function"] for call in message.get("tool_calls") or []],
        "done": answer["done"],
        "done_reason": answer.get("done_reason", "stop"),
        "counts": (answer.get("prompt_eval_count"), answer.get("eval_count")),
    }


def chat(**fields: Any) -> ChatCompletionRequest:
    return decode_request(json.dumps(fields).encode())


# ---------------------------------------------------------------- documented round trips


@pytest.mark.parametrize("name", DOC_REQUESTS)
def test_each_documented_request_survives_the_trip_to_the_internal_request_and_back(name: str) -> None:
    documented = DOC_REQUESTS[name]
    internal = ollama.request_from_native(dumps(documented))
    back = json.loads(ollama.request_to_native(internal, documented["model"]))
    assert back == {**documented, "stream": documented.get("stream", True)}  # absent means true


@pytest.mark.parametrize("name", DOC_ANSWERS)
def test_each_documented_answer_survives_the_trip_to_a_completion_and_back(name: str) -> None:
    documented = DOC_ANSWERS[name]
    completion = ollama.completion_from_native(dumps(documented), "unused")
    back = json.loads(ollama.completion_to_native(completion))
    assert comparable(back) == comparable(documented)
    assert completion.usage is not None
    assert completion.usage.total_tokens == documented["prompt_eval_count"] + documented["eval_count"]


def test_the_documented_stream_survives_the_trip_to_chunks_and_back() -> None:
    cursor = ollama.StreamCursor("unused")
    chunks = [
        c for line in DOC_STREAM for c in ollama.chunks_from_native(ollama.response_from_native(dumps(line)), cursor)
    ]
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == ["The"]
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage == Usage(
        prompt_tokens=26, completion_tokens=282, total_tokens=308
    )
    writer = ollama.NativeStream()
    lines = [json.loads(out) for c in chunks for out in writer.lines(c)] + [json.loads(x) for x in writer.close()]
    assert [comparable(line) for line in lines] == [comparable(line) for line in DOC_STREAM]


def test_the_documented_tool_answer_is_a_tool_call_with_json_string_arguments() -> None:
    completion = ollama.completion_from_native(dumps(DOC_ANSWERS["with tools"]), "unused")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"format": "celsius", "location": "Paris, FR"}


def test_the_documented_load_answer_finishes_with_stop_and_no_usage() -> None:
    completion = ollama.completion_from_native(dumps(DOC_LOAD_ANSWER), "unused")
    assert completion.choices[0].finish_reason == "stop" and completion.usage is None


# ---------------------------------------------------------------- internal round trips


def test_an_internal_request_survives_the_trip_to_ollama_and_back() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="get_current_weather", arguments='{"location":"Paris"}'))
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    request = ChatCompletionRequest(
        model="llama3.2",
        messages=[
            SystemMessage(content="be brief"),
            UserMessage(
                content=[
                    TextPart(text="what is this?"),
                    ImagePart(image_url=ImageURL(url=f"data:image/png;base64,{PNG_B64}")),
                ]
            ),
            AssistantMessage(content=None, tool_calls=[call]),
            ToolMessage(content="22 degrees", tool_call_id="call_1"),
        ],
        tools=chat(messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL]).tools,
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        stop=["\n\n"],
        response_format=JsonSchemaResponseFormat(json_schema=JsonSchemaFormat(name="response", schema=schema)),
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
    )
    assert ollama.request_from_native(ollama.request_to_native(request, "llama3.2")) == request


def test_an_internal_completion_with_a_tool_call_survives_the_trip_to_ollama_and_back() -> None:
    call = ToolCall(id="call_9", function=FunctionCall(name="lookup", arguments='{"q":"sky"}'))
    completion = ChatCompletion(
        id="chatcmpl-1",
        created=1_700_000_000,
        model="llama3.2",
        choices=[Choice(index=0, message=ResponseMessage(content=None, tool_calls=[call]), finish_reason="tool_calls")],
        usage=Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8),
    )
    native = json.loads(ollama.completion_to_native(completion))
    assert native["created_at"] == "2023-11-14T22:13:20Z"
    assert native["done_reason"] == "stop"  # Ollama has no tool_calls reason
    back = ollama.completion_from_native(ollama.completion_to_native(completion), "unused")
    assert back.choices == completion.choices
    assert back.usage == completion.usage


def test_streamed_tool_call_fragments_go_to_ollama_whole_and_come_back_as_one_delta() -> None:
    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id="c", created=1_700_000_000, model="llama3.2", choices=choices, usage=usage)

    first = ToolCallDelta(index=0, id="call_a", type="function", function=FunctionCallDelta(name="f", arguments='{"ci'))
    rest = ToolCallDelta(index=0, function=FunctionCallDelta(arguments='ty": "Oslo"}'))
    internal = [
        chunk([ChunkChoice(index=0, delta=Delta(role="assistant", content="Let me look."))]),
        chunk([ChunkChoice(index=0, delta=Delta(tool_calls=[first]))]),
        chunk([ChunkChoice(index=0, delta=Delta(tool_calls=[rest]))]),
        chunk([ChunkChoice(index=0, delta=Delta(), finish_reason="tool_calls")]),
        chunk([], Usage(prompt_tokens=4, completion_tokens=6, total_tokens=10)),
    ]
    writer = ollama.NativeStream()
    lines = [line for c in internal for line in writer.lines(c)]
    assert writer.close() == []  # the usage chunk already ended it
    assert all(line.endswith(b"\n") for line in lines)
    assert [json.loads(line)["done"] for line in lines] == [False, False, True]
    cursor = ollama.StreamCursor("unused")
    back = [c for line in lines for c in ollama.chunks_from_native(ollama.response_from_native(line), cursor)]
    deltas = [d for c in back for ch in c.choices for d in ch.delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].id == "call_a" and deltas[0].function is not None
    assert json.loads(deltas[0].function.arguments or "") == {"city": "Oslo"}
    assert [ch.finish_reason for c in back for ch in c.choices if ch.finish_reason] == ["tool_calls"]
    assert back[-1].usage == Usage(prompt_tokens=4, completion_tokens=6, total_tokens=10)


def test_a_stream_without_a_usage_chunk_gets_its_done_line_on_close() -> None:
    writer = ollama.NativeStream()
    finish = ChatCompletionChunk(
        id="c", created=0, model="m", choices=[ChunkChoice(index=0, delta=Delta(), finish_reason="length")]
    )
    assert writer.lines(finish) == []
    (line,) = writer.close()
    assert json.loads(line) == {
        "model": "m",
        "created_at": "1970-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
    }
    assert writer.close() == []


# ---------------------------------------------------------------- from Ollama's format: rules


def test_a_request_without_stream_streams_and_asks_for_the_usage_the_done_line_needs() -> None:
    request = ollama.request_from_native(dumps(DOC_REQUESTS["streaming"]))
    assert request.stream is True and request.include_usage is True
    assert ollama.request_from_native(dumps(DOC_REQUESTS["no streaming"])).stream_options is None


def test_runtime_options_are_dropped_and_num_predict_becomes_max_tokens() -> None:
    body = {**DOC_REQUESTS["streaming"], "options": {"num_ctx": 8192, "num_gpu": 1, "num_predict": 100}}
    request = ollama.request_from_native(dumps(body))
    assert request.max_tokens == 100
    assert "num_ctx" not in json.loads(ollama.request_to_native(request, "llama3.2"))["options"]


@pytest.mark.parametrize("limit", [-1, -2])
def test_num_predict_minus_one_or_two_sets_no_limit(limit: int) -> None:
    body = {**DOC_REQUESTS["streaming"], "options": {"num_predict": limit}}
    assert ollama.request_from_native(dumps(body)).max_tokens is None


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"top_k": 20}, "options.top_k"),
        ({"mirostat": 1}, "options.mirostat"),
        ({"temperature": 5}, "options.temperature"),
        ({"stop": "\n"}, "options.stop"),
        ({"num_predict": 0}, "options.num_predict"),
    ],
)
def test_an_option_without_an_equivalent_or_out_of_range_is_a_400_naming_it(
    options: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ollama.request_from_native(dumps({**DOC_REQUESTS["streaming"], "options": options}))
    assert caught.value.param == param
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "llama3.2", "messages": []}, "messages"),  # the documented "load a model" request
        ({"model": "llama3.2", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "llama3.2", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        (
            {"model": "llama3.2", "messages": [{"role": "system", "content": "x", "images": [PNG_B64]}]},
            "messages[0].images",
        ),
        ({**DOC_REQUESTS["streaming"], "format": "yaml"}, "format"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_a_request_the_contract_cannot_express_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ollama.request_from_native(dumps(body))
    assert caught.value.param == param


def test_a_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        ollama.request_from_native(b"{not json")
    assert caught.value.code == "invalid_json"


def test_a_tool_result_without_an_id_answers_the_earliest_open_call_of_its_tool() -> None:
    call = {"function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}}
    body = {
        "model": "llama3.2",
        "messages": [
            {"role": "user", "content": "weather in Paris and Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [call, call]},
            {"role": "tool", "content": "22 degrees", "tool_name": "get_current_weather"},
            {"role": "tool", "content": "-3 degrees", "tool_name": "get_current_weather"},
        ],
    }
    messages = ollama.request_from_native(dumps(body)).messages
    assistant = messages[1]
    assert isinstance(assistant, AssistantMessage) and assistant.content is None
    assert [c.id for c in assistant.tool_calls or []] == ["call_1_0", "call_1_1"]
    assert [m.tool_call_id for m in messages[2:] if isinstance(m, ToolMessage)] == ["call_1_0", "call_1_1"]


def test_a_tool_result_that_answers_no_call_is_a_400_naming_its_tool_name() -> None:
    body = {"model": "m", "messages": [{"role": "tool", "content": "x", "tool_name": "get_time"}]}
    with pytest.raises(InvalidRequest) as caught:
        ollama.request_from_native(dumps(body))
    assert caught.value.param == "messages[0].tool_name"


@pytest.mark.parametrize(
    ("payload", "mime"),
    [
        (PNG_B64, "image/png"),
        ("/9j/4AAQSkZJRg==", "image/jpeg"),
        ("R0lGODlhAQABAAAAACw=", "image/gif"),
        ("AAAA", "application/octet-stream"),
    ],
)
def test_an_image_becomes_a_data_uri_typed_by_its_first_bytes(payload: str, mime: str) -> None:
    body = {"model": "llava", "messages": [{"role": "user", "content": "what?", "images": [payload]}]}
    (message,) = ollama.request_from_native(dumps(body)).messages
    assert isinstance(message, UserMessage) and isinstance(message.content, list)
    image = message.content[1]
    assert isinstance(image, ImagePart) and image.image_url.url == f"data:{mime};base64,{payload}"


def test_keep_alive_think_and_thinking_are_dropped() -> None:
    body = {
        **DOC_REQUESTS["with history"],
        "keep_alive": "5m",
        "think": True,
        "messages": [
            {"role": "assistant", "content": "hi", "thinking": "greet them"},
            {"role": "user", "content": "x"},
        ],
    }
    back = json.loads(ollama.request_to_native(ollama.request_from_native(dumps(body)), "llama3.2"))
    assert "keep_alive" not in back and "think" not in back
    assert back["messages"][0] == {"role": "assistant", "content": "hi"}


def test_tool_arguments_that_are_not_an_object_cannot_go_out_as_an_ollama_answer() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments="[1, 2]"))
    completion = ChatCompletion(
        id="x",
        created=0,
        model="m",
        choices=[Choice(index=0, message=ResponseMessage(content=None, tool_calls=[call]), finish_reason="tool_calls")],
    )
    with pytest.raises(ollama.UnusableAnswer, match="not a JSON object"):
        ollama.completion_to_native(completion)


def test_an_error_goes_out_as_ollamas_error_body() -> None:
    assert json.loads(ollama.error_to_native('model "x" not found')) == {"error": 'model "x" not found'}


# ---------------------------------------------------------------- towards Ollama: answers it cannot use


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"error": "llama runner process has terminated"}', "upstream error in a 200 answer: llama runner"),
        (b'{"model": "x", "message": {"role": "assistant"}}', "malformed answer"),  # no done
        (b"<html>bad gateway</html>", "malformed answer"),
    ],
)
def test_an_error_body_or_a_malformed_line_is_an_unusable_answer_saying_why(body: bytes, reason: str) -> None:
    with pytest.raises(ollama.UnusableAnswer) as caught:
        ollama.response_from_native(body)
    assert str(caught.value).startswith(reason)


def test_a_plain_request_asks_for_nothing_ollama_cannot_honour() -> None:
    assert ollama.unsupported_parameter(chat(messages=[{"role": "user", "content": "x"}], temperature=1)) is None
    assert ollama.unsupported_parameter(chat(messages=[{"role": "user", "content": "x"}], logprobs=True)) == (
        "logprobs",
        "logprobs",
    )
