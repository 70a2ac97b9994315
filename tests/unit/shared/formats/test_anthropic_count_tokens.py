"""``POST /v1/messages/count_tokens`` in Anthropic's format, and modelbus's estimate.

The requests are the examples of Anthropic's token-counting guide
(https://docs.anthropic.com/en/docs/build-with-claude/token-counting), whose exact counts
are 14 and 403, and the documented Messages requests of ``test_anthropic`` without their
generation settings. The estimate must agree with the router's (``needs_of``) on every
request the ingress accepts, so a client's count and the router's checks never disagree.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.router.filters import needs_of
from shared.errors import InvalidRequest
from shared.formats import anthropic
from shared.formats.anthropic import count_tokens
from tests.unit.shared.formats.test_anthropic import (
    BASIC_REQUEST,
    MULTI_TURN_REQUEST,
    STREAMED_TOOL_REQUEST,
    TOOL_RESULT_REQUEST,
    VISION_REQUEST,
    WEATHER_TOOL,
)

MODEL = "claude-sonnet-4-5"

# The guide's examples.
SYSTEM_EXAMPLE: dict[str, Any] = {
    "model": MODEL,
    "system": "You are a scientist",
    "messages": [{"role": "user", "content": "Hello, Claude"}],
}
TOOLS_EXAMPLE: dict[str, Any] = {
    "model": MODEL,
    "tools": [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}
                },
                "required": ["location"],
            },
        }
    ],
    "messages": [{"role": "user", "content": "What's the weather like in San Francisco?"}],
}

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}

# Shapes beyond the documented examples that the ingress also accepts.
EXTRA_REQUESTS: list[dict[str, Any]] = [
    {
        "model": MODEL,
        "system": [
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": "Cite sources.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Résumé en 日本語, s'il vous plaît"}]}],
    },
    {
        "model": MODEL,
        "system": "",
        "messages": [
            {"role": "user", "content": "Look up the weather in two cities."},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two calls, in parallel.", "signature": "EqQBCgIYAhIM"},
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Zürich"}},
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"location": "Oslo", "unit": "celsius"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "12 °C"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "3 degrees", "is_error": False},
                    {"type": "text", "text": "And which is warmer?"},
                    IMAGE,
                ],
            },
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}]},
            {"role": "user", "content": "Well?"},
        ],
        "tools": [WEATHER_TOOL, {**WEATHER_TOOL, "name": "get_forecast", "strict": True}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    },
]


def count_body(messages_request: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as a count_tokens body: without its generation settings."""
    return {k: v for k, v in messages_request.items() if k not in ("max_tokens", "stream", "metadata")}


def estimate(body: dict[str, Any]) -> int:
    return count_tokens.estimate_input_tokens(anthropic.count_tokens_request_from_native(json.dumps(body).encode()))


def router_estimate(body: dict[str, Any]) -> int:
    """What the router estimates for the same request sent to ``/v1/messages``."""
    request = anthropic.request_from_native(json.dumps({**body, "max_tokens": 1024}).encode())
    return needs_of(request).prompt_tokens


def refused(body: dict[str, Any] | bytes) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        count_tokens.estimate_input_tokens(anthropic.count_tokens_request_from_native(raw))
    return caught.value


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": list(blocks)}]}


# ---------------------------------------------------------------- the estimate


def test_the_guide_s_system_example_is_estimated_by_the_router_s_rule() -> None:
    # 19 + 13 characters -> 8 tokens, two messages -> 8, the reply -> 3 (Anthropic counts 14).
    assert estimate(SYSTEM_EXAMPLE) == 19


def test_the_guide_s_tools_example_counts_the_tools_as_modelbus_carries_them() -> None:
    tools = [
        {
            "function": {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "parameters": TOOLS_EXAMPLE["tools"][0]["input_schema"],
            },
            "type": "function",
        }
    ]
    tools_chars = len(json.dumps(tools, separators=(",", ":")))
    text_chars = len("What's the weather like in San Francisco?")
    assert estimate(TOOLS_EXAMPLE) == -(-(tools_chars + text_chars) // 4) + 4 + 3


BODIES = [
    SYSTEM_EXAMPLE,
    TOOLS_EXAMPLE,
    *(
        count_body(r)
        for r in (BASIC_REQUEST, MULTI_TURN_REQUEST, VISION_REQUEST, TOOL_RESULT_REQUEST, STREAMED_TOOL_REQUEST)
    ),
    *EXTRA_REQUESTS,
]


@pytest.mark.parametrize("body", BODIES)
def test_the_estimate_agrees_with_the_router_s_to_the_token(body: dict[str, Any]) -> None:
    assert estimate(body) == router_estimate(body)


def test_each_image_costs_85_tokens_wherever_it_is() -> None:
    text_only = estimate(user({"type": "text", "text": "Describe."}))
    in_turn = estimate(
        user(
            {"type": "text", "text": "Describe."},
            IMAGE,
            {**IMAGE, "source": {"type": "url", "url": "https://example.com/a.png"}},
        )
    )
    assert in_turn - text_only == 2 * 85
    result_with_image = user({"type": "tool_result", "tool_use_id": "t", "content": [IMAGE]})
    result_without = user({"type": "tool_result", "tool_use_id": "t", "content": []})
    assert estimate(result_with_image) - estimate(result_without) == 85


def test_each_tool_result_counts_as_a_message_of_its_own() -> None:
    one = user({"type": "tool_result", "tool_use_id": "a", "content": "ok"})
    two = user(
        {"type": "tool_result", "tool_use_id": "a", "content": "ok"}, {"type": "tool_result", "tool_use_id": "b"}
    )
    assert estimate(two) - estimate(one) == 4


def test_earlier_thinking_is_not_counted_as_anthropic_does_not_count_it() -> None:
    said = {"type": "text", "text": "The answer is 4."}
    plain = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": [said]}],
    }
    thought = {
        **plain,
        "messages": [
            plain["messages"][0],
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "x" * 4000, "signature": "sig"},
                    {"type": "redacted_thinking", "data": "y" * 4000},
                    said,
                ],
            },
        ],
    }
    assert estimate(thought) == estimate(plain)


def test_a_turn_of_thinking_alone_is_no_message() -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    with_thinking = {
        **base,
        "messages": [
            *base["messages"],
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
        ],
    }
    assert estimate(with_thinking) == estimate(base)


def test_settings_that_carry_no_prompt_text_do_not_change_the_count() -> None:
    settings = {
        "tool_choice": {"type": "any"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {"effort": "high"},
        "cache_control": {"type": "ephemeral"},
    }
    assert estimate({**TOOLS_EXAMPLE, **settings}) == estimate(TOOLS_EXAMPLE)


def test_characters_are_counted_not_bytes_so_cjk_text_is_not_inflated() -> None:
    assert estimate(user({"type": "text", "text": "日本語です"})) == estimate(user({"type": "text", "text": "abcde"}))


def test_a_plain_text_document_is_counted_with_its_title_and_context() -> None:
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "x" * 40},
        "title": "t" * 20,
        "context": "c" * 20,
    }
    assert estimate(user(document)) == 80 // 4 + 4 + 3
    nested = {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "x" * 40}, IMAGE]}}
    assert estimate(user(nested)) == 40 // 4 + 85 + 4 + 3


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="},
        {"type": "url", "url": "https://example.com/report.pdf"},
        {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"},
    ],
)
def test_a_pdf_cannot_be_estimated_and_is_refused_naming_its_source(source: dict[str, Any]) -> None:
    err = refused(user({"type": "text", "text": "Summarise."}, {"type": "document", "source": source}))
    assert err.param == "messages[0].content[1].source"
    assert err.code == "unsupported_parameter"
    inside_result = refused(
        user({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "source": source}]})
    )
    assert inside_result.param == "messages[0].content[0].content[0].source"


# ---------------------------------------------------------------- the request and the answer


def test_max_tokens_is_refused_as_anthropic_refuses_it_in_a_count() -> None:
    err = refused({**SYSTEM_EXAMPLE, "max_tokens": 1024})
    assert (err.param, err.code) == ("max_tokens", "invalid_field")


@pytest.mark.parametrize("field", ["stream", "temperature", "metadata", "stop_sequences", "mcp_servers"])
def test_a_field_a_count_does_not_take_is_refused_naming_it(field: str) -> None:
    assert refused({**SYSTEM_EXAMPLE, field: True}).param == field


def test_a_missing_model_or_empty_messages_is_refused_naming_the_field() -> None:
    assert refused({"messages": SYSTEM_EXAMPLE["messages"]}).param == "model"
    assert refused({"model": MODEL, "messages": []}).param == "messages"


def test_a_malformed_block_is_refused_with_its_path() -> None:
    err = refused(user({"type": "text", "text": "ok"}, {"type": "video", "url": "x"}))
    assert err.param == "messages[0].content[1].type"


def test_a_body_that_is_not_json_is_refused_as_invalid_json() -> None:
    assert refused(b"{not json").code == "invalid_json"


def test_the_decoded_request_keeps_the_model_for_routing() -> None:
    request = anthropic.count_tokens_request_from_native(json.dumps(TOOLS_EXAMPLE).encode())
    assert request.model == MODEL
    assert request.tools is not None and request.tools[0].name == "get_weather"


def test_the_answer_is_the_documented_input_tokens_object() -> None:
    assert json.loads(anthropic.token_count_to_native(403)) == {"input_tokens": 403}
