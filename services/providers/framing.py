"""Stream framing: an upstream stream answer as a sequence of :class:`StreamEvent`.

Three framings cover every provider adapter:

- ``sse``: server-sent events (OpenAI, Anthropic, Gemini with ``alt=sse``),
  parsed by :func:`services.providers.sse.sse_events`;
- ``ndjson``: one JSON document per line (Ollama);
- ``aws-eventstream``: AWS binary event-stream frames (Bedrock ConverseStream),
  decoded by :func:`services.providers.eventstream.aws_events`.

Each yields events as they arrive and never buffers more than one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from services.providers.eventstream import EventStreamError, aws_events
from services.providers.response import UpstreamResponse
from services.providers.sse import sse_events


class FramingError(Exception):
    """The stream's bytes are not valid framing (bad CRC, a frame cut short, an unreadable line)."""


class StreamEvent(msgspec.Struct, frozen=True):
    """One framed event, whatever the framing."""

    name: str
    """The SSE event name (``message`` when unnamed), the AWS event or exception type, or ``""``
    for an NDJSON line."""
    data: bytes
    """The SSE data lines joined with ``\\n``, the frame's payload, or the line."""
    exception: bool = False
    """An AWS exception frame (``name`` is the exception type, ``data`` a JSON object with ``message``)."""


async def frames(
    framing: Literal["sse", "ndjson", "aws-eventstream"], response: UpstreamResponse
) -> AsyncIterator[StreamEvent]:
    """The events of ``response`` as they arrive; raises :class:`FramingError` on broken framing."""
    if framing == "sse":
        async for event in sse_events(response):
            yield StreamEvent(event.event, event.data.encode())
    elif framing == "ndjson":
        async for line in response.aiter_lines():
            if line.strip():
                yield StreamEvent("", line.encode())
    else:
        try:
            async for raw in aws_events(response.aiter_bytes()):
                yield StreamEvent(raw.name, raw.payload, raw.kind == "exception")
        except EventStreamError as exc:
            raise FramingError(str(exc)) from None
