"""Bedrock Converse both ways, on the examples AWS documents.

The native payloads are copied from AWS's user guide: "Call a tool with the Converse API"
(https://docs.aws.amazon.com/bedrock/latest/userguide/tool-use-inference-call.html, steps 1-4) and
"Use the Converse API" (https://docs.aws.amazon.com/bedrock/latest/userguide/conversation-inference-call.html:
the messages, system and inferenceConfig examples, the Converse response and the partial
ConverseStream response). A round trip is native -> internal -> native (what an HTTP edge would
accept and an adapter would send) or the reverse; where a documented rule loses something, the
test says which.
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
    ImagePart,
    SystemMessage,
    TextPart,
    ToolChoiceFunction,
    ToolMessage,
    UserMessage,
    decode_request,
)
from shared.errors import InvalidRequest
from shared.formats import bedrock

MODEL = "anthropic.claude-3-sonnet-20240229-v1:0"

TOP_SONG_TOOL: dict[str, Any] = {
    "toolSpec": {
        "name": "top_song",
        "description": "Get the most popular song played on a radio station.",
        "inputSchema": {
            "json": {
                "type": "object",
                "properties": {
                    "sign": {
                        "type": "string",
                        "description": "The call sign for the radio station for which you want the most popular "
                        "song. Example calls signs are WZPZ and WKRP.",
                    }
                },
                "required": ["sign"],
            }
        },
    }
}
# Tool use, step 1: the tool definition, the user message and a forced tool choice.
TOOL_REQUEST: dict[str, Any] = {
    "messages": [{"role": "user", "content": [{"text": "What is the most popular song on WZPZ?"}]}],
    "toolConfig": {"tools": [TOP_SONG_TOOL], "toolChoice": {"tool": {"name": "top_song"}}},
}
# Use the Converse API: the messages, system and inferenceConfig examples.
CONVERSATION_REQUEST: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": [{"text": "Create a list of 3 pop songs."}]},
        {
            "role": "assistant",
            "content": [
                {
                    "text": "Here is a list of 3 pop songs by artists from the United Kingdom:\n\n"
                    '1. "As It Was" by Harry Styles\n2. "Easy On Me" by Adele\n3. "Unholy" by Sam Smith and Kim Petras'
                }
            ],
        },
    ],
    "system": [
        {
            "text": "You are an app that creates play lists for a radio station that plays rock and pop music. "
            "Only return song names and the artist. "
        }
    ],
    "inferenceConfig": {"temperature": 0.5},
}
# Tool use, step 2: the model asks for the tool.
TOOL_USE_ANSWER: dict[str, Any] = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {
                    "toolUse": {
                        "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                        "name": "top_song",
                        "input": {"sign": "WZPZ"},
                    }
                }
            ],
        }
    },
    "stopReason": "tool_use",
}
# Tool use, step 3: the tool's result, and the same call failing.
TOOL_RESULT: dict[str, Any] = {
    "role": "user",
    "content": [
        {
            "toolResult": {
                "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                "content": [{"json": {"song": "Elemental Hotel", "artist": "8 Storey Hike"}}],
            }
        }
    ],
}
TOOL_ERROR: dict[str, Any] = {
    "role": "user",
    "content": [
        {
            "toolResult": {
                "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                "content": [{"text": "Station WZPA not found."}],
                "status": "error",
            }
        }
    ],
}
# Tool use, step 4: the final answer.
FINAL_ANSWER: dict[str, Any] = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [{"text": "The most popular song on WZPZ is Elemental Hotel by 8 Storey Hike."}],
        }
    },
    "stopReason": "end_turn",
}
# Use the Converse API: the Converse response.
TEXT_ANSWER: dict[str, Any] = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {
                    "text": "Here is a list of 3 pop songs by artists from the United Kingdom:\n\n1. "
                    '"Wannabe" by Spice Girls\n2. "Bitter Sweet Symphony" by The Verve \n3. '
                    '"Don\'t Look Back in Anger" by Oasis'
                }
            ],
        }
    },
    "stopReason": "end_turn",
    "usage": {"inputTokens": 125, "outputTokens": 60, "totalTokens": 185},
    "metrics": {"latencyMs": 1175},
}
# Use the Converse API: the partial ConverseStream response.
STREAM_EXAMPLE: list[tuple[str, dict[str, Any]]] = [
    ("messageStart", {"role": "assistant"}),
    ("contentBlockDelta", {"delta": {"text": ""}, "contentBlockIndex": 0}),
    ("contentBlockDelta", {"delta": {"text": " Title"}, "contentBlockIndex": 0}),
    ("contentBlockDelta", {"delta": {"text": ":"}, "contentBlockIndex": 0}),
    ("contentBlockDelta", {"delta": {"text": " The"}, "contentBlockIndex": 0}),
    ("messageStop", {"stopReason": "max_tokens"}),
    (
        "metadata",
        {"usage": {"inputTokens": 47, "outputTokens": 20, "totalTokens": 67}, "metrics": {"latencyMs": 100.0}},
    ),
]


def encoded(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def through_internal(native: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    request = bedrock.request_from_native(encoded(native), MODEL, stream=stream)
    return dict(json.loads(bedrock.request_to_native(request)))


def decode_stream(events: list[tuple[str, dict[str, Any]]]) -> list[ChatCompletionChunk]:
    decoder = bedrock.StreamDecoder("chatcmpl-1", MODEL)
    return [chunk for name, payload in events for chunk in decoder.chunks(name, encoded(payload))]


def encode_stream(chunks: list[ChatCompletionChunk], latency_ms: float) -> list[tuple[str, dict[str, Any]]]:
    encoder = bedrock.StreamEncoder()
    events = [event for chunk in chunks for event in encoder.events(chunk, latency_ms=latency_ms)]
    return [(name, json.loads(payload)) for name, payload in events]


# ---------------------------------------------------------------- requests


def test_the_documented_tool_use_request_round_trips_through_the_internal_contract() -> None:
    request = bedrock.request_from_native(encoded(TOOL_REQUEST), MODEL)
    assert request.model == MODEL
    assert request.messages == [UserMessage(content="What is the most popular song on WZPZ?")]
    assert request.tools is not None and request.tools[0].function.name == "top_song"
    assert request.tools[0].function.parameters == TOP_SONG_TOOL["toolSpec"]["inputSchema"]["json"]
    assert isinstance(request.tool_choice, ToolChoiceFunction) and request.tool_choice.function.name == "top_song"
    assert through_internal(TOOL_REQUEST) == TOOL_REQUEST


def test_the_documented_conversation_with_system_prompt_and_temperature_round_trips() -> None:
    request = bedrock.request_from_native(encoded(CONVERSATION_REQUEST), MODEL)
    assert isinstance(request.messages[0], SystemMessage)
    assert isinstance(request.messages[2], AssistantMessage) and request.messages[2].content is not None
    assert request.temperature == 0.5
    assert through_internal(CONVERSATION_REQUEST) == CONVERSATION_REQUEST


def test_the_documented_tool_results_become_tool_messages_with_json_as_its_text() -> None:
    native = {"messages": [TOOL_REQUEST["messages"][0], TOOL_USE_ANSWER["output"]["message"], TOOL_RESULT]}
    request = bedrock.request_from_native(encoded(native), MODEL)
    call_turn, result = request.messages[1], request.messages[2]
    assert isinstance(call_turn, AssistantMessage) and call_turn.tool_calls is not None
    assert json.loads(call_turn.tool_calls[0].function.arguments) == {"sign": "WZPZ"}
    assert isinstance(result, ToolMessage) and result.tool_call_id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert isinstance(result.content, str)
    assert json.loads(result.content) == {"song": "Elemental Hotel", "artist": "8 Storey Hike"}
    back = through_internal(native)
    assert back["messages"][:2] == native["messages"][:2]
    # By rule, a json result comes back as its JSON text.
    assert back["messages"][2]["content"][0]["toolResult"]["content"] == [{"text": result.content}]


def test_a_failed_tool_result_keeps_its_text_and_drops_the_error_status_by_rule() -> None:
    request = bedrock.request_from_native(encoded({"messages": [TOOL_ERROR]}), MODEL)
    assert request.messages == [
        ToolMessage(tool_call_id="tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", content="Station WZPA not found.")
    ]
    back = through_internal({"messages": [TOOL_ERROR]})
    assert "status" not in back["messages"][0]["content"][0]["toolResult"]


def test_an_internal_conversation_survives_a_trip_through_converse() -> None:
    original = decode_request(
        encoded(
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is on WZPZ, and in this picture?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        ],
                    },
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t1",
                                "type": "function",
                                "function": {"name": "top_song", "arguments": '{"sign":"WZPZ"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "t1", "content": "Elemental Hotel"},
                    {"role": "user", "content": "Thanks"},
                ],
                "tools": [{"type": "function", "function": {"name": "top_song", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "temperature": 0.2,
                "top_p": 0.9,
                "max_completion_tokens": 300,
                "stop": ["END"],
                "metadata": {"team": "search"},
            }
        )
    )
    back = bedrock.request_from_native(bedrock.request_to_native(original), MODEL)
    assert back == original


def test_the_default_output_cap_applies_only_when_the_request_sets_none() -> None:
    request = bedrock.request_from_native(encoded(TOOL_REQUEST), MODEL)
    assert json.loads(bedrock.request_to_native(request, default_max_tokens=1024))["inferenceConfig"] == {
        "maxTokens": 1024
    }
    capped = bedrock.request_from_native(encoded({**TOOL_REQUEST, "inferenceConfig": {"maxTokens": 50}}), MODEL)
    assert json.loads(bedrock.request_to_native(capped, default_max_tokens=1024))["inferenceConfig"] == {
        "maxTokens": 50
    }


def test_a_converse_stream_request_asks_for_usage_as_converse_stream_always_reports_it() -> None:
    request = bedrock.request_from_native(encoded(TOOL_REQUEST), MODEL, stream=True)
    assert request.stream and request.include_usage


def test_an_image_block_becomes_a_data_uri_and_back() -> None:
    native = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"text": "What's in this image?"},
                    {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}},
                ],
            }
        ]
    }
    request = bedrock.request_from_native(encoded(native), MODEL)
    turn = request.messages[0]
    assert isinstance(turn, UserMessage) and isinstance(turn.content, list)
    assert turn.content[0] == TextPart(text="What's in this image?")
    assert isinstance(turn.content[1], ImagePart) and turn.content[1].image_url.url == "data:image/jpeg;base64,/9j/4AAQ"
    assert through_internal(native) == native


def test_cache_points_and_earlier_reasoning_are_dropped_by_rule() -> None:
    native = {
        "system": [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
        "messages": [
            {"role": "user", "content": [{"text": "Hi"}, {"cachePoint": {"type": "default"}}]},
            {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "hm", "signature": "s"}}},
                    {"text": "Hello"},
                ],
            },
        ],
        "toolConfig": {"tools": [TOP_SONG_TOOL, {"cachePoint": {"type": "default"}}]},
    }
    assert through_internal(native) == {
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "Hi"}]},
            {"role": "assistant", "content": [{"text": "Hello"}]},
        ],
        "toolConfig": {"tools": [TOP_SONG_TOOL]},
    }


@pytest.mark.parametrize(
    ("native", "param"),
    [
        ({**TOOL_REQUEST, "guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"}}, "guardrailConfig"),
        ({**TOOL_REQUEST, "additionalModelRequestFields": {"top_k": 200}}, "additionalModelRequestFields"),
        ({**TOOL_REQUEST, "promptVariables": {"genre": {"text": "pop"}}}, "promptVariables"),
        (
            {"messages": [{"role": "user", "content": [{"document": {"format": "pdf", "name": "d", "source": {}}}]}]},
            "messages[0].content[0].document",
        ),
        ({**TOOL_REQUEST, "system": [{"guardContent": {"text": {"text": "x"}}}]}, "system[0].guardContent"),
        (
            {"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"s3Location": {}}}}]}]},
            "messages[0].content[0].image.source.s3Location",
        ),
        ({**TOOL_REQUEST, "somethingNew": True}, "somethingNew"),
        ({"messages": [{"role": "user", "content": [{"audio": {}}]}]}, "messages[0].content[0].audio"),
    ],
)
def test_converse_fields_without_an_internal_counterpart_are_a_400_naming_the_field(
    native: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        bedrock.request_from_native(encoded(native), MODEL)
    assert caught.value.param == param
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (encoded({**TOOL_REQUEST, "inferenceConfig": {"temperature": 1.5}}), "inferenceConfig.temperature"),
        (encoded({**TOOL_REQUEST, "inferenceConfig": {"maxTokens": 0}}), "inferenceConfig.maxTokens"),
        (encoded({"messages": [{"role": "system", "content": [{"text": "x"}]}]}), "messages[0].role"),
        (encoded({"messages": []}), "messages"),
        (encoded({"system": [{"text": "x"}]}), "messages"),
        (b"{not json", None),
    ],
)
def test_invalid_converse_bodies_are_a_400_naming_the_native_field(body: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        bedrock.request_from_native(body, MODEL)
    assert caught.value.param == param


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("answer", [TOOL_USE_ANSWER, FINAL_ANSWER], ids=["tool-use", "final"])
def test_the_documented_tool_use_answers_round_trip(answer: dict[str, Any]) -> None:
    completion = bedrock.completion_from_native(encoded(answer), completion_id="chatcmpl-1", model=MODEL)
    assert json.loads(bedrock.completion_to_native(completion)) == answer


def test_the_documented_converse_answer_round_trips_with_usage_and_latency() -> None:
    completion = bedrock.completion_from_native(encoded(TEXT_ANSWER), completion_id="chatcmpl-1", model=MODEL)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 185
    assert json.loads(bedrock.completion_to_native(completion, latency_ms=1175)) == TEXT_ANSWER


def test_a_tool_use_answer_becomes_openai_tool_calls() -> None:
    completion = bedrock.completion_from_native(encoded(TOOL_USE_ANSWER), completion_id="chatcmpl-1", model=MODEL)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"sign": "WZPZ"}


def test_cached_prompt_tokens_go_back_as_cache_reads_outside_input_tokens() -> None:
    native = {
        **FINAL_ANSWER,
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 1015, "cacheReadInputTokens": 1000},
    }
    completion = bedrock.completion_from_native(encoded(native), completion_id="chatcmpl-1", model=MODEL)
    assert completion.usage is not None and completion.usage.prompt_tokens == 1010
    assert json.loads(bedrock.completion_to_native(completion)) == native


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "content_filtered"),
    ],
)
def test_finish_reasons_go_back_as_converse_stop_reasons(finish: str, stop_reason: str) -> None:
    completion = msgspec.convert(
        {
            "id": "c",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": finish}],
        },
        ChatCompletion,
    )
    assert json.loads(bedrock.completion_to_native(completion))["stopReason"] == stop_reason


def test_a_malformed_answer_raises_a_msgspec_error() -> None:
    with pytest.raises(msgspec.MsgspecError):
        bedrock.completion_from_native(b'{"output": {}}', completion_id="c", model=MODEL)


# ---------------------------------------------------------------- streams


def test_the_documented_stream_round_trips_with_the_block_stop_aws_sends_before_message_stop() -> None:
    chunks = decode_stream(STREAM_EXAMPLE)
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == " Title: The"
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 67
    expected = [*STREAM_EXAMPLE[:5], ("contentBlockStop", {"contentBlockIndex": 0}), *STREAM_EXAMPLE[5:]]
    assert encode_stream(chunks, latency_ms=100.0) == expected


def test_a_stream_of_text_then_a_tool_call_round_trips_event_for_event() -> None:
    events: list[tuple[str, dict[str, Any]]] = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"delta": {"text": "Let me check."}, "contentBlockIndex": 0}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        (
            "contentBlockStart",
            {
                "start": {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song"}},
                "contentBlockIndex": 1,
            },
        ),
        ("contentBlockDelta", {"delta": {"toolUse": {"input": '{"sign": "W'}}, "contentBlockIndex": 1}),
        ("contentBlockDelta", {"delta": {"toolUse": {"input": 'ZPZ"}'}}, "contentBlockIndex": 1}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use"}),
        (
            "metadata",
            {
                "usage": {"inputTokens": 375, "outputTokens": 62, "totalTokens": 1437, "cacheReadInputTokens": 1000},
                "metrics": {"latencyMs": 1386},
            },
        ),
    ]
    chunks = decode_stream(events)
    calls = [call for chunk in chunks for c in chunk.choices for call in c.delta.tool_calls or []]
    assert calls[0].id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q" and calls[0].index == 0
    assert encode_stream(chunks, latency_ms=1386) == events


def test_the_decoder_is_complete_only_after_message_stop_and_metadata() -> None:
    decoder = bedrock.StreamDecoder("chatcmpl-1", MODEL)
    decoder.chunks("messageStop", b'{"stopReason": "end_turn"}')
    assert decoder.stopped and not decoder.complete
    decoder.chunks("metadata", b'{"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}}')
    assert decoder.complete


def test_unknown_stream_events_are_skipped_and_orphan_tool_deltas_are_malformed() -> None:
    decoder = bedrock.StreamDecoder("chatcmpl-1", MODEL)
    assert decoder.chunks("somethingNewerEvent", b"{}") == []
    with pytest.raises(bedrock.MalformedAnswer):
        decoder.chunks("contentBlockDelta", b'{"delta": {"toolUse": {"input": "{"}}, "contentBlockIndex": 3}')


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"message": "Too many requests", "__type": "ThrottlingException"}',
            ("ThrottlingException", "Too many requests"),
        ),
        (
            b'{"Message": "no such op", "__type": "com.amazon.coral.service#UnknownOperationException"}',
            ("UnknownOperationException", "no such op"),
        ),
        (b"<html>gateway</html>", None),
    ],
)
def test_aws_error_bodies_give_their_short_type_and_message(body: bytes, expected: tuple[str, str] | None) -> None:
    assert bedrock.error_from_native(body) == expected


def test_stream_exceptions_have_the_statuses_of_the_converse_stream_reference() -> None:
    assert bedrock.exception_status("throttlingException") == 429
    assert bedrock.exception_status("validationException") == 400
    assert bedrock.exception_status("modelStreamErrorException") == 502
