"""AWS event-stream framing (``application/vnd.amazon.eventstream``), decoded as bytes arrive.

Bedrock's ConverseStream (and every AWS streaming API) frames each event as a
binary message: total length (u32), headers length (u32), prelude CRC32,
typed headers, payload, message CRC32
(https://docs.aws.amazon.com/AmazonS3/latest/API/RESTSelectObjectAppendix.html#RESTSelectObjectAppendix-MessageFormat).
Decoding, header types and both CRC checks are botocore's ``EventStreamBuffer``;
this module feeds it from an async byte stream and hands back one
:class:`AwsEvent` per frame as soon as the frame is complete.

AWS sends nothing but these frames. The one exception below is marked
*llm-katan only, not an AWS behaviour*: llm-katan (the third-party Bedrock
server the integration tests run against) sends the same events as text lines,
``data: {"<event>": {...}}``, with the same content type. Both arrive through
:func:`aws_events`, which looks at the first byte only (a frame starts with the
high byte of its length, 0 for any frame under 16 MiB; a line with ``d``) and
hands lines to :func:`llm_katan_line_events`.
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


_encoder = msgspec.json.Encoder()


async def aws_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[AwsEvent]:
    """The events of an event stream as their frames arrive."""
    first = b""
    async for first in chunks:
        if first:
            break
    if not first:
        return
    rest = _prepend(first, chunks)
    events = llm_katan_line_events(rest) if _is_llm_katan_line(first) else frame_events(rest)
    async for event in events:
        yield event


async def frame_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[AwsEvent]:
    """Binary frames as events and exceptions, by their ``:message-type``."""
    async for message in event_messages(chunks):
        match message.header(":message-type"):
            case "event":
                yield AwsEvent(kind="event", name=message.header(":event-type"), payload=message.payload)
            case "exception":
                yield AwsEvent(kind="exception", name=message.header(":exception-type"), payload=message.payload)
            case _:  # "error": code and message travel in headers
                text = _encoder.encode({"message": message.header(":error-message")})
                yield AwsEvent(kind="exception", name=message.header(":error-code"), payload=text)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


# ---------------------------------------------------------------- llm-katan only, not an AWS behaviour

_line_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _is_llm_katan_line(first: bytes) -> bool:
    """llm-katan only: its streams start with ``data:``; an AWS frame starts with byte 0 (or 1)."""
    return first.startswith(b"d")


async def llm_katan_line_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[AwsEvent]:
    """llm-katan only, not an AWS behaviour: ConverseStream events as ``data: {"<event>": {...}}`` lines.

    A member whose name ends in ``Exception`` is an exception, as in the ConverseStream union.
    """
    async for line in _lines(chunks):
        if not line.startswith(b"data:"):
            continue
        try:
            members = _line_decoder.decode(line[5:])
        except msgspec.MsgspecError as exc:
            raise EventStreamError(f"unreadable event line: {exc}") from None
        for name, raw in members.items():
            kind: Literal["event", "exception"] = "exception" if name.endswith("Exception") else "event"
            yield AwsEvent(kind=kind, name=name, payload=bytes(raw))


async def _lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Complete lines as they arrive."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.strip()
    if pending.strip():
        yield pending.strip()
