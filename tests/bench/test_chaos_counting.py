"""What the chaos harness makes of the messages one request id received: once, twice, never, an error.

Pure logic, no processes: records are built by hand the way the load
generator builds them from the wire (headers in, :class:`WireMessage` out).
"""

from __future__ import annotations

import math

import pytest

from bench.chaos.counting import (
    MAX_SILENCE_S,
    NEVER_GRACE_S,
    Kind,
    Outcome,
    RequestRecord,
    WireMessage,
    classify_message,
    figures,
    nearest_rank,
    outcome_of,
    recovery_s,
)

TIMEOUT_S = 8.0


def reply(at: float, status: int = 200) -> WireMessage:
    return classify_message({"Modelbus-Status": str(status)}, 10, streamed=False, at=at)


def chunk(at: float, seq: int) -> WireMessage:
    return classify_message({"Modelbus-Seq": str(seq)}, 10, streamed=True, at=at)


def end(at: float, seq: int, status: int = 200) -> WireMessage:
    return classify_message(
        {"Modelbus-Stream": "end", "Modelbus-Seq": str(seq), "Modelbus-Status": str(status)}, 10, streamed=True, at=at
    )


def keepalive(at: float, *, streamed: bool = False) -> WireMessage:
    return classify_message({"Modelbus-Keepalive": "1"}, 0, streamed=streamed, at=at)


def record(*messages: WireMessage, started: float = 0.0, streamed: bool = False, rid: str = "r") -> RequestRecord:
    return RequestRecord(
        request_id=rid, streamed=streamed, started=started, timeout_s=TIMEOUT_S, messages=list(messages)
    )


# ---------------------------------------------------------------- single messages


def test_a_reply_with_a_status_and_no_stream_header_is_a_final_answer() -> None:
    assert reply(1.0).kind is Kind.FINAL
    assert reply(1.0, 408).status == 408


def test_keepalives_and_heartbeats_are_never_answers() -> None:
    assert keepalive(1.0).kind is Kind.KEEPALIVE
    assert keepalive(1.0, streamed=True).kind is Kind.KEEPALIVE
    heartbeat = classify_message({"Modelbus-Heartbeat": "3"}, 0, streamed=False, at=1.0)
    assert heartbeat.kind is Kind.HEARTBEAT


def test_a_nats_no_responders_status_is_a_final_error() -> None:
    message = classify_message({"Status": "503"}, 0, streamed=True, at=1.0)
    assert (message.kind, message.status) == (Kind.NO_RESPONDERS, 503)


def test_on_a_stream_only_the_end_message_is_final_and_an_unterminated_error_is_not() -> None:
    assert chunk(1.0, 0).kind is Kind.CHUNK
    assert end(1.0, 3).kind is Kind.FINAL
    bare_error = classify_message({"Modelbus-Status": "400"}, 50, streamed=True, at=1.0)
    assert bare_error.kind is Kind.OTHER


def test_a_non_numeric_seq_or_status_is_kept_as_missing() -> None:
    message = classify_message(
        {"Modelbus-Seq": "x", "Modelbus-Stream": "end", "Modelbus-Status": "?"}, 1, streamed=True, at=0
    )
    assert (message.kind, message.seq, message.status) == (Kind.FINAL, None, None)


# ---------------------------------------------------------------- once, twice, never, error


def test_one_200_answer_is_ok() -> None:
    assert outcome_of(record(reply(0.3)), keepalives_promised=True) is Outcome.OK


def test_one_error_answer_is_a_clear_error() -> None:
    assert outcome_of(record(reply(1.0, 502)), keepalives_promised=True) is Outcome.ERROR


def test_a_200_then_a_408_for_the_same_request_is_duplicated() -> None:
    answered_twice = record(reply(0.4), reply(8.0, 408))
    assert outcome_of(answered_twice, keepalives_promised=False) is Outcome.DUPLICATED


def test_a_second_answer_long_after_the_first_still_counts_as_a_duplicate() -> None:
    late_second = record(reply(0.4), reply(TIMEOUT_S + NEVER_GRACE_S + 0.5, 408))
    assert outcome_of(late_second, keepalives_promised=False) is Outcome.DUPLICATED


def test_no_message_at_all_is_never_answered_when_no_keepalives_were_promised() -> None:
    assert outcome_of(record(), keepalives_promised=False) is Outcome.NEVER


def test_silence_while_keepalives_were_promised_is_lost_not_never() -> None:
    assert outcome_of(record(), keepalives_promised=True) is Outcome.LOST_SILENCE


def test_keepalives_until_past_the_cutoff_without_an_answer_is_never_answered() -> None:
    alive = [keepalive(float(t)) for t in range(1, int(TIMEOUT_S + NEVER_GRACE_S) + 2)]
    assert outcome_of(record(*alive), keepalives_promised=True) is Outcome.NEVER


def test_a_stream_that_stops_mid_way_without_a_terminator_is_lost_after_the_max_silence() -> None:
    halted = record(chunk(0.1, 0), chunk(0.15, 1), chunk(0.2, 2), streamed=True)
    assert halted.longest_silence(halted.cutoff) >= MAX_SILENCE_S
    assert outcome_of(halted, keepalives_promised=True) is Outcome.LOST_SILENCE
    assert outcome_of(halted, keepalives_promised=False) is Outcome.NEVER


def test_an_answer_after_the_cutoff_does_not_rescue_a_request() -> None:
    too_late = record(reply(TIMEOUT_S + NEVER_GRACE_S + 0.1))
    assert outcome_of(too_late, keepalives_promised=False) is Outcome.NEVER


def test_a_stream_numbered_zero_to_n_in_order_with_a_200_end_is_ok() -> None:
    stream = record(chunk(0.1, 0), keepalive(0.5, streamed=True), chunk(0.6, 1), end(0.7, 2), streamed=True)
    assert outcome_of(stream, keepalives_promised=True) is Outcome.OK


@pytest.mark.parametrize(
    "messages",
    [
        [chunk(0.1, 0), chunk(0.2, 2), end(0.3, 3)],  # a gap
        [chunk(0.1, 1), chunk(0.2, 0), end(0.3, 2)],  # reordered
        [chunk(0.1, 0), chunk(0.2, 0), end(0.3, 2)],  # a repeat
        [chunk(0.1, 0), chunk(0.2, 1), end(0.3, 7)],  # the end's seq does not follow
    ],
    ids=["gap", "reordered", "repeat", "end-seq"],
)
def test_a_stream_with_a_200_end_but_broken_numbering_is_a_bad_stream(messages: list[WireMessage]) -> None:
    assert outcome_of(record(*messages, streamed=True), keepalives_promised=True) is Outcome.BAD_STREAM


def test_an_error_terminator_ends_a_stream_whatever_its_seq() -> None:
    broken_off = record(chunk(0.1, 0), chunk(0.2, 1), end(1.4, 0, status=502), streamed=True)
    assert outcome_of(broken_off, keepalives_promised=True) is Outcome.ERROR


def test_two_terminators_on_one_stream_are_duplicated() -> None:
    twice = record(chunk(0.1, 0), end(0.2, 1), end(8.0, 1, status=408), streamed=True)
    assert outcome_of(twice, keepalives_promised=True) is Outcome.DUPLICATED


def test_a_no_responders_status_counts_as_a_clear_error() -> None:
    refused = record(classify_message({"Status": "503"}, 0, streamed=False, at=0.01))
    assert outcome_of(refused, keepalives_promised=True) is Outcome.ERROR


# ---------------------------------------------------------------- a fault's figures


def test_recovery_is_the_start_of_the_last_failure_after_the_fault() -> None:
    fault = 10.0
    records = [
        record(reply(9.8), started=9.5, rid="before"),
        record(reply(10.6, 502), started=10.1, rid="failed-1"),
        record(reply(11.0), started=10.4, rid="ok-1"),
        record(started=10.9, rid="never"),
        record(reply(11.5), started=11.2, rid="ok-2"),
        record(reply(12.0), started=11.7, rid="ok-3"),
    ]
    outcomes = {r.request_id: outcome_of(r, keepalives_promised=False) for r in records}
    assert recovery_s(records, outcomes, fault) == pytest.approx(0.9)


def test_recovery_is_zero_when_every_request_after_the_fault_succeeded() -> None:
    records = [record(reply(10.5), started=10.2, rid="a"), record(reply(11.0), started=10.7, rid="b")]
    outcomes = {r.request_id: Outcome.OK for r in records}
    assert recovery_s(records, outcomes, 10.0) == 0.0


def test_no_success_after_the_last_failure_means_not_recovered() -> None:
    records = [record(reply(10.5), started=10.2, rid="a"), record(started=10.7, rid="b")]
    outcomes = {r.request_id: outcome_of(r, keepalives_promised=False) for r in records}
    assert recovery_s(records, outcomes, 10.0) is None


def test_nearest_rank_p99_treats_unanswered_as_infinite() -> None:
    assert nearest_rank([float(i) for i in range(1, 101)], 99) == 99.0
    assert nearest_rank([1.0] * 98 + [math.inf, math.inf], 99) == math.inf
    assert nearest_rank([1.0] * 99 + [math.inf], 99) == 1.0
    assert nearest_rank([], 99) is None


def test_figures_count_each_request_once_and_measure_the_requests_in_flight_at_the_fault() -> None:
    fault = 10.0
    records = [
        record(reply(9.4), started=9.0, rid="done-before"),
        record(reply(10.8), started=9.8, rid="in-flight-ok"),
        record(reply(10.5), reply(17.8, 408), started=9.9, rid="in-flight-twice"),
        record(started=9.95, rid="in-flight-never"),
        record(reply(10.4), started=10.1, rid="after-ok"),
        record(reply(10.3, 503), started=10.2, rid="after-error"),
        record(reply(11.0), started=10.6, rid="after-ok-2"),
    ]
    result = figures(records, fault, keepalives_promised=False)
    assert result.sent == 7
    assert result.counts == {
        "ok": 4,
        "error": 1,
        "lost_silence": 0,
        "never": 1,
        "duplicated": 1,
        "bad_stream": 0,
    }
    assert result.failed
    assert sum(result.streamed_counts.values()) == 0
    assert result.in_flight_at_fault == 3
    assert result.in_flight_ok == 1
    assert result.in_flight_p99_s == math.inf  # two of three in flight never ended OK
    assert result.after_fault_started == 3
    assert result.after_fault_p99_ms == pytest.approx(400.0)
    assert result.recovery_s == pytest.approx(0.2)
    assert result.strays == 0


def test_a_stream_that_sent_content_before_the_fault_is_in_flight_but_not_retryable() -> None:
    fault = 10.0
    records = [
        record(chunk(9.8, 0), end(10.9, 1, 502), started=9.5, streamed=True, rid="committed"),
        record(chunk(10.3, 0), end(10.6, 1), started=9.9, streamed=True, rid="not-yet-streaming"),
        record(reply(11.5), started=9.7, rid="completion"),
    ]
    result = figures(records, fault, keepalives_promised=False)
    assert (result.in_flight_at_fault, result.in_flight_ok) == (3, 2)
    assert result.in_flight_p99_s == math.inf  # the committed stream ended in an error
    assert (result.retryable_at_fault, result.retryable_ok) == (2, 2)
    assert result.retryable_p99_s == pytest.approx(1.5)


def test_messages_after_the_final_answer_are_counted_as_strays() -> None:
    chatty = record(reply(0.3), keepalive(0.9), keepalive(1.9))
    result = figures([chatty], 0.1, keepalives_promised=True)
    assert (result.counts["ok"], result.strays, result.failed) == (1, 2, False)


def test_streamed_requests_are_also_counted_apart() -> None:
    stream = record(chunk(0.1, 0), end(0.2, 1), streamed=True, rid="s")
    result = figures([stream, record(reply(0.3), rid="n")], 0.0, keepalives_promised=True)
    assert (result.counts["ok"], result.streamed_counts["ok"]) == (2, 1)


def test_an_answer_after_five_seconds_of_silence_is_a_silence_breach() -> None:
    slow = record(reply(6.0))
    result = figures([slow], 0.0, keepalives_promised=True)
    assert (result.counts["ok"], result.silence_breaches) == (1, 1)


def test_a_reply_naming_another_request_id_is_misrouted() -> None:
    crossed = record(
        classify_message({"Modelbus-Status": "200", "Modelbus-Request-Id": "other"}, 5, streamed=False, at=0.2)
    )
    assert figures([crossed], 0.0, keepalives_promised=True).misrouted == 1


def test_the_json_of_a_figure_marks_infinite_percentiles_as_unanswered() -> None:
    data = figures([record(started=0.5)], 0.0, keepalives_promised=False).as_json()
    assert data["never"] == 1 and data["contract_broken"] is True
    assert data["after_fault_p99_ms"] is None and data["after_fault_p99_unanswered"] is True
    assert data["recovered"] is False
