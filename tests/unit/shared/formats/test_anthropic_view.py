"""The routing view of a Messages body that may go on as it came: nothing refused for want of a counterpart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.chat import ImagePart, TextPart, UserMessage
from shared.errors import InvalidRequest
from shared.formats.anthropic.view import request_view
from shared.formats.native import check_format, request_translated
from shared.formats.native import request_view as view_of

RICH: dict[str, Any] = {
    "model": "smart",
    "max_tokens": 1000,
    "stream": True,
    "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found"}]},
    ],
    "tools": [
        {"name": "lookup", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    ],
    "thinking": {"type": "enabled", "budget_tokens": 512},
    "top_k": 4,
    "container": "c1",
    "a_field_from_next_year": [1],
}


def test_a_body_translation_would_refuse_is_routable_as_it_is() -> None:
    body = json.dumps(RICH).encode()
    view = request_view(body)
    assert view.model == "smart" and view.stream and view.max_tokens == 1000
    assert [t.function.name for t in view.tools or []] == ["lookup", "web_search"]
    with pytest.raises(InvalidRequest):
        request_translated("anthropic", body)  # top_k, thinking, container: the strict rule refuses


def test_the_view_counts_images_and_the_text_the_estimate_reads() -> None:
    view = request_view(json.dumps(RICH).encode())
    first = view.messages[1]
    assert isinstance(first, UserMessage) and isinstance(first.content, list)
    assert any(isinstance(p, ImagePart) for p in first.content)
    texts = [p.text for m in view.messages if isinstance(m.content, list) for p in m.content if isinstance(p, TextPart)]
    assert "look" in texts[0] and "lookup" in texts[1] and '{"q":"x"}' in texts[1] and "found" in texts[2]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": 7}, "model"),
        ({"stream": "yes"}, "stream"),
        ({"tools": [{"description": "no name"}]}, "tools[0]"),
    ],
)
def test_a_wrong_required_field_is_a_400_naming_it(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        request_view(json.dumps({**RICH, **change}).encode())
    assert (err.value.param or "").startswith(param)


def test_malformed_json_is_a_400_invalid_json() -> None:
    with pytest.raises(InvalidRequest) as err:
        request_view(b'{"model": ')
    assert err.value.code == "invalid_json"


def test_an_openai_body_with_an_unknown_field_is_routable_but_not_translatable() -> None:
    body = b'{"model":"fast","messages":[{"role":"user","content":"hi"}],"a_new_param":1}'
    assert view_of("openai", body).model == "fast"
    with pytest.raises(InvalidRequest) as err:
        request_translated("openai", body)
    assert err.value.param == "a_new_param"
    with pytest.raises(InvalidRequest):
        view_of(None, body)  # the internal contract stays strict


def test_an_unknown_format_header_is_a_400_naming_it() -> None:
    assert check_format(None) is None and check_format("anthropic") == "anthropic"
    with pytest.raises(InvalidRequest) as err:
        check_format("gemini")
    assert err.value.param == "Modelbus-Format"
