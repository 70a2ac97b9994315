"""A real Claude Code request (tests/e2e/data/claude_code_request.json, captured from Claude Code
2.1.337 in print mode) reads and translates: the fields it sends that have no internal counterpart
are dropped or kept under the documented rule, never refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.chat import SystemMessage, UserMessage
from shared.errors import InvalidRequest
from shared.formats.anthropic import estimate_input_tokens, request_from_native
from shared.formats.anthropic.count_tokens import count_tokens_request_from_native
from shared.formats.anthropic.view import request_view

CAPTURED = Path(__file__).parents[3] / "e2e" / "data" / "claude_code_request.json"


def _body(**change: Any) -> bytes:
    body = json.loads(CAPTURED.read_text())
    body.update(change)
    return json.dumps(body).encode()


def test_claude_code_s_request_translates_with_its_mid_conversation_system_turn_in_place() -> None:
    request = request_from_native(_body())
    kinds = [type(m) for m in request.messages]
    # the system prompt first, then the user turn, then the system turn Claude Code put after it
    assert kinds[0] is SystemMessage and kinds[-2:] == [UserMessage, SystemMessage]
    assert request.stream and request.max_tokens == 32000
    assert request.reasoning_effort == "high"  # output_config.effort is kept
    assert request.tools is not None and len(request.tools) == 12


def test_claude_code_s_request_is_routable_on_the_view() -> None:
    view = request_view(_body())
    assert view.model == "fast" and view.stream
    assert isinstance(view.messages[-1], SystemMessage)


def test_adaptive_thinking_and_context_management_are_dropped_but_enabled_thinking_is_refused() -> None:
    request_from_native(_body(thinking={"type": "adaptive"}))
    with pytest.raises(InvalidRequest) as err:
        request_from_native(_body(thinking={"type": "enabled", "budget_tokens": 2048}))
    assert err.value.param == "thinking"


def test_a_system_turn_with_an_image_is_refused_naming_the_block() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
    body = _body(messages=[{"role": "user", "content": "hi"}, {"role": "system", "content": [image]}])
    with pytest.raises(InvalidRequest) as err:
        request_from_native(body)
    assert err.value.param == "messages[1].content[0]"


def test_claude_code_s_request_can_be_counted_as_a_count_tokens_body() -> None:
    body = json.loads(_body())
    for generation_only in ("max_tokens", "stream", "metadata"):
        body.pop(generation_only)
    assert estimate_input_tokens(count_tokens_request_from_native(json.dumps(body).encode())) > 100
