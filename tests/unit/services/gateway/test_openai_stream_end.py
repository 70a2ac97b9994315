"""How an OpenAI stream ends at the gateway: the usage chunk only when the client asked for it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec

from services.gateway.openai_api import _tail
from shared.chat import ChatCompletionChunk, StreamOptions, Usage, decode_request
from shared.formats import openai

USAGE = ChatCompletionChunk(
    id="c1", created=1, model="m", choices=[], usage=Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
)
BODY = b'{"model": "fast", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


def pending(usage: ChatCompletionChunk | None) -> Any:
    """A stream's end as the gateway holds it: the terminator's body as it came."""
    return SimpleNamespace(tail=openai.chunk_to_native(usage) if usage is not None else b"")


def test_a_clean_end_is_data_done_alone_when_usage_was_not_asked_for_even_if_it_came() -> None:
    request = decode_request(BODY)
    assert _tail(pending(USAGE), request) == openai.SSE_DONE


def test_a_clean_end_carries_the_usage_chunk_then_data_done_when_asked() -> None:
    request = decode_request(BODY)
    asked = msgspec.structs.replace(request, stream_options=StreamOptions(include_usage=True))
    assert _tail(pending(USAGE), asked) == openai.sse_chunk(USAGE) + openai.SSE_DONE
    assert _tail(pending(None), asked) == openai.SSE_DONE
