"""The mock provider: deterministic answers, streaming, tool calls and failures on demand."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from services.providers.base import EndpointConnection
from services.providers.mock import MockAdapter
from shared.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, decode_request
from shared.errors import ProviderError, RateLimited, UpstreamTimeout, UpstreamUnavailable
from shared.routing import Endpoint

MODEL = "mock-1"


class FakeCredentials:
    """Records which references were asked for; hands back a value nobody should see."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, ref: str, endpoint_name: str) -> str:
        self.asked.append((ref, endpoint_name))
        return "not-a-real-secret"


def adapter(credentials: FakeCredentials | None = None, auth_ref: str | None = None, **options: Any) -> MockAdapter:
    endpoint = Endpoint(name="mock", provider="mock", default_model=MODEL, auth_ref=auth_ref, options=options)
    return MockAdapter(EndpointConnection(endpoint, credentials or FakeCredentials()))


def request(text: str = "hello there world", **fields: Any) -> ChatCompletionRequest:
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": text}]
    return decode_request(json.dumps({"messages": messages, **fields}).encode())


TOOLS = [
    {"type": "function", "function": {"name": "lookup"}},
    {"type": "function", "function": {"name": "other"}},
]


def complete(a: MockAdapter, req: ChatCompletionRequest) -> ChatCompletion:
    return asyncio.run(a.complete(req, MODEL, timeout_s=5))


def stream(a: MockAdapter, req: ChatCompletionRequest) -> list[ChatCompletionChunk]:
    async def collect() -> list[ChatCompletionChunk]:
        return [chunk async for chunk in a.stream(req, MODEL, timeout_s=5)]

    return asyncio.run(asyncio.wait_for(collect(), 5))


def stream_until_failure(a: MockAdapter, req: ChatCompletionRequest) -> tuple[list[ChatCompletionChunk], ProviderError]:
    got: list[ChatCompletionChunk] = []

    async def collect() -> None:
        async for chunk in a.stream(req, MODEL, timeout_s=5):
            got.append(chunk)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(asyncio.wait_for(collect(), 5))
    return got, caught.value


# ---------------------------------------------------------------- answers


def test_the_answer_echoes_the_last_user_message_with_the_model_name() -> None:
    completion = complete(adapter(), request("hello there world"))
    (choice,) = completion.choices
    assert choice.message.content == f"mock:{MODEL} says: hello there world"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_the_same_input_gives_the_same_answer_and_id() -> None:
    first = complete(adapter(), request("same question"))
    second = complete(adapter(), request("same question"))
    assert first.id == second.id
    assert first.id.startswith("chatcmpl-")
    assert first.choices == second.choices
    assert first.usage == second.usage


def test_a_different_input_gives_a_different_id() -> None:
    assert complete(adapter(), request("one")).id != complete(adapter(), request("two")).id


def test_a_configured_reply_replaces_the_echo() -> None:
    assert complete(adapter(reply="fixed answer"), request()).choices[0].message.content == "fixed answer"


def test_the_credential_is_fetched_by_reference_when_the_endpoint_has_auth() -> None:
    creds = FakeCredentials()
    complete(adapter(creds, auth_ref="env:MOCK_KEY"), request())
    stream(adapter(creds, auth_ref="env:MOCK_KEY"), request())
    assert creds.asked == [("env:MOCK_KEY", "mock"), ("env:MOCK_KEY", "mock")]


def test_no_credential_is_fetched_without_auth() -> None:
    creds = FakeCredentials()
    complete(adapter(creds), request())
    assert creds.asked == []


# ---------------------------------------------------------------- streaming


def test_streamed_pieces_join_to_the_non_streamed_answer() -> None:
    answer = complete(adapter(), request("the quick brown fox")).choices[0].message.content
    assert answer is not None
    chunks = stream(adapter(), request("the quick brown fox", stream=True))
    content = [c for c in chunks if c.choices and c.choices[0].delta.content is not None]
    assert len(content) == len(answer.split(" "))
    assert "".join(c.choices[0].delta.content or "" for c in content) == answer
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content[1:])


def test_a_stream_ends_with_a_finish_chunk_then_a_usage_chunk_without_choices() -> None:
    chunks = stream(adapter(), request())
    *_, finish, usage = chunks
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage == complete(adapter(), request()).usage
    assert all(c.usage is None for c in chunks[:-1])


def test_every_chunk_of_a_stream_shares_the_non_streamed_id() -> None:
    chunks = stream(adapter(), request())
    assert {c.id for c in chunks} == {complete(adapter(), request()).id}
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)


# ---------------------------------------------------------------- tool calls


@pytest.mark.parametrize(
    ("tool_choice", "name"),
    [({"type": "function", "function": {"name": "other"}}, "other"), ("required", "lookup")],
)
def test_a_forced_tool_choice_makes_the_mock_call_that_tool(tool_choice: Any, name: str) -> None:
    completion = complete(adapter(), request("find cats", tools=TOOLS, tool_choice=tool_choice))
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == name
    assert json.loads(call.function.arguments) == {"input": "find cats"}
    assert call.id.startswith("call_")


@pytest.mark.parametrize("tool_choice", [None, "auto", "none"])
def test_tools_without_a_forced_choice_get_a_text_answer(tool_choice: str | None) -> None:
    fields: dict[str, Any] = {"tools": TOOLS}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    (choice,) = complete(adapter(), request("hi", **fields)).choices
    assert choice.message.tool_calls is None
    assert choice.message.content == f"mock:{MODEL} says: hi"


def test_a_forced_tool_call_streams_as_deltas_that_rebuild_the_same_call() -> None:
    fields = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "lookup"}}}
    (call,) = complete(adapter(), request("find cats", **fields)).choices[0].message.tool_calls or []
    chunks = stream(adapter(), request("find cats", stream=True, **fields))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == call.id
    assert deltas[0].type == "function"
    assert deltas[0].function is not None and deltas[0].function.name == "lookup"
    assert {d.index for d in deltas} == {0}
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == call.function.arguments
    assert all(c.choices[0].delta.content is None for c in chunks if c.choices)
    finish, usage = chunks[-2:]
    assert finish.choices[0].finish_reason == "tool_calls"
    assert usage.choices == [] and usage.usage is not None


# ---------------------------------------------------------------- failures on demand


@pytest.mark.parametrize(("status", "cls"), [(429, RateLimited), (503, UpstreamUnavailable), (504, UpstreamTimeout)])
def test_fail_status_raises_the_matching_error_with_its_retry_hint(status: int, cls: type[ProviderError]) -> None:
    a = adapter(fail_status=status, retry_after=7, fail_message="configured failure")
    with pytest.raises(cls) as caught:
        complete(a, request())
    err = caught.value
    assert err.http_status == status
    assert err.retryable is True
    assert err.retry_after == 7.0
    assert err.message == "configured failure"
    assert err.provider == "mock" and err.model == MODEL


def test_fail_status_fails_a_stream_before_any_chunk() -> None:
    got, err = stream_until_failure(adapter(fail_status=429, retry_after=2), request())
    assert got == []
    assert isinstance(err, RateLimited) and err.retry_after == 2.0


def test_a_client_error_status_is_not_retryable() -> None:
    with pytest.raises(ProviderError) as caught:
        complete(adapter(fail_status=400), request())
    assert caught.value.http_status == 400
    assert caught.value.retryable is False


@pytest.mark.parametrize("after", [0, 1, 3])
def test_fail_after_chunks_streams_that_many_chunks_then_fails(after: int) -> None:
    got, err = stream_until_failure(adapter(fail_status=503, fail_after_chunks=after), request("a b c d e"))
    assert len(got) == after
    assert all(c.choices and c.choices[0].finish_reason is None for c in got)
    assert isinstance(err, UpstreamUnavailable)


def test_fail_after_more_chunks_than_the_answer_has_fails_before_the_finish_chunk() -> None:
    got, err = stream_until_failure(adapter(fail_status=503, fail_after_chunks=100), request("a b"))
    assert "".join(c.choices[0].delta.content or "" for c in got) == f"mock:{MODEL} says: a b"
    assert all(c.choices[0].finish_reason is None for c in got)
    assert isinstance(err, UpstreamUnavailable)


def test_fail_after_chunks_still_fails_a_non_streamed_call() -> None:
    with pytest.raises(UpstreamUnavailable):
        complete(adapter(fail_status=503, fail_after_chunks=2), request())


def test_fail_after_chunks_without_a_fail_status_streams_normally() -> None:
    chunks = stream(adapter(fail_after_chunks=1), request("a b c"))
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
