"""What an Anthropic-format ingress writes back besides answers: errors in Anthropic's shape
and status (https://docs.anthropic.com/en/api/errors), and its streams as server-sent events
(https://docs.anthropic.com/en/docs/build-with-claude/streaming).

The documented streams are those of ``test_anthropic``. The tests marked with the SDK build
the ``httpx.Response`` an ingress would send and hand it to the official anthropic SDK's
own status-error and stream code, with no network; they are skipped where the SDK is not
installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from shared.errors import (
    AuthenticationError,
    AuthFailed,
    BadUpstreamRequest,
    BadUpstreamResponse,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    InvalidRequest,
    ModelbusError,
    NoRouteAvailable,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
    RequestLost,
    UpstreamTimeout,
    UpstreamUnavailable,
    WorkerLost,
    error_from_status,
)
from shared.formats import anthropic
from shared.formats import openai as openai_format
from shared.formats.anthropic import wire
from tests.unit.shared.formats.test_anthropic import BASIC_STREAM, THINKING_STREAM, TOOL_STREAM, read, write
from tests.unit.shared.formats.test_openai import error_classes

# Anthropic's documented error types (https://docs.anthropic.com/en/api/errors).
DOCUMENTED_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "conflict_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
}


def answer(err: ModelbusError, request_id: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = anthropic.error_to_native(err, request_id=request_id)
    return status, headers, json.loads(body)


def parse_sse(stream: bytes) -> list[tuple[str, bytes]]:
    """Events as the SSE spec reads them: ``event:`` and ``data:`` lines, a blank line after each."""
    assert stream.endswith(b"\n\n")
    out = []
    for event in stream[:-2].split(b"\n\n"):
        name_line, data_line = event.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: "), event
        out.append((name_line.removeprefix(b"event: ").decode(), data_line.removeprefix(b"data: ")))
    return out


# ---------------------------------------------------------------- errors: status, type, body


def test_an_error_answer_is_anthropic_s_error_shape_with_the_request_id() -> None:
    status, _, body = answer(NotFound("model 'claude-9' is not an alias"), request_id="req_011CSHoEeqs5C35K2UUqR7Fy")
    assert status == 404
    assert body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'claude-9' is not an alias"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


def test_the_request_id_is_left_out_when_unknown() -> None:
    _, _, body = answer(InvalidRequest("messages: at least one"))
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": "messages: at least one"}}


@pytest.mark.parametrize(
    ("err", "status", "error_type"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (ConfigError("endpoint 'x' has no base_url"), 400, "invalid_request_error"),
        (AuthenticationError("unknown key"), 401, "authentication_error"),
        (AuthFailed("upstream refused the key"), 401, "authentication_error"),
        (PolicyDenied("model not allowed"), 403, "permission_error"),
        (AuthFailed("upstream forbids it", status=403), 403, "permission_error"),
        (NotFound("no such alias"), 404, "not_found_error"),
        (BadUpstreamRequest("no such model", status=404), 404, "not_found_error"),
        (Conflict("revision moved on"), 409, "conflict_error"),
        (PayloadTooLarge("body over 32 MB"), 413, "request_too_large"),
        (BadUpstreamRequest("unprocessable", status=422), 422, "invalid_request_error"),
        (RateLimited("slow down"), 429, "rate_limit_error"),
        (ModelbusError("boom"), 500, "api_error"),
        (BadUpstreamResponse("garbage"), 502, "api_error"),
        (WorkerLost("worker went silent"), 502, "api_error"),
        (NoRouteAvailable("every target is down"), 503, "overloaded_error"),
        (UpstreamUnavailable("down"), 503, "overloaded_error"),
        (UpstreamTimeout("slow upstream"), 504, "timeout_error"),
        (RequestLost("nothing for 30 s"), 504, "timeout_error"),
        (DeadlineExceeded("no answer within 2000 ms"), 504, "timeout_error"),
        (error_from_status(529, "Overloaded"), 529, "overloaded_error"),
    ],
)
def test_an_error_gets_the_status_and_the_type_anthropic_documents_for_it(
    err: ModelbusError, status: int, error_type: str
) -> None:
    got_status, _, body = answer(err)
    assert (got_status, body["error"]["type"]) == (status, error_type)


def test_unlisted_client_errors_are_invalid_request_errors_and_unlisted_server_errors_api_errors() -> None:
    assert anthropic.error_type(418) == "invalid_request_error"
    assert anthropic.error_type(507) == "api_error"


def test_an_upstream_failure_with_a_status_outside_the_error_range_is_a_502_api_error() -> None:
    status, _, body = answer(error_from_status(302, "moved"))
    assert (status, body["error"]["type"]) == (502, "api_error")


def test_both_ingresses_answer_one_error_with_one_status_and_the_same_headers() -> None:
    for err in (RateLimited("slow down", retry_after=0.25), DeadlineExceeded("late"), NoRouteAvailable("none")):
        status, headers, _ = anthropic.error_to_native(err)
        openai_status, openai_headers, _ = openai_format.error_to_native(err)
        assert (status, headers) == (openai_status, openai_headers)


def test_a_rate_limit_carries_retry_after_and_retry_after_ms() -> None:
    _, headers, _ = answer(RateLimited("slow down", retry_after=0.25))
    assert headers == {"x-should-retry": "true", "retry-after": "1", "retry-after-ms": "250"}


def test_every_class_of_the_error_tree_gets_a_documented_status_and_type() -> None:
    for cls in error_classes():
        status, _, body = answer(cls("failed"))
        assert 400 <= status <= 599 and status != 408, cls
        assert body["error"]["type"] in DOCUMENTED_TYPES, cls
        assert body["error"]["type"] == anthropic.ERROR_TYPES[status], cls
        assert body["type"] == "error" and body["error"]["message"] == "failed"


def test_every_documented_type_maps_back_to_the_status_it_was_given_for() -> None:
    # wire.ERROR_STATUS reads an upstream's error event; it must agree with what the ingress writes.
    # 502 and 503 are modelbus's additions (Anthropic documents neither).
    for status, error_type in anthropic.ERROR_TYPES.items():
        if status not in (502, 503):
            assert wire.ERROR_STATUS[error_type] == status


# ---------------------------------------------------------------- streams as server-sent events


@pytest.mark.parametrize("stream", [BASIC_STREAM, TOOL_STREAM, THINKING_STREAM])
def test_a_documented_stream_framed_and_parsed_again_is_the_same_events(stream: list[tuple[str, str]]) -> None:
    framed = anthropic.sse_events((name, data.encode()) for name, data in stream)
    assert [(name, json.loads(data)) for name, data in parse_sse(framed)] == [
        (name, json.loads(data)) for name, data in stream
    ]


def test_the_stream_writer_s_events_are_framed_with_their_type_as_the_event_name() -> None:
    events = write(read(TOOL_STREAM))
    parsed = parse_sse(anthropic.sse_events(events))
    assert parsed == events
    assert all(json.loads(data)["type"] == name for name, data in parsed)


def test_one_event_is_one_event_line_one_data_line_and_a_blank_line() -> None:
    data = wire.encoder.encode(wire.ContentBlockStop(index=0))
    assert anthropic.sse_event(("content_block_stop", data)) == (
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    )


def test_a_newline_in_the_text_stays_inside_the_one_data_line() -> None:
    delta = wire.ContentBlockDelta(index=0, delta=wire.BlockDelta(type="text_delta", text="line one\n\nline two"))
    ((_, data),) = parse_sse(anthropic.sse_event(("content_block_delta", wire.encoder.encode(delta))))
    assert json.loads(data)["delta"]["text"] == "line one\n\nline two"


def test_ping_is_the_documented_ping_event() -> None:
    assert parse_sse(anthropic.PING_EVENT) == [("ping", b'{"type":"ping"}')]


def test_a_stream_that_fails_late_ends_with_the_documented_error_event() -> None:
    ((name, data),) = parse_sse(anthropic.error_event(UpstreamUnavailable("Overloaded")))
    assert name == "error"
    assert json.loads(data) == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_the_error_event_reads_back_through_the_stream_reader_as_the_same_type() -> None:
    started = anthropic.sse_events((name, data.encode()) for name, data in BASIC_STREAM[:4])
    framed = started + anthropic.error_event(RateLimited("slow down"))
    with pytest.raises(wire.StreamError) as caught:
        read(parse_sse(framed))
    assert caught.value.type == "rate_limit_error"


def test_the_error_event_carries_the_request_id_when_given() -> None:
    ((_, data),) = parse_sse(anthropic.error_event(ModelbusError("boom"), request_id="req_1"))
    assert json.loads(data)["request_id"] == "req_1"


# ---------------------------------------------------------------- the official SDK


@pytest.fixture(scope="module")
def sdk() -> ModuleType:
    module: ModuleType = pytest.importorskip("anthropic")
    return module


@pytest.fixture(scope="module")
def client(sdk: ModuleType) -> Iterator[Any]:
    client = sdk.Anthropic(api_key="mb-test", base_url="http://127.0.0.1:9", max_retries=0)
    yield client
    client.close()


def response(sdk: ModuleType, status: int, headers: dict[str, str], body: bytes, content_type: str) -> Any:
    base = sdk._base_client
    http = base.httpx2 if hasattr(base, "httpx2") else base.httpx  # anthropic 2 is built on httpx2
    request = http.Request("POST", "http://127.0.0.1:9/v1/messages")
    return http.Response(status, headers={**headers, "content-type": content_type}, content=body, request=request)


SDK_CLASSES = [
    (InvalidRequest("bad"), "BadRequestError"),
    (AuthenticationError("unknown key"), "AuthenticationError"),
    (PolicyDenied("model not allowed"), "PermissionDeniedError"),
    (NotFound("no such alias"), "NotFoundError"),
    (Conflict("revision moved on"), "ConflictError"),
    (PayloadTooLarge("body over 32 MB"), "RequestTooLargeError"),
    (BadUpstreamRequest("unprocessable", status=422), "UnprocessableEntityError"),
    (RateLimited("slow down", retry_after=1.5), "RateLimitError"),
    (ModelbusError("boom"), "InternalServerError"),
    (BadUpstreamResponse("garbage"), "InternalServerError"),
    (NoRouteAvailable("every target is down", retry_after=2.0), "InternalServerError"),
    (UpstreamTimeout("slow upstream"), "InternalServerError"),
    (error_from_status(529, "Overloaded"), "OverloadedError"),
]


@pytest.mark.parametrize(("err", "sdk_class"), SDK_CLASSES, ids=[type(e).__name__ for e, _ in SDK_CLASSES])
def test_the_anthropic_sdk_raises_its_matching_exception_with_the_error_type_and_request_id(
    sdk: ModuleType, client: Any, err: ModelbusError, sdk_class: str
) -> None:
    status, headers, body = anthropic.error_to_native(err, request_id="req_1")
    answer = response(sdk, status, {**headers, "request-id": "req_1"}, body, "application/json")
    exc = client._make_status_error_from_response(answer)
    assert isinstance(exc, getattr(sdk, sdk_class))  # newer SDKs add subclasses (504 GatewayTimeoutError)
    assert exc.status_code == status
    assert exc.type == anthropic.error_type(status)
    assert exc.request_id == "req_1"
    assert client._should_retry(answer) is err.retryable


def test_the_anthropic_sdk_waits_as_long_as_the_rate_limit_says(sdk: ModuleType, client: Any) -> None:
    status, headers, body = anthropic.error_to_native(RateLimited("slow down", retry_after=1.5))
    answer = response(sdk, status, headers, body, "application/json")
    assert client._parse_retry_after_header(answer.headers) == 1.5


def stream_events(sdk: ModuleType, client: Any, body: bytes) -> Iterator[Any]:
    answer = response(sdk, 200, {}, body, "text/event-stream")
    return iter(sdk.Stream(cast_to=sdk.types.RawMessageStreamEvent, response=answer, client=client))


def test_the_anthropic_sdk_reads_the_written_stream_skipping_pings(sdk: ModuleType, client: Any) -> None:
    events = write(read(TOOL_STREAM))
    body = anthropic.sse_events(events[:2]) + anthropic.PING_EVENT + anthropic.sse_events(events[2:])
    read_back = list(stream_events(sdk, client, body))
    assert [e.type for e in read_back] == [name for name, _ in events]
    text = "".join(e.delta.text for e in read_back if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == "".join(json.loads(d)["delta"]["text"] for n, d in TOOL_STREAM if '"text_delta"' in d)
    arguments = "".join(
        e.delta.partial_json
        for e in read_back
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    )
    assert json.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert read_back[-2].delta.stop_reason == "tool_use"


def test_the_anthropic_sdk_raises_on_a_late_error_event_with_its_type(sdk: ModuleType, client: Any) -> None:
    events = write(read(BASIC_STREAM))
    body = anthropic.sse_events(events[:3]) + anthropic.error_event(NoRouteAvailable("every target is down"))
    stream = stream_events(sdk, client, body)
    assert [next(stream).type for _ in range(3)] == ["message_start", "content_block_start", "content_block_delta"]
    with pytest.raises(sdk.APIStatusError) as caught:
        next(stream)
    assert caught.value.type == "overloaded_error"
    assert "every target is down" in caught.value.message
