"""The mock provider: no network, deterministic, streams, and fails on demand.

The answer is ``"mock:<model> says: <last user text>"``, split into one chunk
per word when streamed. Endpoint ``options`` shape its behaviour for tests and
demos:

=================== ======================================================
``reply``           fixed answer text instead of the echo
``latency_ms``      delay before a non-streamed answer
``ttft_ms``         delay before the first streamed chunk
``itl_ms``          delay between streamed chunks
``fail_status``     fail every call with this HTTP status (429, 503, ...)
``fail_message``    message of that failure
``retry_after``     seconds sent as ``Retry-After`` with that failure; a list gives
                    one value per failure, in order (the last one repeats)
``fail_times``      fail only the first N calls (per worker), then answer
``fail_after_chunks`` stream this many chunks, then fail with ``fail_status``
``cached_tokens``   report this many of the prompt tokens as read from the cache
``cache_write_tokens`` report this many of the prompt tokens as written to the cache
``reasoning_tokens`` report this many extra completion tokens as reasoning
=================== ======================================================

The cache counts are parts of ``prompt_tokens``, which becomes at least their sum,
as a provider's would be; reasoning tokens are added to ``completion_tokens``.

An endpoint with ``auth`` has its credential fetched from the secrets service
on every uncached call, exactly as a real adapter would, though the value is
not used. With ``tool_choice`` ``required`` or a named function, the mock calls that
tool (or the first one) with ``{"input": <last user text>}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec

from services.providers.base import EndpointConnection
from shared.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    Message,
    PromptTokensDetails,
    ResponseMessage,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoiceFunction,
    Usage,
    UserMessage,
)
from shared.errors import ProviderError, error_from_status

_encoder = msgspec.json.Encoder()


class MockAdapter:
    """Deterministic in-process provider."""

    gen_ai_provider: ClassVar[str] = "modelbus.mock"

    def __init__(self, connection: EndpointConnection) -> None:
        self.connection = connection
        self.options: dict[str, Any] = dict(connection.endpoint.options)
        self._failures = 0

    # ------------------------------------------------------------ behaviour

    def _failure(self, model: str) -> ProviderError | None:
        status = self.options.get("fail_status")
        if not status:
            return None
        fail_times = self.options.get("fail_times")
        if fail_times is not None and self._failures >= int(fail_times):
            return None
        retry_after = self.options.get("retry_after")
        if isinstance(retry_after, list):
            retry_after = retry_after[min(self._failures, len(retry_after) - 1)] if retry_after else None
        self._failures += 1
        return error_from_status(
            int(status),
            str(self.options.get("fail_message") or f"mock failure {status}"),
            provider="mock",
            model=model,
            retry_after=float(retry_after) if retry_after is not None else None,
        )

    async def _sleep_ms(self, key: str) -> None:
        delay = float(self.options.get(key) or 0)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    def _answer(self, request: ChatCompletionRequest, model: str) -> tuple[str | None, ToolCall | None]:
        prompt = _last_user_text(request.messages)
        tool = _forced_tool(request)
        if tool is not None:
            args = _encoder.encode({"input": prompt}).decode()
            call_id = "call_" + hashlib.sha256(f"{model}|{tool}|{prompt}".encode()).hexdigest()[:16]
            return None, ToolCall(id=call_id, function=FunctionCall(name=tool, arguments=args))
        text = self.options.get("reply")
        if text is None:
            text = f"mock:{model} says: {prompt}"
        return str(text), None

    @staticmethod
    def _completion_id(request: ChatCompletionRequest, model: str) -> str:
        digest = hashlib.sha256(model.encode() + _encoder.encode(request.messages)).hexdigest()
        return f"chatcmpl-mock-{digest[:24]}"

    def _map_usage(self, request: ChatCompletionRequest, text: str | None, tool: ToolCall | None) -> Usage:
        prompt_tokens = sum(_word_count(m) for m in request.messages)
        completion_tokens = len(text.split()) if text else (len(tool.function.arguments.split()) if tool else 0)
        cached = int(self.options.get("cached_tokens") or 0)
        written = int(self.options.get("cache_write_tokens") or 0)
        reasoning = int(self.options.get("reasoning_tokens") or 0)
        prompt_tokens = max(prompt_tokens, cached + written)
        completion_tokens += reasoning
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=(
                PromptTokensDetails(cached_tokens=cached, cache_write_tokens=written or None)
                if cached or written
                else None
            ),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning) if reasoning else None,
        )

    # ------------------------------------------------------------ adapter API

    async def complete(self, request: ChatCompletionRequest, model: str, *, timeout_s: float) -> ChatCompletion:
        """Answer at once (after ``latency_ms``), or fail as configured."""
        await self.connection.credential()  # exercised like a real adapter; the value is unused
        await self._sleep_ms("latency_ms")
        failure = self._failure(model)
        if failure is not None:
            raise failure
        text, tool = self._answer(request, model)
        finish: FinishReason = "tool_calls" if tool else "stop"
        return ChatCompletion(
            id=self._completion_id(request, model),
            created=int(time.time()),
            model=model,
            choices=[
                Choice(
                    index=0,
                    message=ResponseMessage(content=text, tool_calls=[tool] if tool else None),
                    finish_reason=finish,
                )
            ],
            usage=self._map_usage(request, text, tool),
        )

    async def stream(
        self, request: ChatCompletionRequest, model: str, *, timeout_s: float
    ) -> AsyncIterator[ChatCompletionChunk]:
        """One chunk per word, then the finish chunk, then the usage chunk."""
        await self.connection.credential()
        fail_after = self.options.get("fail_after_chunks")
        failure = self._failure(model)
        await self._sleep_ms("ttft_ms")
        if failure is not None and fail_after is None:
            raise failure
        text, tool = self._answer(request, model)
        cid = self._completion_id(request, model)
        created = int(time.time())

        def chunk(delta: Delta, finish: FinishReason | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=cid, created=created, model=model, choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)]
            )

        sent = 0
        if tool is not None:
            yield chunk(
                Delta(
                    role="assistant",
                    tool_calls=[
                        ToolCallDelta(
                            index=0,
                            id=tool.id,
                            type="function",
                            function=FunctionCallDelta(name=tool.function.name, arguments=""),
                        )
                    ],
                )
            )
            yield chunk(
                Delta(
                    tool_calls=[ToolCallDelta(index=0, function=FunctionCallDelta(arguments=tool.function.arguments))]
                )
            )
            finish: FinishReason = "tool_calls"
        else:
            words = (text or "").split(" ")
            for i, word in enumerate(words):
                if fail_after is not None and failure is not None and sent >= int(fail_after):
                    raise failure
                if i:
                    await self._sleep_ms("itl_ms")
                piece = word if i == 0 else " " + word
                yield chunk(Delta(role="assistant", content=piece) if i == 0 else Delta(content=piece))
                sent += 1
            finish = "stop"
        if fail_after is not None and failure is not None:
            raise failure
        yield chunk(Delta(), finish)
        yield ChatCompletionChunk(
            id=cid, created=created, model=model, choices=[], usage=self._map_usage(request, text, tool)
        )


def _text_of(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.text for p in content if isinstance(p, TextPart))
    return ""


def _word_count(message: Message) -> int:
    return len(_text_of(getattr(message, "content", None)).split())


def _last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if isinstance(message, UserMessage):
            return _text_of(message.content)
    return ""


def _forced_tool(request: ChatCompletionRequest) -> str | None:
    if not request.tools:
        return None
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        return choice.function.name
    if choice == "required":
        return request.tools[0].function.name
    return None
