"""The reply protocol's helpers: deadline header parsing, terminators, stream intent."""

from __future__ import annotations

import pytest

from shared import headers as H
from shared.errors import InvalidRequest
from shared.replies import (
    MAX_TIMEOUT_MS,
    is_keepalive,
    is_stream_end,
    parse_timeout_ms,
    status_of,
    stream_end,
    time_left_s,
    timeout_s,
    wants_stream,
)


@pytest.mark.parametrize(
    "raw",
    [
        *(" 100", "100 ", "1_000", "+100", "-5", "0", "000", "", "1e3", "12.5"),
        *("\u0661\u0660\u0660", "\uff11\uff10", "9" * 40),  # Arabic-Indic and full-width digits, 40 digits
    ],
    ids=repr,
)
def test_a_timeout_that_is_not_plain_ascii_digits_within_bounds_is_a_400_naming_the_header(raw: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_timeout_ms(raw)
    assert caught.value.param == H.TIMEOUT_MS
    assert H.TIMEOUT_MS in caught.value.message


@pytest.mark.parametrize(
    ("raw", "ms"), [("1", 1), ("0100", 100), ("60000", 60000), (str(MAX_TIMEOUT_MS), MAX_TIMEOUT_MS)]
)
def test_a_timeout_of_ascii_digits_within_bounds_is_read_as_milliseconds(raw: str, ms: int) -> None:
    assert parse_timeout_ms(raw) == ms


def test_a_timeout_one_above_the_maximum_is_refused_and_an_absent_one_is_the_default() -> None:
    with pytest.raises(InvalidRequest):
        parse_timeout_ms(str(MAX_TIMEOUT_MS + 1))
    assert timeout_s({}, 1500) == 1.5
    assert timeout_s({H.TIMEOUT_MS: "250"}, 1500) == 0.25


def test_a_worker_takes_the_tighter_of_its_cap_and_the_time_left_and_ignores_a_malformed_one() -> None:
    assert time_left_s({H.TIMEOUT_MS: "500"}, 2000) == 0.5
    assert time_left_s({H.TIMEOUT_MS: "5000"}, 2000) == 2.0
    assert time_left_s({H.TIMEOUT_MS: " 5"}, 2000) == 2.0


def test_a_terminator_carries_the_end_marker_and_its_position() -> None:
    end = stream_end(3, {H.STATUS: "502"})
    assert end == {H.STATUS: "502", H.STREAM: H.STREAM_END, H.SEQ: "3"}
    assert is_stream_end(end) and not is_stream_end({H.SEQ: "3"}) and not is_stream_end(None)
    assert is_keepalive({H.KEEPALIVE: "1"}) and not is_keepalive({}) and not is_keepalive(None)


def test_a_status_header_that_is_not_three_ascii_digits_reads_as_zero() -> None:
    assert status_of({H.STATUS: "200"}) == 200
    assert status_of({}, default=200) == 200
    assert status_of({H.STATUS: "2OO"}) == 0
    assert status_of({H.STATUS: "\u0662\u0660\u0660"}) == 0


@pytest.mark.parametrize(
    ("body", "stream"),
    [
        (b'{"stream": true, "messages": []}', True),
        (b'{"stream": true, "messages": "not a list"}', True),
        (b'{"stream": true, "messages": [', True),
        (b'{"stream":true', True),
        (b'{"messages": []}', False),
        (b'{"stream": "yes"}', False),
        (b"not json at all", False),
        (b"[1, 2]", False),
    ],
)
def test_stream_intent_is_read_even_from_a_body_that_fails_validation(body: bytes, stream: bool) -> None:
    assert wants_stream(body) is stream
