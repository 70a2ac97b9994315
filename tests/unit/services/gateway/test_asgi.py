"""HTTP headers to NATS headers and back, request ids, deadlines and the body limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.gateway.asgi import nats_headers, read_body, request_id_of, response_headers, timeout_ms_of
from shared import headers as H
from shared.errors import InvalidRequest, PayloadTooLarge


def test_the_modelbus_request_headers_become_the_nats_headers_a_router_reads() -> None:
    http = {
        b"x-modelbus-agent": b"team-a/coder",
        b"x-modelbus-run-id": b"run-7",
        b"x-modelbus-sensitivity": b"confidential",
        b"authorization": b"Bearer mb-secret",
        b"x-api-key": b"mb-secret",
    }
    out = nats_headers(http, "req-1", 1500)
    assert out == {
        H.REQUEST_ID: "req-1",
        H.KEEPALIVE: "1",
        H.TIMEOUT_MS: "1500",
        H.AGENT: "team-a/coder",
        H.RUN_ID: "run-7",
        H.SENSITIVITY: "confidential",
    }
    assert "mb-secret" not in repr(out)  # the key stays at the edge


def test_a_header_that_is_not_ascii_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        nats_headers({b"x-modelbus-agent": "agént".encode()}, "r", 1000)
    assert caught.value.param == "x-modelbus-agent"


def test_the_timeout_header_follows_the_nats_rule_and_its_error_names_the_http_header() -> None:
    assert timeout_ms_of({}, 60_000) == 60_000
    assert timeout_ms_of({b"x-modelbus-timeout-ms": b"2500"}, 60_000) == 2500
    with pytest.raises(InvalidRequest) as caught:
        timeout_ms_of({b"x-modelbus-timeout-ms": b"-1"}, 60_000)
    assert caught.value.param == "x-modelbus-timeout-ms"
    assert "x-modelbus-timeout-ms must be" in caught.value.message


def test_a_plain_client_request_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_of({b"x-request-id": b"req_abc-1.2:3"}) == "req_abc-1.2:3"
    for bad in (b"", b"a b", b"x" * 129, b"\xff"):
        replaced = request_id_of({b"x-request-id": bad})
        assert len(replaced) == 32 and replaced != bad.decode("latin-1")


def test_a_reply_s_routing_headers_become_response_headers() -> None:
    reply = {H.ENDPOINT: "mock", H.MODEL: "mock-1", H.ATTEMPTS: "2", H.REQUEST_ID: "req-9", H.ROUTER: "r1"}
    assert response_headers(reply, "ignored") == [
        (b"x-modelbus-endpoint", b"mock"),
        (b"x-modelbus-model", b"mock-1"),
        (b"x-modelbus-attempts", b"2"),
        (b"x-request-id", b"req-9"),
    ]
    assert response_headers({}, "req-own", anthropic=True) == [
        (b"x-request-id", b"req-own"),
        (b"request-id", b"req-own"),
    ]


def _receiver(*parts: bytes) -> Any:
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return receive


def test_a_body_in_several_parts_is_joined() -> None:
    assert asyncio.run(read_body(_receiver(b"ab", b"cd", b"e"), {}, 5)) == b"abcde"


def test_a_body_over_the_limit_is_refused_while_reading_or_by_its_declared_length() -> None:
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(_receiver(b"abc", b"def"), {}, 5))
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(_receiver(b"abcdef"), {}, 5))
    with pytest.raises(PayloadTooLarge, match="is 10 bytes; the limit is 5"):
        asyncio.run(read_body(_receiver(), {b"content-length": b"10"}, 5))  # nothing read at all
