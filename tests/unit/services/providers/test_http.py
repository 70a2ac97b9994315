"""HTTP boundary helpers: retry hints, upstream messages, transport failures, and the client on a test transport."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from services.providers.http import (
    UpstreamClient,
    parse_retry_after,
    status_error,
    transport_error,
    upstream_message,
)
from services.providers.response import UpstreamResponse
from services.providers.ssrf import PrivateAddressRefused, SsrfGuard
from shared.errors import RateLimited, UpstreamTimeout, UpstreamUnavailable

SECRET_URL = "https://generativelanguage.example.com/v1/models/m:generate?key=SECRET"

# ---------------------------------------------------------------- parse_retry_after


def test_retry_after_ms_is_read_in_milliseconds() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "30"}) == 0.25


def test_an_unreadable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0


@pytest.mark.parametrize(("value", "seconds"), [("7", 7.0), ("0.5", 0.5), ("0", 0.0), ("-3", 0.0)])
def test_retry_after_in_seconds_is_read_and_never_negative(value: str, seconds: float) -> None:
    assert parse_retry_after({"retry-after": value}) == seconds


def test_retry_after_as_an_http_date_is_the_time_left_until_then() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = parse_retry_after({"retry-after": when})
    assert seconds is not None
    assert 110 <= seconds <= 121


def test_retry_after_as_a_past_http_date_means_no_wait() -> None:
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


@pytest.mark.parametrize("headers", [{}, {"retry-after": ""}, {"retry-after": "whenever"}, {"retry-after-ms": "x"}])
def test_a_missing_or_garbage_retry_hint_is_none(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers) is None


def test_retry_after_is_read_from_real_httpx_headers_case_insensitively() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "4"})) == 4.0


# ---------------------------------------------------------------- upstream_message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error": {"message": "Incorrect API key provided",'
            b' "type": "invalid_request_error", "code": "invalid_api_key"}}',
            "Incorrect API key provided",
        ),
        (b'{"error": {"message": "quota", "code": 429}}', "quota"),
        (b'{"error": "model overloaded"}', "model overloaded"),
        (b'{"message": "top-level message"}', "top-level message"),
    ],
)
def test_the_provider_message_is_taken_from_a_json_error_body(body: bytes, message: str) -> None:
    assert upstream_message(body, 400) == message


def test_a_non_json_body_is_passed_on_trimmed_and_short() -> None:
    assert upstream_message(b"  <html>Bad Gateway</html>\n", 502) == "<html>Bad Gateway</html>"
    assert len(upstream_message(b"x" * 10_000, 502)) == 200


@pytest.mark.parametrize("body", [b"", b"   ", b"{}", b'{"error": {"message": ""}}', b'{"error": null}'])
def test_a_body_without_a_message_falls_back_to_the_status(body: bytes) -> None:
    assert upstream_message(body, 503) == "HTTP 503"


def test_a_json_body_of_another_shape_is_still_passed_on() -> None:
    assert upstream_message(b"[1, 2]", 400) == "[1, 2]"


def test_a_body_that_is_not_utf8_does_not_raise() -> None:
    assert isinstance(upstream_message(b"\xff\xfe\x00oops", 500), str)


def test_an_error_status_becomes_a_typed_error_with_provider_message_and_retry_hint() -> None:
    response = httpx.Response(429, headers={"retry-after": "3"})
    err = status_error(response, b'{"error": {"message": "slow down"}}', provider="openai", model="gpt-x")
    assert isinstance(err, RateLimited)
    assert err.retry_after == 3.0
    assert err.message == "openai returned 429: slow down"
    assert (err.provider, err.model) == ("openai", "gpt-x")


# ---------------------------------------------------------------- transport_error


def secret_request() -> httpx.Request:
    return httpx.Request("POST", SECRET_URL)


@pytest.mark.parametrize("exc_type", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout])
def test_an_httpx_timeout_is_a_retryable_upstream_timeout(
    exc_type: type[httpx.TimeoutException],
) -> None:
    exc = exc_type(f"timed out talking to {SECRET_URL}", request=secret_request())
    err = transport_error(exc, endpoint="gemini-main", provider="gemini", model="m")
    assert isinstance(err, UpstreamTimeout)
    assert err.retryable is True
    assert err.http_status == 504
    assert "gemini-main" in err.message
    assert (err.provider, err.model) == ("gemini", "m")


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError])
def test_a_connection_failure_is_a_retryable_upstream_unavailable(
    exc_type: type[httpx.TransportError],
) -> None:
    exc = exc_type(f"failed on {SECRET_URL}", request=secret_request())
    err = transport_error(exc, endpoint="gemini-main", provider="gemini", model="m")
    assert isinstance(err, UpstreamUnavailable)
    assert err.retryable is True
    assert "gemini-main" in err.message


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ReadTimeout])
def test_a_transport_error_never_repeats_the_request_url(
    exc_type: type[httpx.TransportError],
) -> None:
    exc = exc_type(f"[Errno 111] Connection refused: {SECRET_URL}", request=secret_request())
    err = transport_error(exc, endpoint="gemini-main", provider="gemini", model="m")
    assert "SECRET" not in err.message
    assert "SECRET" not in err.to_json().decode()
    assert "SECRET" not in repr(err)


def test_vendor_rate_limit_reset_headers_are_not_a_generic_retry_hint() -> None:
    # Anthropic's reset times are read by its adapter (tests/unit/services/providers/test_anthropic.py).
    assert parse_retry_after({"anthropic-ratelimit-tokens-reset": "2099-01-01T00:00:00Z"}) is None


def test_the_client_s_own_errors_keep_their_reason_and_it_names_no_url() -> None:
    from services.providers.transport_errors import ReadTimedOut, TLSVerifyFailed

    tls = transport_error(
        TLSVerifyFailed("TLS certificate of api.example.com did not verify: certificate has expired"),
        endpoint="openai-main",
        provider="openai",
        model="m",
    )
    assert isinstance(tls, UpstreamUnavailable)
    assert tls.message == "openai-main: TLS certificate of api.example.com did not verify: certificate has expired"
    slow = transport_error(ReadTimedOut("no answer within 2s"), endpoint="e", provider="openai", model="m")
    assert isinstance(slow, UpstreamTimeout) and slow.message == "e: no answer within 2s"


# ---------------------------------------------------------------- UpstreamClient (on an httpx transport)


def test_the_upstream_client_sends_default_headers_the_adapter_can_override_and_the_call_timeout() -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async def scenario() -> UpstreamResponse:
        client = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(upstream))
        reply = await client.post(
            "https://api.example.com/v1/x", content=b"{}", headers={"User-Agent": "mine"}, timeout=2.5
        )
        assert client.in_flight == 0
        await client.aclose()
        return reply

    reply = asyncio.run(scenario())
    assert reply.json() == {"ok": True}
    assert reply.headers["Content-Type"] == "application/json"
    assert seen[0].headers["user-agent"] == "mine"
    assert seen[0].headers["accept-encoding"] == "gzip, deflate"
    assert seen[0].extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


def test_the_upstream_client_runs_the_guard_before_sending_and_refuses_after_close() -> None:
    sent: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        return {"api.example.com": ["93.184.216.34"], "internal.example.com": ["10.0.0.7"]}[host]

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(200)

    async def scenario() -> None:
        guard = SsrfGuard("ep", allow_private=False, resolver=resolve)
        client = UpstreamClient(timeout_s=30, guard=guard, transport=httpx.MockTransport(upstream))
        async with client.stream("POST", "https://api.example.com/v1/s", content=b"{}") as response:
            assert response.status_code == 200
        with pytest.raises(PrivateAddressRefused):
            await client.post("https://internal.example.com/v1/s")
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.post("https://api.example.com/v1/s")

    asyncio.run(scenario())
    assert sent == ["https://api.example.com/v1/s"]


def test_a_streamed_transport_answer_is_decoded_like_the_network_s() -> None:
    import gzip

    async def body() -> AsyncIterator[bytes]:
        packed = gzip.compress(b"data: one\n\ndata: two\n\n")
        yield packed[:10]
        yield packed[10:]

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=_Stream(body()))

    async def scenario() -> list[str]:
        client = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(upstream))
        async with client.stream("POST", "https://api.example.com/v1/s", content=b"{}") as response:
            lines = [line async for line in response.aiter_lines()]
        await client.aclose()
        return lines

    assert asyncio.run(scenario()) == ["data: one", "", "data: two", ""]


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk
