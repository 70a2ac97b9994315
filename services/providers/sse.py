"""Server-sent events, parsed incrementally from an upstream response.

Follows the WHATWG event-stream rules that provider streams use: ``event:``
names the event, ``data:`` lines accumulate (joined with newlines), a blank
line dispatches, lines starting with ``:`` are comments. Nothing is buffered
beyond one event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from services.providers.response import UpstreamResponse


class Event(msgspec.Struct, frozen=True):
    """One dispatched event."""

    event: str
    """``message`` unless the stream named it."""
    data: str
    """The data lines, joined with ``\\n``."""


async def sse_events(response: UpstreamResponse) -> AsyncIterator[Event]:
    """Yield events as their terminating blank line arrives."""
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield Event(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:  # a stream that ends without the final blank line
        yield Event(event or "message", "\n".join(data))
