"""The Gemini format module, both ways, on Google's own documented payloads.

Examples are copied from Google's docs and cookbook:
https://ai.google.dev/gemini-api/docs/function-calling (``schedule_meeting``),
https://ai.google.dev/gemini-api/docs/text-generation?lang=rest (an image as ``inline_data``),
https://github.com/google-gemini/cookbook/blob/main/quickstarts/rest/ (``System_instructions_REST``,
``Function_calling_REST``, ``Streaming_REST``, ``Prompting_REST``) and
https://ai.google.dev/gemini-api/docs/troubleshooting (the 429 body).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from shared.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ImagePart,
    ImageURL,
    PromptTokensDetails,
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
from shared.formats.gemini import (
    ChunkReader,
    ChunkWriter,
    ErrorInAnswer,
    UnusableAnswer,
    call_id,
    completion_from_native,
    completion_to_native,
    error_status,
    error_to_native,
    request_from_native,
    request_to_native,
    retry_delay,
    schema_from_native,
    stream_from_native_array,
)

SIGNATURE = "CiQB0e2Kb+9zQ/4x7d2Qe1Lw0t=="


def enc(value: Any) -> bytes:
    return json.dumps(value).encode()


def dec(body: bytes) -> Any:
    return json.loads(body)


def without_created(value: msgspec.Struct) -> Any:
    builtins: Any = msgspec.to_builtins(value)
    builtins.pop("created")
    return builtins


# ---------------------------------------------------------------- Google's documented requests

NEKO_CHAT: dict[str, Any] = {  # cookbook System_instructions_REST: snake_case, a lone object for "parts"
    "system_instruction": {"parts": {"text": "You are Neko the cat respond like one"}},
    "contents": [
        {"role": "user", "parts": [{"text": "Hello cat."}]},
        {"role": "model", "parts": [{"text": "Meow? 😻 \n"}]},
        {"role": "user", "parts": [{"text": "What is your name? What do like to drink?"}]},
    ],
}

SCHEDULE_MEETING: dict[str, Any] = {  # ai.google.dev function calling, "meeting" example
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "Schedule a meeting with Bob and Alice for 03/27/2025 at 10:00 AM about the Q3 planning."}
            ],
        }
    ],
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "schedule_meeting",
                    "description": "Schedules a meeting with specified attendees at a given time and date.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "attendees": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "List of people attending the meeting.",
                            },
                            "date": {"type": "string", "description": "Date of the meeting (e.g., '2024-07-29')"},
                            "time": {"type": "string", "description": "Time of the meeting (e.g., '15:00')"},
                            "topic": {"type": "string", "description": "The subject or topic of the meeting."},
                        },
                        "required": ["attendees", "date", "time", "topic"],
                    },
                }
            ]
        }
    ],
}

_LOCATION = "The city and state, e.g. San Francisco, CA or a zip code e.g. 95616"
THEATERS_TOOLS: list[dict[str, Any]] = [
    {
        "functionDeclarations": [
            {
                "name": "find_movies",
                "description": "find movie titles currently playing in theaters based on any description, "
                "genre, title words, etc.",
                "parameters": {
                    "type": "OBJECT",
                    "properties": {
                        "location": {"type": "STRING", "description": _LOCATION},
                        "description": {
                            "type": "STRING",
                            "description": "Any kind of description including category or genre, title words, "
                            "attributes, etc.",
                        },
                    },
                    "required": ["description"],
                },
            },
            {
                "name": "find_theaters",
                "description": "find theaters based on location and optionally movie title which are is currently "
                "playing in theaters",
                "parameters": {
                    "type": "OBJECT",
                    "properties": {
                        "location": {"type": "STRING", "description": _LOCATION},
                        "movie": {"type": "STRING", "description": "Any movie title"},
                    },
                    "required": ["location"],
                },
            },
        ]
    }
]
THEATERS: dict[str, Any] = {  # cookbook Function_calling_REST, "calls a language model multiple times"
    "contents": [
        {"role": "user", "parts": [{"text": "Which theaters in Mountain View show Barbie movie?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {
                        "name": "find_theaters",
                        "args": {"location": "Mountain View, CA", "movie": "Barbie"},
                    }
                }
            ],
        },
        {
            "role": "function",
            "parts": [
                {
                    "functionResponse": {
                        "name": "find_theaters",
                        "response": {
                            "name": "find_theaters",
                            "content": {
                                "movie": "Barbie",
                                "theaters": [
                                    {
                                        "name": "AMC Mountain View 16",
                                        "address": "2000 W El Camino Real, Mountain View, CA 94040",
                                    },
                                    {"name": "Regal Edwards 14", "address": "245 Castro St, Mountain View, CA 94040"},
                                ],
                            },
                        },
                    }
                }
            ],
        },
        {
            "role": "model",
            "parts": [
                {
                    "text": " OK. Barbie is showing in two theaters in Mountain View, CA: "
                    "AMC Mountain View 16 and Regal Edwards 14."
                }
            ],
        },
        {"role": "user", "parts": [{"text": "Can we recommend some comedy movies on show in Mountain View?"}]},
    ],
    "tools": THEATERS_TOOLS,
}

INSTRUMENT: dict[str, Any] = {  # ai.google.dev text generation, text and image (the base64 shortened)
    "contents": [
        {
            "parts": [
                {"text": "Tell me about this instrument"},
                {"inline_data": {"mime_type": "image/jpeg", "data": "/9j/4AAQSkZJRgABAQ=="}},
            ]
        }
    ]
}


def test_google_s_system_instruction_chat_example_reads_and_goes_back_in_the_reference_spelling() -> None:
    internal = request_from_native(enc(NEKO_CHAT), model="gemini-2.5-flash")
    assert internal.model == "gemini-2.5-flash"
    assert internal.messages == [
        SystemMessage(content="You are Neko the cat respond like one"),
        UserMessage(content="Hello cat."),
        AssistantMessage(content="Meow? 😻 \n"),
        UserMessage(content="What is your name? What do like to drink?"),
    ]
    assert dec(request_to_native(internal)) == {
        "contents": NEKO_CHAT["contents"],
        "systemInstruction": {"parts": [{"text": "You are Neko the cat respond like one"}]},
    }


def test_google_s_function_calling_example_round_trips_exactly() -> None:
    internal = request_from_native(enc(SCHEDULE_MEETING))
    (tool,) = internal.tools or []
    assert tool.function.name == "schedule_meeting"
    assert tool.function.parameters == SCHEDULE_MEETING["tools"][0]["functionDeclarations"][0]["parameters"]
    assert dec(request_to_native(internal)) == SCHEDULE_MEETING


def test_google_s_multi_turn_function_example_links_the_result_to_its_call_and_round_trips() -> None:
    internal = request_from_native(enc(THEATERS))
    _user, assistant, result, answer, follow_up = internal.messages
    assert isinstance(assistant, AssistantMessage) and isinstance(result, ToolMessage)
    (call,) = assistant.tool_calls or []
    assert result.tool_call_id == call.id and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"location": "Mountain View, CA", "movie": "Barbie"}
    assert json.loads(str(result.content))["content"]["movie"] == "Barbie"
    assert isinstance(answer, AssistantMessage) and isinstance(follow_up, UserMessage)
    # the older "function" role is a user turn; OpenAPI type names come back in lower case
    expected = enc(THEATERS).decode().replace('"function"', '"user"')
    expected = expected.replace('"OBJECT"', '"object"').replace('"STRING"', '"string"')
    assert dec(request_to_native(internal)) == json.loads(expected)


def test_google_s_image_example_in_snake_case_becomes_a_data_uri_and_goes_back_as_inline_data() -> None:
    internal = request_from_native(enc(INSTRUMENT))
    (message,) = internal.messages
    assert message == UserMessage(
        content=[
            TextPart(text="Tell me about this instrument"),
            ImagePart(image_url=ImageURL(url="data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ==")),
        ]
    )
    assert dec(request_to_native(internal))["contents"][0]["parts"] == [
        {"text": "Tell me about this instrument"},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRgABAQ=="}},
    ]


def test_an_internal_request_round_trips_through_gemini_s_format() -> None:
    call = ToolCall(
        id=call_id(None, 0, "get_weather", '{"city":"Oslo"}', None),
        function=FunctionCall(name="get_weather", arguments='{"city":"Oslo"}'),
    )
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": "checking", "tool_calls": [msgspec.to_builtins(call)]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c":-4}'},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 256,
        "stop": ["END"],
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "reasoning_effort": "medium",
        "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}},
    }
    original = decode_request(enc(body))
    assert request_from_native(request_to_native(original)) == original


# ---------------------------------------------------------------- Google's documented answers

THEATERS_ANSWER: dict[str, Any] = {  # cookbook Function_calling_REST, the reply to THEATERS
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "functionCall": {
                            "name": "find_movies",
                            "args": {"location": "Mountain View, CA", "description": "comedy"},
                        }
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
            ],
        }
    ],
    "promptFeedback": {
        "safetyRatings": [
            {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        ]
    },
}

SORT_ANSWER: dict[str, Any] = {  # cookbook Prompting_REST, first prompt
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "text": "```python\n# Example list to be sorted\nmy_list = [5, 3, 1, 2, 4]\n\n"
                        "# Sort the list in ascending order using the sort() method\nmy_list.sort()\n\n"
                        "# Print the sorted list\nprint(my_list)\n```\n\nOutput:\n\n```\n[1, 2, 3, 4, 5]\n```"
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"}],
        }
    ],
    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 87, "totalTokenCount": 96},
}


def _unrated(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's candidates without the safety ratings modelbus does not carry."""
    return [{k: v for k, v in c.items() if k != "safetyRatings"} for c in answer["candidates"]]


def test_google_s_function_call_answer_becomes_a_tool_call_and_goes_back_as_the_same_candidate() -> None:
    completion = completion_from_native(enc(THEATERS_ANSWER), "gemini-pro")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "find_movies"
    assert json.loads(call.function.arguments) == {"location": "Mountain View, CA", "description": "comedy"}
    back = dec(completion_to_native(completion))
    assert back["candidates"] == _unrated(THEATERS_ANSWER)
    assert back["modelVersion"] == "gemini-pro" and "promptFeedback" not in back


def test_google_s_text_answer_and_its_usage_round_trip() -> None:
    completion = completion_from_native(enc(SORT_ANSWER), "gemini-pro")
    assert completion.choices[0].message.content == SORT_ANSWER["candidates"][0]["content"]["parts"][0]["text"]
    assert completion.usage == Usage(prompt_tokens=9, completion_tokens=87, total_tokens=96)
    back = dec(completion_to_native(completion))
    assert back["candidates"] == _unrated(SORT_ANSWER)
    assert back["usageMetadata"] == SORT_ANSWER["usageMetadata"]


def test_a_completion_with_reasoning_cached_tokens_and_a_signed_call_round_trips() -> None:
    signed = call_id("r1", 0, "check_flight", '{"flight":"AA100"}', SIGNATURE)
    completion = ChatCompletion(
        id="chatcmpl-r1",
        created=1,
        model="gemini-3-pro",
        choices=[
            Choice(
                index=0,
                message=ResponseMessage(
                    content="Checking.",
                    tool_calls=[
                        ToolCall(id=signed, function=FunctionCall(name="check_flight", arguments='{"flight":"AA100"}'))
                    ],
                ),
                finish_reason="tool_calls",
            )
        ],
        usage=Usage(
            prompt_tokens=50,
            completion_tokens=110,
            total_tokens=160,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=4),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=100),
        ),
    )
    native = completion_to_native(completion)
    assert dec(native)["candidates"][0]["content"]["parts"][1]["thoughtSignature"] == SIGNATURE
    assert dec(native)["usageMetadata"]["candidatesTokenCount"] == 10
    assert without_created(completion_from_native(native, "other")) == without_created(completion)


STREAM_EVENTS: list[dict[str, Any]] = [  # cookbook Streaming_REST: the first two events (ratings left out)
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "In the quaint, sunlit cottage nestled amidst a lush meadow, resided two feline"}
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ]
    },
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {
                            "text": " companions named Mittens and Whiskers. Mittens, with her silky black fur and "
                            "piercing green eyes, possessed an air of elegance and mystery. Whiskers,"
                        }
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ]
    },
]


def test_google_s_stream_events_become_chunks_and_go_back_as_the_same_candidates() -> None:
    reader = ChunkReader("gemini-pro")
    chunks = [reader.feed(enc(event)) for event in STREAM_EVENTS]
    assert [c.choices[0].delta.content for c in chunks if c] == [
        e["candidates"][0]["content"]["parts"][0]["text"] for e in STREAM_EVENTS
    ]
    writer = ChunkWriter()
    events = [event for chunk in chunks if chunk for event in writer.feed(chunk)] + writer.close()
    assert [dec(event)["candidates"] for event in events] == [e["candidates"] for e in STREAM_EVENTS]


def test_a_gemini_stream_read_written_and_read_again_gives_the_same_chunks() -> None:
    events = [
        {"candidates": [{"content": {"parts": [{"text": "Checking "}], "role": "model"}}], "responseId": "r9"},
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {
                                "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                                "thoughtSignature": SIGNATURE,
                            }
                        ],
                        "role": "model",
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 30,
                "candidatesTokenCount": 12,
                "totalTokenCount": 50,
                "thoughtsTokenCount": 8,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "r9",
        },
    ]
    first = ChunkReader("m")
    chunks = [c for c in (first.feed(enc(e)) for e in events) if c] + [first.usage_chunk()]
    writer = ChunkWriter()
    again = ChunkReader("m")
    written = [e for c in chunks if c for e in writer.feed(c)] + writer.close()
    rechunked = [c for c in (again.feed(e) for e in written) if c] + [again.usage_chunk()]
    assert [without_created(c) for c in rechunked if c] == [without_created(c) for c in chunks if c]


def test_a_stream_sent_as_one_json_array_reads_like_the_events() -> None:
    items = stream_from_native_array(enc(STREAM_EVENTS))
    assert len(items) == 2 and items[1].candidates[0].finish_reason == "STOP"
    assert len(stream_from_native_array(enc(STREAM_EVENTS[0]))) == 1


RATE_LIMITED: dict[str, Any] = {  # ai.google.dev troubleshooting, a 429
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "x"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
        ],
    }
}


def test_google_s_429_body_gives_its_retry_delay_and_is_written_back_with_it() -> None:
    status = error_status(enc(RATE_LIMITED))
    assert status is not None and retry_delay(status) == 37.0
    back = dec(error_to_native(429, status.message, retry_after=retry_delay(status)))
    assert back == {"error": {**RATE_LIMITED["error"], "details": [RATE_LIMITED["error"]["details"][1]]}}


# ---------------------------------------------------------------- answers that cannot be used


def test_an_error_object_a_failed_call_and_an_empty_answer_each_raise_their_own_error() -> None:
    with pytest.raises(ErrorInAnswer) as caught:
        completion_from_native(enc([{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]), "m")
    assert caught.value.status.code == 503
    with pytest.raises(UnusableAnswer, match="MALFORMED_FUNCTION_CALL: bad call"):
        completion_from_native(
            enc({"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL", "finishMessage": "bad call"}]}), "m"
        )
    with pytest.raises(UnusableAnswer, match="no candidates"):
        completion_from_native(b"{}", "m")
    with pytest.raises(msgspec.MsgspecError):
        completion_from_native(b'{"candidates": "nope"}', "m")


# ---------------------------------------------------------------- serving: what a client may send


def _request(**fields: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **fields}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_request(generationConfig={"topK": 10}), "generationConfig.topK"),
        (_request(generationConfig={"temperature": 3}), "generationConfig.temperature"),
        (_request(generationConfig={"candidateCount": 2}), "generationConfig.candidateCount"),
        (_request(generationConfig={"responseMimeType": "text/x.enum"}), "generationConfig.responseMimeType"),
        (_request(cachedContent="cachedContents/abc"), "cachedContent"),
        (_request(tools=[{"googleSearch": {}}]), "tools[0].googleSearch"),
        (
            _request(
                tools=[{"functionDeclarations": [{"name": "a"}, {"name": "b"}]}],
                toolConfig={"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["a", "b"]}},
            ),
            "toolConfig.functionCallingConfig.allowedFunctionNames",
        ),
        (
            {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
            "contents[0].parts[0].functionResponse.name",
        ),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "audio/mp3", "data": "AAAA"}}]}]},
            "contents[0].parts[0].inlineData.mimeType",
        ),
        ({"contents": [{"parts": [{"executableCode": {"code": "1"}}]}]}, "contents[0].parts[0]"),
        ({"contents": [{"role": "robot", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": []}, "contents"),
    ],
)
def test_what_has_no_internal_counterpart_is_a_400_naming_the_native_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request_from_native(enc(body))
    assert caught.value.param == param


def test_a_body_that_is_not_json_is_a_400_invalid_json() -> None:
    with pytest.raises(InvalidRequest) as caught:
        request_from_native(b"{contents")
    assert caught.value.code == "invalid_json"


def test_safety_settings_and_thoughts_are_dropped_and_a_stream_asks_for_usage() -> None:
    body = _request(
        safetySettings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        generationConfig={"thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}},
    )
    body["contents"].append({"role": "model", "parts": [{"text": "pondering", "thought": True}]})
    internal = request_from_native(enc(body), stream=True)
    assert internal.messages == [UserMessage(content="hi")]
    assert internal.reasoning_effort == "medium"
    assert internal.stream and internal.include_usage


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"thinkingBudget": 0}, "minimal"),
        ({"thinkingBudget": 1024}, "low"),
        ({"thinkingBudget": 24576}, "high"),
        ({"thinkingBudget": -1}, None),
        ({"thinkingLevel": "high"}, "high"),
    ],
)
def test_a_thinking_budget_becomes_the_nearest_reasoning_effort(thinking: dict[str, Any], effort: str | None) -> None:
    internal = request_from_native(enc(_request(generationConfig={"thinkingConfig": thinking})))
    assert internal.reasoning_effort == effort


def test_a_response_schema_becomes_a_json_schema_format_and_json_mode_a_json_object_format() -> None:
    schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER", "nullable": True}}, "propertyOrdering": ["n"]}
    internal = request_from_native(
        enc(_request(generationConfig={"responseMimeType": "application/json", "responseSchema": schema}))
    )
    assert msgspec.to_builtins(internal.response_format) == {
        "type": "json_schema",
        "json_schema": {
            "name": "response",
            "schema": {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}},
        },
    }
    plain = request_from_native(enc(_request(generationConfig={"responseMimeType": "application/json"})))
    assert msgspec.to_builtins(plain.response_format) == {"type": "json_object"}


def test_a_gemini_schema_becomes_json_schema_with_examples_and_integer_counts() -> None:
    schema = {"type": "ARRAY", "items": {"type": "STRING", "example": "a"}, "minItems": "1", "maxItems": "3"}
    assert schema_from_native(schema) == {
        "type": "array",
        "items": {"type": "string", "examples": ["a"]},
        "minItems": 1,
        "maxItems": 3,
    }


def test_a_function_response_with_an_id_answers_the_call_with_that_id() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "two lookups"}]},
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "lookup", "args": {"q": "a"}, "id": "c-1"}},
                    {"functionCall": {"name": "lookup", "args": {"q": "b"}, "id": "c-2"}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "lookup", "response": {"output": "B"}, "id": "c-2"}},
                    {"functionResponse": {"name": "lookup", "response": {"output": "A"}}},
                ],
            },
        ]
    }
    messages = request_from_native(enc(body)).messages
    assert messages[2:] == [ToolMessage(tool_call_id="c-2", content="B"), ToolMessage(tool_call_id="c-1", content="A")]


# ---------------------------------------------------------------- serving: what goes back


def _chunk(delta: Delta, finish: Any = None, usage: Usage | None = None) -> ChatCompletionChunk:
    choices = [ChunkChoice(index=0, delta=delta, finish_reason=finish)] if delta is not None else []
    return ChatCompletionChunk(id="chatcmpl-s1", created=1, model="gpt-4o", choices=choices, usage=usage)


def test_streamed_call_fragments_go_out_as_one_whole_function_call_with_the_finish_reason() -> None:
    signed = call_id("s1", 0, "get_weather", '{"city":"Oslo"}', SIGNATURE)
    writer = ChunkWriter()
    start = ToolCallDelta(
        index=0, id=signed, type="function", function=FunctionCallDelta(name="get_weather", arguments='{"ci')
    )
    rest = ToolCallDelta(index=0, function=FunctionCallDelta(arguments='ty":"Oslo"}'))
    events = writer.feed(_chunk(Delta(role="assistant", content="Checking.")))
    events += writer.feed(_chunk(Delta(tool_calls=[start])))
    events += writer.feed(_chunk(Delta(tool_calls=[rest]), "tool_calls"))
    events += writer.feed(
        ChatCompletionChunk(
            id="chatcmpl-s1",
            created=1,
            model="gpt-4o",
            choices=[],
            usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        )
    )
    events += writer.close()
    assert [dec(e) for e in events] == [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Checking."}]}, "index": 0}],
            "modelVersion": "gpt-4o",
            "responseId": "s1",
        },
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {
                                "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                                "thoughtSignature": SIGNATURE,
                            }
                        ],
                    },
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "modelVersion": "gpt-4o",
            "responseId": "s1",
        },
        {
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7},
            "modelVersion": "gpt-4o",
            "responseId": "s1",
        },
    ]


def test_a_call_whose_arguments_are_not_an_object_finishes_malformed_as_gemini_would() -> None:
    bad = ToolCallDelta(index=0, id="call_x", type="function", function=FunctionCallDelta(name="f", arguments="{oops"))
    writer = ChunkWriter()
    assert writer.feed(_chunk(Delta(tool_calls=[bad]))) == []
    (event,) = writer.close()
    candidate = dec(event)["candidates"][0]
    assert (
        candidate["finishReason"] == "MALFORMED_FUNCTION_CALL"
        and candidate["finishMessage"] == "Malformed function call: f"
    )
    assert "parts" not in candidate["content"]


@pytest.mark.parametrize(
    ("finish", "native"), [("stop", "STOP"), ("length", "MAX_TOKENS"), ("content_filter", "SAFETY")]
)
def test_finish_reasons_go_back_as_gemini_s(finish: Any, native: str) -> None:
    completion = ChatCompletion(
        id="chatcmpl-1",
        created=1,
        model="m",
        choices=[Choice(index=0, message=ResponseMessage(content="x"), finish_reason=finish)],
    )
    assert dec(completion_to_native(completion))["candidates"][0]["finishReason"] == native


def test_an_error_without_a_retry_hint_has_no_details_and_google_s_status_name() -> None:
    assert dec(error_to_native(404, "no such model")) == {
        "error": {"code": 404, "message": "no such model", "status": "NOT_FOUND"}
    }
