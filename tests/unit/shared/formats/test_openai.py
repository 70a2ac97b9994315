"""What an OpenAI-format ingress writes back: errors in OpenAI's shape and status, and the
stream as server-sent events.

The chunk examples are the streaming example of OpenAI's API reference ("The chat completion
chunk object", https://platform.openai.com/docs/api-reference/chat-streaming). The tests
marked with the SDKs build the ``httpx.Response`` an ingress would send and hand it to the
official SDK's own status-error and stream code, with no network; they are skipped where
the SDK is not installed.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from shared.chat import ChatCompletionChunk
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
    ProviderError,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_status,
    unsupported,
)
from shared.formats import openai

# ---------------------------------------------------------------- documented chunks

DOCUMENTED_CHUNKS = [
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
    },
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}],
    },
    {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    },
]


def chunks() -> list[ChatCompletionChunk]:
    return [openai.chunk_from_native(json.dumps(c).encode()) for c in DOCUMENTED_CHUNKS]


def sse_data(stream: bytes) -> list[bytes]:
    """The data of each event of a stream, framed as the SSE spec says (events end with a blank line)."""
    assert stream.endswith(b"\n\n")
    events = stream[:-2].split(b"\n\n")
    out = []
    for event in events:
        lines = event.split(b"\n")
        assert len(lines) == 1 and lines[0].startswith(b"data: "), event
        out.append(lines[0].removeprefix(b"data: "))
    return out


def error_classes() -> set[type[ModelbusError]]:
    """Every class of the error tree, those living in a service included (they are drawn in
    shared/errors.py's tree; importing their modules has no side effect)."""
    for module in (
        "services.providers.ssrf",
        "services.providers.credentials",
        "services.config.audit_chain",
        "services.secrets.service",
        "services.secrets.vault",
    ):
        importlib.import_module(module)
    out: set[type[ModelbusError]] = {ModelbusError}
    todo: list[type[ModelbusError]] = [ModelbusError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if not sub.__module__.startswith("tests") and sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


def body_of(err: ModelbusError) -> dict[str, Any]:
    _, _, body = openai.error_to_native(err)
    decoded: dict[str, Any] = json.loads(body)
    return decoded


# ---------------------------------------------------------------- errors: status and body


def test_an_error_answer_is_openai_s_error_object_with_modelbus_s_type_and_code() -> None:
    err = NotFound("model 'gpt-9' is not an alias, endpoint or endpoint/model", param="model")
    status, _, _ = openai.error_to_native(err)
    assert status == 404
    assert body_of(err) == {
        "error": {
            "message": "model 'gpt-9' is not an alias, endpoint or endpoint/model",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_param_and_code_are_sent_as_null_when_the_error_has_none() -> None:
    assert body_of(ModelbusError("boom")) == {
        "error": {"message": "boom", "type": "internal_error", "param": None, "code": None}
    }


def test_retryable_is_not_in_the_body_because_openai_s_object_has_no_such_field() -> None:
    assert set(body_of(RateLimited("slow down"))["error"]) == {"message", "type", "param", "code"}


def test_an_unsupported_parameter_names_the_field_in_param_and_code() -> None:
    error = body_of(unsupported("logit_bias", "the endpoint has none"))["error"]
    assert (error["param"], error["code"], error["type"]) == (
        "logit_bias",
        "unsupported_parameter",
        "invalid_request_error",
    )


def test_a_rate_limit_tells_the_client_to_wait_whole_seconds_rounded_up_and_exact_milliseconds() -> None:
    status, headers, _ = openai.error_to_native(RateLimited("slow down", retry_after=1.2))
    assert status == 429
    assert headers["retry-after"] == "2"
    assert headers["retry-after-ms"] == "1200"


def test_a_whole_second_hint_is_not_rounded_further() -> None:
    _, headers, _ = openai.error_to_native(UpstreamUnavailable("down", retry_after=3.0))
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("3", "3000")


def test_a_negative_hint_says_come_back_now_rather_than_in_the_past() -> None:
    _, headers, _ = openai.error_to_native(RateLimited("slow down", retry_after=-2.0))
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("0", "0")


def test_no_retry_headers_are_sent_when_the_error_has_no_hint() -> None:
    _, headers, _ = openai.error_to_native(RateLimited("slow down"))
    assert "retry-after" not in headers and "retry-after-ms" not in headers


def test_the_request_id_header_is_left_to_the_edge() -> None:
    _, headers, _ = openai.error_to_native(RateLimited("slow down", retry_after=1))
    assert set(headers) == {"x-should-retry", "retry-after", "retry-after-ms"}


@pytest.mark.parametrize(
    ("err", "should_retry"),
    [
        (RateLimited("slow down"), "true"),
        (NoRouteAvailable("every target is down"), "true"),
        (BadUpstreamResponse("the upstream answered garbage"), "false"),
        (Conflict("revision moved on"), "false"),
        (InvalidRequest("bad"), "false"),
        (BadUpstreamResponse("flaky", retryable=True), "true"),
    ],
)
def test_x_should_retry_follows_the_error_s_retryable_flag(err: ModelbusError, should_retry: str) -> None:
    _, headers, _ = openai.error_to_native(err)
    assert headers["x-should-retry"] == should_retry


def test_a_missed_deadline_is_answered_as_a_gateway_timeout_not_http_s_408() -> None:
    status, _, body = openai.error_to_native(DeadlineExceeded("no answer within 2000 ms"))
    assert status == 504
    assert json.loads(body)["error"]["type"] == "timeout_error"


@pytest.mark.parametrize("upstream_status", [200, 302, 399, 600])
def test_an_upstream_failure_with_a_status_outside_the_error_range_is_answered_502(upstream_status: int) -> None:
    err = error_from_status(upstream_status, "odd")
    assert openai.http_error_status(err) == 502
    assert openai.http_error_status(ProviderError("odd", status=upstream_status)) == 502


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (InvalidRequest("bad"), 400),
        (ConfigError("endpoint 'x' has no base_url"), 400),
        (AuthenticationError("unknown key"), 401),
        (AuthFailed("upstream refused the key", status=403), 403),
        (PolicyDenied("model not allowed"), 403),
        (NotFound("no such alias"), 404),
        (Conflict("revision moved on"), 409),
        (PayloadTooLarge("body over 10 MiB"), 413),
        (BadUpstreamRequest("unprocessable", status=422), 422),
        (RateLimited("slow down"), 429),
        (ModelbusError("boom"), 500),
        (BadUpstreamResponse("garbage"), 502),
        (UpstreamUnavailable("down", status=502), 502),
        (NoRouteAvailable("every target is down"), 503),
        (UpstreamUnavailable("down"), 503),
        (UpstreamTimeout("slow upstream"), 504),
    ],
)
def test_an_error_is_answered_with_its_own_status(err: ModelbusError, status: int) -> None:
    assert openai.error_to_native(err)[0] == status


def test_every_class_of_the_error_tree_gets_an_error_status_and_its_own_type() -> None:
    classes = error_classes()
    assert len(classes) >= 25
    for cls in classes:
        err = cls("failed")
        status, headers, body = openai.error_to_native(err)
        assert 400 <= status <= 599 and status != 408, cls
        error = json.loads(body)["error"]
        assert error["type"] == cls.type and error["type"], cls
        assert error["code"] == err.code, cls
        assert headers["x-should-retry"] == ("true" if err.retryable else "false"), cls


# ---------------------------------------------------------------- streams


def test_a_documented_chunk_is_one_data_event_that_reads_back_as_the_same_chunk() -> None:
    for chunk in chunks():
        (data,) = sse_data(openai.sse_chunk(chunk))
        assert openai.chunk_from_native(data) == chunk


def test_a_stream_is_its_chunks_then_data_done() -> None:
    stream = b"".join(openai.sse_chunk(c) for c in chunks()) + openai.SSE_DONE
    data = sse_data(stream)
    assert data[-1] == b"[DONE]"
    assert [json.loads(d) for d in data[:-1]] == [json.loads(openai.chunk_to_native(c)) for c in chunks()]


def test_a_stream_that_fails_late_ends_with_a_data_event_holding_the_error_object() -> None:
    (data,) = sse_data(openai.sse_error(UpstreamUnavailable("the upstream went away", provider="openai")))
    assert json.loads(data) == {
        "error": {
            "message": "the upstream went away",
            "type": "api_error",
            "param": None,
            "code": "upstream_unavailable",
        }
    }
    assert openai.is_error_object(data)


# ---------------------------------------------------------------- the official SDK


@pytest.fixture(scope="module")
def sdk() -> ModuleType:
    module: ModuleType = pytest.importorskip("openai")
    return module


def _http(sdk: ModuleType) -> Any:
    """The HTTP library the SDK is built on (httpx, or httpx2 from openai 3)."""
    base = importlib.import_module(f"{sdk.__name__}._base_client")
    return sys.modules.get("httpx2") if hasattr(base, "httpx2") else base.httpx


@pytest.fixture(scope="module")
def client(sdk: ModuleType) -> Iterator[Any]:
    client = sdk.OpenAI(api_key="mb-test", base_url="http://127.0.0.1:9/v1", max_retries=0)
    yield client
    client.close()


def response(sdk: ModuleType, status: int, headers: dict[str, str], body: bytes) -> Any:
    http = _http(sdk)
    request = http.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    return http.Response(status, headers={**headers, "content-type": "application/json"}, content=body, request=request)


SDK_CLASSES = [
    (InvalidRequest("bad"), "BadRequestError"),
    (ConfigError("endpoint 'x' has no base_url"), "BadRequestError"),
    (AuthenticationError("unknown key"), "AuthenticationError"),
    (PolicyDenied("model not allowed"), "PermissionDeniedError"),
    (NotFound("no such alias"), "NotFoundError"),
    (Conflict("revision moved on"), "ConflictError"),
    (PayloadTooLarge("body over 10 MiB"), "APIStatusError"),
    (BadUpstreamRequest("unprocessable", status=422), "UnprocessableEntityError"),
    (RateLimited("slow down", retry_after=1.5), "RateLimitError"),
    (ModelbusError("boom"), "InternalServerError"),
    (BadUpstreamResponse("garbage"), "InternalServerError"),
    (NoRouteAvailable("every target is down", retry_after=2.0), "InternalServerError"),
    (UpstreamTimeout("slow upstream"), "InternalServerError"),
    (DeadlineExceeded("no answer within 2000 ms"), "InternalServerError"),
]


@pytest.mark.parametrize(("err", "sdk_class"), SDK_CLASSES, ids=[type(e).__name__ for e, _ in SDK_CLASSES])
def test_the_openai_sdk_raises_its_matching_exception_with_modelbus_s_type_code_and_param(
    sdk: ModuleType, client: Any, err: ModelbusError, sdk_class: str
) -> None:
    status, headers, body = openai.error_to_native(err)
    answer = response(sdk, status, headers, body)
    exc = client._make_status_error_from_response(answer)
    assert isinstance(exc, getattr(sdk, sdk_class))
    assert exc.status_code == status
    assert (exc.type, exc.code, exc.param) == (err.type, err.code, err.param)
    assert client._should_retry(answer) is err.retryable


def test_the_openai_sdk_waits_as_long_as_the_rate_limit_says(sdk: ModuleType, client: Any) -> None:
    status, headers, body = openai.error_to_native(RateLimited("slow down", retry_after=1.5))
    answer = response(sdk, status, headers, body)
    assert client._parse_retry_after_header(answer.headers) == 1.5


def test_the_openai_sdk_reads_the_chunks_and_stops_at_done(sdk: ModuleType, client: Any) -> None:
    stream_body = b"".join(openai.sse_chunk(c) for c in chunks()) + openai.SSE_DONE
    answer = response(sdk, 200, {"content-type": "text/event-stream"}, stream_body)
    read = list(sdk.Stream(cast_to=sdk.types.chat.ChatCompletionChunk, response=answer, client=client))
    assert [c.choices[0].delta.content for c in read] == ["", "Hello", None]
    assert read[-1].choices[0].finish_reason == "stop"


def test_the_openai_sdk_raises_on_a_late_stream_error_with_its_type_and_code(sdk: ModuleType, client: Any) -> None:
    stream_body = openai.sse_chunk(chunks()[1]) + openai.sse_error(UpstreamUnavailable("the upstream went away"))
    answer = response(sdk, 200, {"content-type": "text/event-stream"}, stream_body)
    stream = iter(sdk.Stream(cast_to=sdk.types.chat.ChatCompletionChunk, response=answer, client=client))
    assert next(stream).choices[0].delta.content == "Hello"
    with pytest.raises(sdk.APIError) as caught:
        next(stream)
    assert caught.value.message == "the upstream went away"
    assert (caught.value.type, caught.value.code) == ("api_error", "upstream_unavailable")
