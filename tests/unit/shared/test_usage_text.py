"""Text records: what a record keeps, and the cap that keeps it within one JetStream message."""

from __future__ import annotations

import json

import msgspec
import pytest

from shared import headers as H
from shared.usage import InvalidRetention
from shared.usage_text import (
    NO_COMPLETION,
    TEXT_RECORD_CAP,
    TextRecord,
    decode_text_records,
    encode_text_record,
    join_text_records,
    record_text_headers,
    text_record_decoder,
    text_record_encoder,
    text_retention,
)


def _record(request: bytes, *, completion: bytes | None = None, text: str | None = None) -> TextRecord:
    return TextRecord(
        request_id="r-1",
        time_ms=1,
        status=200,
        request=msgspec.Raw(request),
        agent="a",
        completion=msgspec.Raw(completion) if completion is not None else NO_COMPLETION,
        completion_text=text,
        stream=text is not None,
    )


def _body(content: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}]}).encode()


def test_a_record_that_fits_keeps_the_request_and_the_completion_byte_for_byte() -> None:
    request = b'{"messages":[{"role":"user","content":"hi"}],  "extra": 1}'
    completion = b'{"choices":[{"message":{"content":"hello"}}]}'
    decoded = text_record_decoder.decode(encode_text_record(_record(request, completion=completion)))
    assert bytes(decoded.request) == request and bytes(decoded.completion) == completion
    assert decoded.truncated == []


def test_a_record_without_a_completion_leaves_it_out() -> None:
    data = encode_text_record(_record(b"{}", text="streamed"))
    assert b'"completion"' not in data and json.loads(data)["completion_text"] == "streamed"


def test_a_too_large_request_is_cut_with_a_marker_and_the_record_says_so() -> None:
    request = _body("x" * (TEXT_RECORD_CAP * 2))
    data = encode_text_record(_record(request, completion=b'{"ok": true}'))
    assert len(data) <= TEXT_RECORD_CAP
    decoded = text_record_decoder.decode(data)
    assert decoded.truncated == ["request"]
    kept = json.loads(bytes(decoded.request))
    assert isinstance(kept, str) and kept.startswith('{"messages"')
    assert kept.endswith(f"of {len(request)} bytes kept]") and "truncated" in kept
    assert json.loads(bytes(decoded.completion)) == {"ok": True}  # the small part is kept whole


def test_two_large_parts_share_the_cap_and_both_are_cut() -> None:
    big = "y" * TEXT_RECORD_CAP
    data = encode_text_record(_record(_body(big), text=big))
    assert len(data) <= TEXT_RECORD_CAP
    decoded = text_record_decoder.decode(data)
    assert decoded.truncated == ["completion_text", "request"]
    assert decoded.completion_text is not None and "truncated" in decoded.completion_text
    assert len(decoded.completion_text) > TEXT_RECORD_CAP // 4  # a fair share, not a sliver


def test_text_that_escapes_to_many_bytes_still_fits_the_cap() -> None:
    """Control characters take six bytes each in JSON: the cut is measured on the encoded record."""
    nasty = "\x01" * TEXT_RECORD_CAP
    data = encode_text_record(_record(_body(nasty), text=nasty + "ü" * 1000))
    assert len(data) <= TEXT_RECORD_CAP
    assert text_record_decoder.decode(data).truncated == ["completion_text", "request"]


def test_a_cut_never_splits_a_multibyte_character() -> None:
    data = encode_text_record(_record(b"{}", text="€" * TEXT_RECORD_CAP))
    text = text_record_decoder.decode(data).completion_text
    assert text is not None and set(text.split("…[")[0]) == {"€"}


def test_a_completion_that_is_not_json_is_kept_as_text() -> None:
    data = encode_text_record(_record(b"{}", completion=b"<html>upstream page</html>"))
    assert json.loads(bytes(text_record_decoder.decode(data).completion)) == "<html>upstream page</html>"


def test_records_published_together_read_back_whole_even_when_a_request_holds_newlines() -> None:
    pretty = b'{\n  "messages": [\n    {"role": "user", "content": "a"}\n  ]\n}'
    first = _record(pretty, completion=b'{"x": 1}')
    second = msgspec.structs.replace(_record(b"{}", text="t"), request_id="r-2")
    data = join_text_records([encode_text_record(first), text_record_encoder.encode(second)])
    back = decode_text_records(data)
    assert [r.request_id for r in back] == ["r-1", "r-2"] and bytes(back[0].request) == pretty


def test_the_router_marks_a_call_with_the_agent_and_its_run() -> None:
    assert record_text_headers("ns/agent", "run-1") == {H.RECORD_TEXT: "1", H.AGENT: "ns/agent", H.RUN_ID: "run-1"}
    assert H.RUN_ID not in record_text_headers("agent", None)


def test_text_retention_defaults_to_thirty_days_and_refuses_unbounded_values() -> None:
    assert text_retention({})[0] == 30 * 86400
    assert text_retention({"MODELBUS_USAGE_TEXT_MAX_AGE": "7d", "MODELBUS_USAGE_TEXT_MAX_BYTES": "2GiB"}) == (
        7 * 86400,
        2 << 30,
    )
    with pytest.raises(InvalidRetention, match="MODELBUS_USAGE_TEXT_MAX_AGE"):
        text_retention({"MODELBUS_USAGE_TEXT_MAX_AGE": "0d"})
