"""HTTP boundary helpers: retry hints, upstream messages, transport failures and the pooled client."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

from services.providers.http import (
    UpstreamClient,
    _environment_proxy,
    parse_retry_after,
    status_error,
    transport_error,
    upstream_message,
)
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


def test_anthropic_rate_limit_reset_times_are_a_fallback_retry_hint() -> None:
    import datetime as dt

    from services.providers.http import parse_retry_after

    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)).isoformat().replace("+00:00", "Z")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=50)).isoformat().replace("+00:00", "Z")
    hint = parse_retry_after({"anthropic-ratelimit-requests-reset": soon, "anthropic-ratelimit-tokens-reset": later})
    assert hint is not None and 45 <= hint <= 50
    assert parse_retry_after({"retry-after": "3", "anthropic-ratelimit-tokens-reset": later}) == 3.0
    assert parse_retry_after({"anthropic-ratelimit-tokens-reset": "not a time"}) is None


# ---------------------------------------------------------------- UpstreamClient


def test_the_upstream_client_sends_default_headers_the_adapter_can_override_and_the_call_timeout() -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async def scenario() -> httpx.Response:
        client = UpstreamClient(timeout_s=30, transport=httpx.MockTransport(upstream))
        reply = await client.post(
            "https://api.example.com/v1/x", content=b"{}", headers={"user-agent": "mine"}, timeout=2.5
        )
        await client.aclose()
        return reply

    reply = asyncio.run(scenario())
    assert reply.json() == {"ok": True}
    assert reply.request is seen[0]  # error mapping may look at the request
    assert seen[0].headers["user-agent"] == "mine"
    assert seen[0].headers["accept-encoding"] == "gzip, deflate"
    assert seen[0].extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


def test_the_upstream_client_runs_the_check_before_sending_and_refuses_after_close() -> None:
    sent: list[str] = []
    checked: list[str] = []

    async def check(url: str) -> None:
        checked.append(url)
        if "internal" in url:
            raise PermissionError(url)

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(200)

    async def scenario() -> None:
        client = UpstreamClient(timeout_s=30, check=check, transport=httpx.MockTransport(upstream))
        async with client.stream("POST", "https://api.example.com/v1/s", content=b"{}") as response:
            assert response.status_code == 200
        with pytest.raises(PermissionError):
            await client.post("https://internal.example.com/v1/s")
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.post("https://api.example.com/v1/s")

    asyncio.run(scenario())
    assert checked == ["https://api.example.com/v1/s", "https://internal.example.com/v1/s"]
    assert sent == ["https://api.example.com/v1/s"]


def test_the_proxy_comes_from_the_environment_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    assert _environment_proxy("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example.com")
    assert _environment_proxy("https://api.openai.com/v1") == "http://proxy.corp:3128"
    assert _environment_proxy("https://internal.example.com/v1") is None
    assert _environment_proxy("http://api.openai.com/v1") is None  # no proxy for plain http


def test_requests_in_flight_spread_over_the_shards_and_a_lone_request_always_uses_the_first() -> None:
    async def scenario() -> None:
        client = UpstreamClient(timeout_s=30, shards=4)
        assert [client._pick("http://127.0.0.1:9/v1") for _ in range(6)] == [0, 1, 2, 3, 0, 1]
        assert client.in_flight == 6
        client._busy = [0] * 4
        for _ in range(3):  # one at a time: the same (warm) pool every time
            assert client._pick("http://127.0.0.1:9/v1") == 0
            client._busy[0] -= 1
        await client.aclose()

    asyncio.run(scenario())


def test_a_refused_connection_is_an_httpx_connect_error_and_leaves_no_shard_busy() -> None:
    async def scenario() -> int:
        client = UpstreamClient(timeout_s=5)
        with pytest.raises(httpx.ConnectError):
            await client.post("http://127.0.0.1:9/v1", content=b"{}")  # the discard port: refused
        await client.aclose()
        return client.in_flight

    assert asyncio.run(scenario()) == 0


async def _serve_once(reply: bytes) -> tuple[asyncio.AbstractServer, str, list[bytes]]:
    """A one-shot HTTP/1.1 server on loopback that records the request head and sends ``reply``."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        await reader.readexactly(length)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat", heads


def test_the_pool_path_sends_host_and_length_and_decodes_a_gzipped_answer() -> None:
    import gzip

    body = gzip.compress(b'{"ok": true}')
    reply = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    async def scenario() -> tuple[httpx.Response, list[bytes], int]:
        server, url, heads = await _serve_once(reply)
        client = UpstreamClient(timeout_s=5)
        response = await client.post(url, content=b'{"q": 1}', headers={"content-type": "application/json"})
        await client.aclose()
        server.close()
        return response, heads, client.in_flight

    response, heads, in_flight = asyncio.run(scenario())
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert in_flight == 0
    head = heads[0].lower()
    assert head.startswith(b"post /v1/chat http/1.1")
    assert b"\r\nhost: 127.0.0.1:" in head and b"\r\ncontent-length: 8" in head
    assert b"\r\ncontent-type: application/json" in head and b"\r\nuser-agent: modelbus" in head


def test_a_stream_cut_short_is_an_httpx_error_and_the_shard_is_released() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 1000\r\n\r\ndata: {}\n\n"

    async def scenario() -> tuple[list[str], int]:
        server, url, _ = await _serve_once(reply)
        client = UpstreamClient(timeout_s=5)
        lines: list[str] = []
        with pytest.raises(httpx.HTTPError):
            async with client.stream("POST", url, content=b"{}") as response:
                async for line in response.aiter_lines():
                    lines.append(line)
        await client.aclose()
        server.close()
        return lines, client.in_flight

    lines, in_flight = asyncio.run(scenario())
    assert lines[:1] == ["data: {}"]
    assert in_flight == 0
