"""Reading OpenAI SSE lines and timing a stream's content."""

from __future__ import annotations

import json

import pytest

from bench.contenders import chat_body, sse_content, sse_content_times, stream_timing
from bench.load import RequestFailed


def _line(delta: dict[str, str]) -> str:
    return "data: " + json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


def test_a_content_chunk_yields_its_text() -> None:
    assert sse_content(_line({"content": "[ech"})) == "[ech"
    assert sse_content(_line({"content": "hi"}).replace("data: ", "data:")) == "hi"


def test_role_chunks_done_markers_and_other_lines_carry_no_content() -> None:
    assert sse_content(_line({"role": "assistant"})) is None
    assert sse_content(_line({"content": ""})) is None
    assert sse_content("data: [DONE]") is None
    assert sse_content("") is None
    assert sse_content(": keep-alive") is None
    assert sse_content("event: message") is None


def test_stream_timing_measures_ttft_from_the_request_and_itl_between_content_chunks() -> None:
    timing = stream_timing(10.0, [10.05, 10.06, 10.08])
    assert timing.ttft_ms == pytest.approx(50.0)
    assert timing.itl_ms == pytest.approx(15.0)
    assert timing.content_chunks == 3


def test_a_single_chunk_has_no_itl_and_an_empty_stream_is_a_failure() -> None:
    assert stream_timing(0.0, [0.1]).itl_ms is None
    with pytest.raises(RequestFailed):
        stream_timing(0.0, [])


def test_every_contender_sends_the_same_short_body() -> None:
    body = json.loads(chat_body("echo"))
    assert body["model"] == "echo"
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "stream" not in body
    assert json.loads(chat_body("echo", stream=True))["stream"] is True


def test_content_times_come_from_the_piece_that_completes_each_line() -> None:
    first, second = _line({"role": "assistant"}), _line({"content": "[ech"})
    third = _line({"content": "o]"})
    body = f"{first}\n\n{second}\r\n\r\n{third}\n\ndata: [DONE]\n\n".encode()
    split_at = body.index(b"[ech") + 2  # the second event is cut in two
    later_cut = body.index(b"o]") + 1
    pieces = [(1.0, body[:split_at]), (2.0, body[split_at:later_cut]), (3.0, body[later_cut:])]
    assert sse_content_times(pieces) == [2.0, 3.0]


def test_a_last_content_line_without_its_newline_still_counts() -> None:
    assert sse_content_times([(1.0, _line({"content": "x"}).encode())]) == [1.0]
    assert sse_content_times([]) == []
