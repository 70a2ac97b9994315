"""AWS event-stream framing (``application/vnd.amazon.eventstream``), decoded as bytes arrive.

Bedrock's ConverseStream (and every AWS streaming API) frames each event as a
binary message: total length (u32), headers length (u32), prelude CRC32,
typed headers, payload, message CRC32
(https://docs.aws.amazon.com/AmazonS3/latest/API/RESTSelectObjectAppendix.html#RESTSelectObjectAppendix-MessageFormat).
Decoding, header types and both CRC checks are botocore's ``EventStreamBuffer``;
this module feeds it from an async byte stream and hands back one
:class:`AwsEvent` per frame as soon as the frame is complete.

llm-katan sends the same events as text lines, ``data: {"<event>": {...}}``;
:func:`aws_events` accepts both, told apart by the first byte (a frame starts
with the high byte of its length, 0 for any frame under 16 MiB; a line with
``d``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Literal

import msgspec
from botocore.eventstream import EventStreamBuffer, ParserError

HeaderValue = str | bytes | bool | int
"""Event-stream header values: strings, byte arrays, booleans, integers and timestamps (as ints)."""


class EventStreamError(Exception):
    """The byte stream is not valid framing (bad CRC, bad lengths, cut short, unreadable line)."""


class EventMessage(msgspec.Struct, frozen=True):
    """One decoded binary frame."""

    headers: dict[str, HeaderValue]
    """Frame headers, e.g. ``:message-type``, ``:event-type``, ``:exception-type``."""
    payload: bytes
    """The frame's payload (JSON for Bedrock)."""

    def header(self, name: str) -> str:
        """A string header, or ``""`` when absent or not a string."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else ""


class AwsEvent(msgspec.Struct, frozen=True):
    """One event or exception of a stream, whichever framing carried it."""

    kind: Literal["event", "exception"]
    """``exception`` for modelled exceptions and generic ``error`` frames alike."""
    name: str
    """Event type (``contentBlockDelta``) or exception type (``throttlingException``)."""
    payload: bytes
    """The JSON payload; for an exception, an object with ``message``."""


async def event_messages(chunks: AsyncIterable[bytes]) -> AsyncIterator[EventMessage]:
    """Yield each frame as soon as its last byte has arrived; never buffer more than one frame."""
    buffer = EventStreamBuffer()
    received = consumed = 0
    async for chunk in chunks:
        buffer.add_data(chunk)
        received += len(chunk)
        while True:
            try:
                message = next(buffer)
            except StopIteration:
                break
            except ParserError as exc:
                raise EventStreamError(str(exc)) from None
            consumed += int(message.prelude.total_length)
            yield EventMessage(headers=dict(message.headers), payload=bytes(message.payload))
    if received != consumed:
        raise EventStreamError(f"stream ended inside a frame ({received - consumed} bytes left over)")


_line_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()


async def aws_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[AwsEvent]:
    """Events from binary frames or from ``data:`` lines, as they arrive."""
    first = b""
    async for first in chunks:
        if first:
            break
    if not first:
        return
    rest = _prepend(first, chunks)
    if first[0] == 0:
        async for message in event_messages(rest):
            match message.header(":message-type"):
                case "event":
                    yield AwsEvent(kind="event", name=message.header(":event-type"), payload=message.payload)
                case "exception":
                    yield AwsEvent(kind="exception", name=message.header(":exception-type"), payload=message.payload)
                case _:  # "error": code and message travel in headers
                    text = _encoder.encode({"message": message.header(":error-message")})
                    yield AwsEvent(kind="exception", name=message.header(":error-code"), payload=text)
        return
    async for line in _lines(rest):
        if not line.startswith(b"data:"):
            continue
        try:
            members = _line_decoder.decode(line[5:])
        except msgspec.MsgspecError as exc:
            raise EventStreamError(f"unreadable event line: {exc}") from None
        for name, raw in members.items():
            kind: Literal["event", "exception"] = "exception" if name.endswith("Exception") else "event"
            yield AwsEvent(kind=kind, name=name, payload=bytes(raw))


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete lines as they arrive."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.strip()
    if pending.strip():
        yield pending.strip()
