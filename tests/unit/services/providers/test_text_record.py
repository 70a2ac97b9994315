"""The worker's text capture: what it keeps of a call, and when it records nothing."""

from __future__ import annotations

import json
from typing import Any

from services.providers.text_record import TextCapture, TextRecorder
from shared import headers as H
from shared.chat import ChatCompletionChunk, ChunkChoice, Delta
from shared.usage_text import TEXT_RECORD_CAP, encode_text_record, text_record_decoder


def _capture(stream: bool, headers: dict[str, str] | None = None) -> TextCapture:
    marked = {H.RECORD_TEXT: "1", H.REQUEST_ID: "r-9", H.AGENT: "ag", H.RUN_ID: "run", **(headers or {})}
    capture = TextRecorder.capture(
        marked, request=b'{"messages": []}', endpoint="ep", provider="mock", model="m", stream=stream, fmt=None
    )
    assert capture is not None
    return capture


def _chunk(text: str | None, **delta: Any) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="c", created=1, model="m-2", choices=[ChunkChoice(index=0, delta=Delta(content=text, **delta))]
    )


def test_an_unmarked_call_gets_no_capture_at_all() -> None:
    assert (
        TextRecorder.capture(
            {H.AGENT: "ag", H.RECORD_TEXT: "yes"},
            request=b"{}",
            endpoint="e",
            provider="p",
            model="m",
            stream=False,
            fmt=None,
        )
        is None
    )


def test_a_completion_keeps_the_body_the_client_got_and_its_status_and_model() -> None:
    capture = _capture(stream=False)
    capture.sent(b'{"id": "x"}', {H.STATUS: "200", H.MODEL: "m-answered"})
    record = text_record_decoder.decode(encode_text_record(capture.record(5)))
    assert (record.request_id, record.agent, record.run_id, record.endpoint, record.model) == (
        "r-9",
        "ag",
        "run",
        "ep",
        "m-answered",
    )
    assert json.loads(bytes(record.completion)) == {"id": "x"} and record.completion_text is None


def test_a_stream_keeps_the_text_of_its_chunks_and_the_error_it_ended_with() -> None:
    capture = _capture(stream=True)
    capture.chunks([_chunk(None, role="assistant")])
    capture.chunks([_chunk("Hello"), _chunk(", world")])
    capture.sent(b"chunk", {H.SEQ: "0"})
    capture.sent(b'{"error": {"code": "upstream_unavailable"}}', {H.STREAM: H.STREAM_END, H.STATUS: "503"})
    record = capture.record(5)
    assert record.completion_text == "Hello, world" and record.status == 503
    assert json.loads(bytes(record.completion))["error"]["code"] == "upstream_unavailable"


def test_a_clean_stream_end_is_not_taken_for_a_completion() -> None:
    capture = _capture(stream=True)
    capture.chunks([_chunk("hi")])
    capture.sent(b"c", {H.SEQ: "0"})
    capture.sent(b'{"usage": {}}', {H.STREAM: H.STREAM_END, H.STATUS: "200"})
    record = capture.record(5)
    assert record.status == 200 and bytes(record.completion) == b"null"


def test_a_stream_stops_keeping_text_past_the_cap_and_its_record_says_it_was_cut() -> None:
    capture = _capture(stream=True)
    for _ in range(5):
        capture.chunks([_chunk("z" * TEXT_RECORD_CAP)])
    assert capture.text_chars <= 2 * TEXT_RECORD_CAP  # bounded memory, whatever the upstream sends
    capture.sent(b"c", {H.SEQ: "0"})
    data = encode_text_record(capture.record(5))
    assert len(data) <= TEXT_RECORD_CAP
    assert "completion_text" in text_record_decoder.decode(data).truncated


class _NoBus:
    """Stands in for the connection: a record that is only queued never reaches it."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing may be published here")


def test_an_attempt_that_delivered_nothing_records_nothing() -> None:
    recorder = TextRecorder(_NoBus())  # type: ignore[arg-type]
    recorder.submit(_capture(stream=False))  # failed before the client got anything: the router may fail over
    assert recorder.dropped == 0 and not recorder._queue and recorder._task is None
