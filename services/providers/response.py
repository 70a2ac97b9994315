"""An upstream answer as the adapters read it: status, headers, and the body whole or as it arrives.

The same reading surface the adapters had with ``httpx.Response``
(``status_code``, ``headers.get``, ``content``, ``aread``, ``aiter_bytes``,
``aiter_lines``, ``json``), without its per-response cost: headers become a
dictionary only when someone looks at them, and the body is decoded (gzip,
deflate: we advertise both) once, by :mod:`zlib`.

Lines split on ``\\r\\n``, ``\\n`` or ``\\r`` only, the line ends of
server-sent events (https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream).
``str.splitlines`` (httpx's rule) also splits on U+2028 and other separators,
which JSON allows unescaped inside a ``data:`` line.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
import msgspec

from services.providers.transport_errors import CorruptBody

MAX_BODY_BYTES = 16 * 1024 * 1024
"""A whole answer (``post``, ``aread``) larger than this is refused: a reply travels on NATS,
whose messages are at most 8 MiB (shared/natsserver.py), and a worker keeps its RSS bounded."""


class BodySource(Protocol):
    """Where an answer's (still encoded) body comes from: a pooled connection, or a test transport."""

    async def read_all(self) -> bytes:
        """The whole rest of the body."""
        ...

    async def read_chunk(self) -> bytes:
        """The next part of the body; ``b""`` at its end."""
        ...

    async def release(self, *, graceful: bool) -> None:
        """Done with the body: ``graceful`` after a normal end, else abandon it (close the connection)."""
        ...


class Headers(dict[str, str]):
    """Answer headers by lower-case name; a repeated header's values joined with ``", "`` (as httpx does)."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())

    @classmethod
    def from_raw(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        headers = cls()
        for name, value in raw:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{dict.__getitem__(headers, key)}, {text}" if dict.__contains__(headers, key) else text
        return headers


class _Decoder:
    """Content-Encoding ``gzip``/``deflate`` (possibly stacked), undone incrementally.

    No single call yields more than ``limit`` bytes: a small compressed body
    that inflates without bound (a "zip bomb") is refused, not buffered.
    """

    def __init__(self, encoding: bytes, limit: int) -> None:
        self._limit = limit
        self._steps: list[Any] = []
        for coding in reversed([c.strip() for c in encoding.split(b",") if c.strip()]):
            if coding in (b"gzip", b"x-gzip"):
                self._steps.append(zlib.decompressobj(16 + zlib.MAX_WBITS))
            elif coding == b"deflate":
                self._steps.append(_Deflate())
            elif coding != b"identity":  # never advertised; passed on as httpx does
                self._steps = []
                return

    def __bool__(self) -> bool:
        return bool(self._steps)

    def decode(self, data: bytes) -> bytes:
        try:
            for step in self._steps:
                data = step.decompress(data, self._limit + 1)
                if len(data) > self._limit:
                    raise CorruptBody(f"the upstream's compressed body inflates beyond {self._limit} bytes")
        except zlib.error as exc:
            raise CorruptBody(f"the upstream's compressed body is corrupt: {exc}") from None
        return data

    def flush(self) -> bytes:
        data = b""
        try:
            for step in self._steps:
                data = step.decompress(data, self._limit + 1) + step.flush()
                if len(data) > self._limit:
                    raise CorruptBody(f"the upstream's compressed body inflates beyond {self._limit} bytes")
        except zlib.error as exc:
            raise CorruptBody(f"the upstream's compressed body is corrupt: {exc}") from None
        return data


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped per RFC 9110, or raw (as many do anyway)."""

    def __init__(self) -> None:
        self._inner: Any = None

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._inner is None:
            if not data:
                return b""
            self._inner = zlib.decompressobj()
            try:
                return bytes(self._inner.decompress(data, max_length))
            except zlib.error:
                self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
        return bytes(self._inner.decompress(data, max_length))

    def flush(self) -> bytes:
        return bytes(self._inner.flush()) if self._inner is not None else b""


def _decoder_for(raw_headers: list[tuple[bytes, bytes]], limit: int) -> _Decoder | None:
    """A decoder for the answer's Content-Encoding, or ``None`` for none (or one we cannot undo)."""
    for name, value in raw_headers:
        if len(name) == 16 and name.lower() == b"content-encoding":
            decoder = _Decoder(value.lower(), limit)
            return decoder if decoder else None
    return None


class UpstreamResponse:
    """One upstream answer. Close it (``aclose``, or leave the ``stream`` block) when done."""

    __slots__ = ("_closed", "_content", "_headers", "_limit", "_raw_headers", "_source", "status_code")

    def __init__(
        self,
        status_code: int,
        raw_headers: list[tuple[bytes, bytes]],
        *,
        source: BodySource | None = None,
        content: bytes | None = None,
        limit: int = MAX_BODY_BYTES,
    ) -> None:
        """An answer whose body is read from ``source``, or one already read (``content``, decoded).
        ``limit`` bounds the decoded body (whole) or each decoded piece (streamed)."""
        self.status_code = status_code
        self._limit = limit
        self._raw_headers = raw_headers
        self._headers: Headers | None = None
        self._source = source
        self._content = content
        self._closed = source is None

    @classmethod
    def read(
        cls, status_code: int, raw_headers: list[tuple[bytes, bytes]], body: bytes, *, limit: int = MAX_BODY_BYTES
    ) -> UpstreamResponse:
        """An answer whose whole body has arrived, still encoded as sent."""
        decoder = _decoder_for(raw_headers, limit)
        content = decoder.decode(body) + decoder.flush() if decoder else body
        if len(content) > limit:
            raise CorruptBody(f"the upstream's compressed body inflates beyond {limit} bytes")
        return cls(status_code, raw_headers, content=content, limit=limit)

    @property
    def headers(self) -> Headers:
        """The answer's headers (built on first use)."""
        if self._headers is None:
            self._headers = Headers.from_raw(self._raw_headers)
        return self._headers

    @property
    def content(self) -> bytes:
        """The decoded body; ``aread`` it first when the answer was streamed."""
        if self._content is None:
            raise httpx.ResponseNotRead()
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode(self._charset(), "replace")

    def json(self) -> Any:
        return msgspec.json.decode(self.content)

    async def aread(self) -> bytes:
        """Read and decode the whole body (once), then release the connection."""
        if self._content is None:
            source = self._source
            if source is None or self._closed:
                raise httpx.StreamClosed()
            try:
                raw = await source.read_all()
            except BaseException:
                await self.aclose(abandon=True)
                raise
            await self.aclose()
            decoder = _decoder_for(self._raw_headers, self._limit)
            content = decoder.decode(raw) + decoder.flush() if decoder else raw
            if len(content) > self._limit:
                raise CorruptBody(f"the upstream's compressed body inflates beyond {self._limit} bytes")
            self._content = content
        return self._content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The decoded body as it arrives."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        source = self._source
        if source is None or self._closed:
            raise httpx.StreamClosed()
        decoder = _decoder_for(self._raw_headers, self._limit)
        try:
            while chunk := await source.read_chunk():
                if decoder:
                    chunk = decoder.decode(chunk)
                if chunk:
                    yield chunk
            if decoder and (tail := decoder.flush()):
                yield tail
        except BaseException:
            await self.aclose(abandon=True)
            raise
        await self.aclose()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's text line by line as it arrives, without line ends."""
        text = codecs.getincrementaldecoder(self._charset())("replace")
        pending = ""
        async for chunk in self.aiter_bytes():
            piece = text.decode(chunk)
            if not piece:
                continue
            if pending:
                piece = pending + piece
            if "\r" in piece:
                held = piece.endswith("\r")  # maybe the first half of \r\n: decide with the next chunk
                if held:
                    piece = piece[:-1]
                piece = piece.replace("\r\n", "\n").replace("\r", "\n")
                *lines, pending = piece.split("\n")
                if held:
                    pending += "\r"
            else:
                *lines, pending = piece.split("\n")
            for line in lines:
                yield line
        pending += text.decode(b"", final=True)
        if pending:
            for line in pending.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
                if line:
                    yield line

    async def aclose(self, *, abandon: bool = False) -> None:
        """Release the connection. An unread rest of the body is drained briefly to keep the
        connection, or with ``abandon`` (the caller gave up on the answer) the connection is closed."""
        if not self._closed:
            self._closed = True
            if self._source is not None:
                await self._source.release(graceful=not abandon)

    @property
    def is_closed(self) -> bool:
        return self._closed

    def _charset(self) -> str:
        content_type = self.headers.get("content-type", "")
        for param in content_type.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                name = value.strip().strip('"')
                try:
                    return codecs.lookup(name).name
                except LookupError:
                    break
        return "utf-8"

    def __repr__(self) -> str:
        return f"<UpstreamResponse [{self.status_code}]>"
