"""The whole request path over a real nats-server and the real service processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest

from shared import headers as H
from shared.client import ModelbusClient
from shared.envelopes import ProviderCall, provider_call_decoder
from shared.errors import NotFound, UpstreamUnavailable
from shared.natsserver import EmbeddedNats
from shared.subjects import CHAT_COMPLETIONS, provider_queue, provider_subject
from tests.conftest import Stack, run, start_stack, stop_process

CONFIG = Path(__file__).with_name("configs") / "request_path.yaml"
SECRET = "sk-test-value-0123456789"
HELLO = {"role": "user", "content": "hello bus"}


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Workers for a subset of types, so requests to the `claude` endpoint meet no worker at all.
    env = {"UPSTREAM_TEST_KEY": SECRET, "MODELBUS_PROVIDER_TYPES": "mock,openai,openai-compatible"}
    s = start_stack(nats_server.url, CONFIG, tmp_path_factory.mktemp("home"), env=env)
    try:
        yield s
    finally:
        stop_process(s.proc)


async def _raw(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    client = await ModelbusClient.connect(url)
    try:
        reply = await client.request_raw(body, headers=headers, timeout=20)
    finally:
        await client.close()
    return reply.status, reply.headers, json.loads(reply.body)


async def _stream_raw(url: str, request: dict[str, Any]) -> list[tuple[dict[str, str], bytes]]:
    """Every message of a stream as sent on the wire, up to the terminator."""
    client = await ModelbusClient.connect(url)
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish(CHAT_COMPLETIONS, json.dumps(request).encode(), reply=inbox)
    out: list[tuple[dict[str, str], bytes]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=20)
            out.append((dict(msg.headers or {}), msg.data))
            if (msg.headers or {}).get(H.STREAM) == H.STREAM_END:
                return out
    finally:
        await client.close()


def _body(**fields: Any) -> bytes:
    return json.dumps({"messages": [HELLO], **fields}).encode()


def test_alias_is_answered_by_the_mock_with_routing_headers(stack: Stack) -> None:
    status, headers, body = run(_raw(stack.url, _body(model="fast"), {H.REQUEST_ID: "req-42"}))
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "mock:mock-fast says: hello bus"
    assert headers[H.PROVIDER] == "mock"
    assert headers[H.ENDPOINT] == "mock"
    assert headers[H.MODEL] == "mock-fast"
    assert headers[H.ATTEMPTS] == "1"
    assert headers[H.REQUEST_ID] == "req-42"


def test_request_without_model_uses_the_default_alias(stack: Stack) -> None:
    status, headers, _ = run(_raw(stack.url, _body()))
    assert status == 200
    assert headers[H.MODEL] == "mock-default"


def test_endpoint_name_and_endpoint_slash_model_are_routed(stack: Stack) -> None:
    status, headers, _ = run(_raw(stack.url, _body(model="mock")))
    assert (status, headers[H.MODEL]) == (200, "mock-1")
    status, headers, _ = run(_raw(stack.url, _body(model="mock/any-model-name")))
    assert (status, headers[H.MODEL]) == (200, "any-model-name")
    status, headers, _ = run(_raw(stack.url, _body(model="team-a/mock/vendor/model")))
    assert (status, headers[H.ENDPOINT], headers[H.MODEL]) == (200, "team-a/mock", "vendor/model")


def test_unknown_alias_is_a_404_naming_it(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, _body(model="no-such-alias")))
    assert status == 404
    assert "no-such-alias" in body["error"]["message"]
    assert body["error"]["retryable"] is False


def test_malformed_json_is_a_400_and_the_router_keeps_serving(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, b'{"messages": [ this is not json'))
    assert status == 400
    assert body["error"]["code"] == "invalid_json"
    status, _, _ = run(_raw(stack.url, _body(model="fast")))
    assert status == 200


def test_wrong_type_is_a_400_naming_the_field(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, json.dumps({"messages": [{"role": "user", "content": 7}]}).encode()))
    assert status == 400
    assert body["error"]["param"] == "messages[0].content"
    status, _, body = run(_raw(stack.url, _body(temperature=5)))
    assert (status, body["error"]["param"]) == (400, "temperature")


def test_unknown_request_field_is_rejected_rather_than_dropped(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, _body(top_k=3)))
    assert status == 400
    assert "top_k" in body["error"]["message"]


def test_oversized_body_is_a_413(stack: Stack) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}).encode()
    status, _, body = run(_raw(stack.url, big))
    assert status == 413
    assert "limit" in body["error"]["message"]


def test_bad_timeout_header_is_a_400(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, _body(), {H.TIMEOUT_MS: "soon"}))
    assert (status, body["error"]["param"]) == (400, H.TIMEOUT_MS)


def test_unknown_sensitivity_is_a_400_naming_the_header(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, _body(), {H.SENSITIVITY: "secret"}))
    assert (status, body["error"]["param"]) == (400, H.SENSITIVITY)
    status, _, _ = run(_raw(stack.url, _body(), {H.SENSITIVITY: "confidential"}))
    assert status == 200


def test_unknown_agent_is_a_404_naming_it(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, _body(model="fast"), {H.AGENT: "team-a/planner"}))
    assert status == 404
    assert body["error"]["code"] == "agent_not_found"
    assert "team-a/planner" in body["error"]["message"]


def test_retryable_upstream_error_falls_back_to_the_next_target(stack: Stack) -> None:
    status, headers, _ = run(_raw(stack.url, _body(model="resilient")))
    assert status == 200
    assert headers[H.ATTEMPTS] == "2"
    assert headers[H.MODEL] == "mock-backup"


def test_non_retryable_upstream_error_fails_at_once(stack: Stack) -> None:
    status, headers, body = run(_raw(stack.url, _body(model="strict")))
    assert status == 400
    assert headers[H.ATTEMPTS] == "1"
    assert "bad parameter x" in body["error"]["message"]
    assert body["error"]["retryable"] is False


def test_exhausted_chain_returns_the_last_error(stack: Stack) -> None:
    status, headers, body = run(_raw(stack.url, _body(model="all-down")))
    assert status == 503
    assert headers[H.ATTEMPTS] == "4"  # both targets, then max_retries (2) more passes
    assert body["error"]["code"] == "no_provider_worker"
    assert "anthropic" in body["error"]["message"]
    assert body["error"]["retryable"] is True


def test_upstream_retry_after_reaches_the_client(stack: Stack) -> None:
    status, headers, _ = run(_raw(stack.url, _body(model="mock-down")))
    assert status == 503
    assert headers[H.RETRY_AFTER] == "2"


def test_deadline_is_a_408_naming_what_was_tried(stack: Stack) -> None:
    started = time.monotonic()
    status, _, body = run(_raw(stack.url, _body(model="mock-slow"), {H.TIMEOUT_MS: "300"}))
    assert status == 408
    assert "mock-slow" in body["error"]["message"]
    assert time.monotonic() - started < 2.5  # well before the mock's 3 s answer


def test_streaming_sends_ordered_chunks_and_a_clean_end_with_usage(stack: Stack) -> None:
    messages = run(
        _stream_raw(
            stack.url, {"model": "fast", "stream": True, "stream_options": {"include_usage": True}, "messages": [HELLO]}
        )
    )
    assert [int(h[H.SEQ]) for h, _ in messages] == list(range(len(messages)))
    *chunks, (end_headers, end_body) = messages
    text = "".join(c["delta"].get("content", "") for _, data in chunks for c in json.loads(data)["choices"])
    assert text == "mock:mock-fast says: hello bus"
    assert json.loads(chunks[-1][1])["choices"][0]["finish_reason"] == "stop"
    assert end_headers[H.STATUS] == "200"
    assert end_headers[H.ENDPOINT] == "mock"
    assert json.loads(end_body)["usage"]["completion_tokens"] == 4  # words of the answer


def test_stream_without_include_usage_ends_with_an_empty_clean_end(stack: Stack) -> None:
    messages = run(_stream_raw(stack.url, {"model": "fast", "stream": True, "messages": [HELLO]}))
    end_headers, end_body = messages[-1]
    assert (end_headers[H.STATUS], end_body) == ("200", b"")


def test_stream_failing_midway_ends_with_an_error_terminator(stack: Stack) -> None:
    messages = run(_stream_raw(stack.url, {"model": "mock-breaks", "stream": True, "messages": [HELLO]}))
    *chunks, (end_headers, end_body) = messages
    assert len(chunks) == 2
    assert end_headers[H.STREAM] == H.STREAM_END
    assert end_headers[H.STATUS] == "502"
    assert end_headers[H.SEQ] == "2"
    assert json.loads(end_body)["error"]["type"] == "api_error"


def test_client_raises_on_a_broken_stream_instead_of_returning_partial_text(stack: Stack) -> None:
    async def consume() -> list[str]:
        client = await ModelbusClient.connect(stack.url)
        got: list[str] = []
        try:
            async for chunk in client.stream({"model": "mock-breaks", "stream": True, "messages": [HELLO]}):
                got.extend(c.delta.content or "" for c in chunk.choices)
        finally:
            await client.close()
        return got

    with pytest.raises(UpstreamUnavailable) as caught:
        run(consume())
    assert caught.value.http_status == 502


def test_stream_error_before_any_chunk_is_a_single_terminator(stack: Stack) -> None:
    messages = run(_stream_raw(stack.url, {"model": "nope", "stream": True, "messages": [HELLO]}))
    assert len(messages) == 1
    headers, body = messages[0]
    assert (headers[H.STREAM], headers[H.STATUS], headers[H.SEQ]) == (H.STREAM_END, "404", "0")
    assert "nope" in json.loads(body)["error"]["message"]


def test_forced_tool_choice_returns_a_tool_call(stack: Stack) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    status, _, body = run(_raw(stack.url, _body(model="fast", tools=tools, tool_choice="required")))
    assert status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"input": "hello bus"}


def test_credential_reference_is_resolved_through_the_secrets_service(stack: Stack) -> None:
    status, _, _ = run(_raw(stack.url, _body(model="mock-keyed")))
    assert status == 200


def test_missing_credential_names_the_reference_and_never_a_value(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, _body(model="mock-unkeyed")))
    assert status == 502
    assert body["error"]["code"] == "credential_unavailable"
    assert "REQUEST_PATH_UNSET_KEY" in body["error"]["message"]
    assert SECRET not in stack.log()


def test_concurrent_requests_are_served_in_parallel(stack: Stack) -> None:
    # Each call takes 400 ms at the mock; served one at a time, 16 would take 6.4 s.
    async def many() -> list[int]:
        client = await ModelbusClient.connect(stack.url)
        try:
            replies = await asyncio.gather(
                *(client.request_raw(_body(model="mock-busy"), timeout=20) for _ in range(16))
            )
        finally:
            await client.close()
        return [r.status for r in replies]

    started = time.monotonic()
    assert run(many()) == [200] * 16
    assert time.monotonic() - started < 4.0


def test_typed_client_raises_not_found_for_an_unknown_model(stack: Stack) -> None:
    async def ask() -> None:
        client = await ModelbusClient.connect(stack.url)
        try:
            await client.complete({"model": "ghost", "messages": [HELLO]})
        finally:
            await client.close()

    with pytest.raises(NotFound, match="ghost"):
        run(ask())


def test_reply_body_is_a_valid_openai_completion(stack: Stack) -> None:
    status, _, body = run(_raw(stack.url, _body(model="fast")))
    assert status == 200
    from shared.chat import ChatCompletion

    completion = msgspec.convert(body, ChatCompletion)
    assert completion.usage is not None and completion.usage.total_tokens > 0


# ---------------------------------------------------------------- direct delivery


async def _direct_delivery(url: str) -> tuple[ProviderCall, list[tuple[dict[str, str], bytes]]]:
    """Send one request from our own inbox while a spy copies the ProviderCall the router sends."""
    client = await ModelbusClient.connect(url)
    spy = await client.nc.subscribe(provider_subject("mock"))  # no queue group: a copy of every call
    inbox = client.nc.new_inbox()
    answers = await client.nc.subscribe(inbox)
    body = json.dumps({"model": "default", "messages": [HELLO]}).encode()
    try:
        await client.nc.publish(CHAT_COMPLETIONS, body, reply=inbox, headers={H.REQUEST_ID: "direct-1"})
        call = provider_call_decoder.decode((await spy.next_msg(timeout=10)).data)
        out = [await answers.next_msg(timeout=10)]
        try:  # exactly one answer: the router must not relay a delivered completion again
            out.append(await answers.next_msg(timeout=0.5))
        except nats.errors.TimeoutError:
            pass
        return call, [(dict(m.headers or {}), m.data) for m in out]
    finally:
        await client.close()


def test_a_successful_answer_goes_from_the_provider_straight_to_the_client_exactly_once(stack: Stack) -> None:
    call, answers = run(_direct_delivery(stack.url))
    assert call.deliver_to is not None and call.deliver_to.startswith("_INBOX")
    assert len(answers) == 1
    headers, body = answers[0]
    assert json.loads(body)["object"] == "chat.completion"
    # The same headers the router puts on a relayed answer.
    assert headers[H.STATUS] == "200"
    assert headers[H.PROVIDER] == "mock"
    assert headers[H.ENDPOINT] == "mock"
    assert headers[H.MODEL] == "mock-default"
    assert headers[H.ATTEMPTS] == "1"
    assert headers[H.REQUEST_ID] == "direct-1"
    assert headers[H.ROUTER] == call.deliver_headers[H.ROUTER]
    assert int(headers[H.CONFIG_REVISION]) >= 1
    assert H.DELIVERED not in headers


async def _legacy_worker_answer(url: str) -> tuple[int, dict[str, str], Any]:
    """A provider worker that predates direct delivery: it answers the router, which must relay."""
    worker = await nats.connect(url)

    async def answer(msg: Any) -> None:
        completion = {
            "id": "legacy-1",
            "object": "chat.completion",
            "created": 0,
            "model": "claude-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "old"}, "finish_reason": "stop"}],
        }
        headers = {H.STATUS: "200", H.PROVIDER: "anthropic", H.MODEL: "claude-x"}
        await worker.publish(msg.reply, json.dumps(completion).encode(), headers=headers)

    await worker.subscribe(provider_subject("anthropic"), queue=provider_queue("anthropic"), cb=answer)
    await worker.flush()
    try:
        return await _raw(url, json.dumps({"model": "claude", "messages": [HELLO]}).encode())
    finally:
        await worker.close()


def test_the_router_relays_the_answer_of_a_worker_that_does_not_deliver_directly(stack: Stack) -> None:
    status, headers, body = run(_legacy_worker_answer(stack.url))
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "old"
    assert headers[H.ENDPOINT] == "claude"
    assert headers[H.PROVIDER] == "anthropic"
    assert headers[H.ATTEMPTS] == "1"
