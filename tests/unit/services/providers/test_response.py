"""Reading an upstream answer: headers by any case, lines as SSE splits them, gzip and deflate undone."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import httpx
import pytest

from services.providers.response import Headers, UpstreamResponse
from services.providers.transport_errors import CorruptBody


class Chunks:
    """A body source that hands out fixed chunks and records how it was released."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.released: list[bool] = []

    async def read_all(self) -> bytes:
        body, self.chunks = b"".join(self.chunks), []
        return body

    async def read_chunk(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def release(self, *, graceful: bool) -> None:
        self.released.append(graceful)


def lines_of(*chunks: bytes, content_type: bytes = b"text/event-stream") -> list[str]:
    async def scenario() -> list[str]:
        response = UpstreamResponse(200, [(b"Content-Type", content_type)], source=Chunks(*chunks))
        return [line async for line in response.aiter_lines()]

    return asyncio.run(scenario())


def test_headers_are_found_by_any_case_and_repeated_ones_are_joined() -> None:
    headers = Headers.from_raw([(b"Content-Type", b"text/plain"), (b"X-Thing", b"a"), (b"x-thing", b"b")])
    assert headers.get("content-type") == headers.get("CONTENT-TYPE") == headers["Content-Type"] == "text/plain"
    assert headers["x-thing"] == "a, b"
    assert "X-THING" in headers and "missing" not in headers
    assert headers.get("missing", "default") == "default"


def test_lines_split_on_crlf_lf_and_cr_even_when_a_crlf_straddles_two_chunks() -> None:
    assert lines_of(b"data: a\r", b"\ndata: b\n\ndata: c\rdata: d\r\n\r\n") == [
        "data: a",
        "data: b",
        "",
        "data: c",
        "data: d",
        "",
    ]


def test_a_line_separator_inside_json_does_not_split_the_line() -> None:
    text = 'data: {"text": "one\u2028two\u0085three"}\n\n'.encode()
    assert lines_of(text[:9], text[9:]) == ['data: {"text": "one\u2028two\u0085three"}', ""]


def test_a_utf8_character_cut_between_chunks_arrives_whole_and_a_last_line_without_newline_is_kept() -> None:
    text = "data: héllo ✓\ndata: tail".encode()
    cut = text.index("✓".encode()) + 1
    assert lines_of(text[:cut], text[cut:]) == ["data: héllo ✓", "data: tail"]


def test_the_charset_of_the_content_type_decodes_the_lines() -> None:
    assert lines_of("data: café\n".encode("latin-1"), content_type=b"text/plain; charset=ISO-8859-1") == ["data: café"]


@pytest.mark.parametrize(
    ("encoding", "packed"),
    [
        (b"gzip", gzip.compress(b'{"ok": true}')),
        (b"deflate", zlib.compress(b'{"ok": true}')),
        (b"deflate", zlib.compress(b'{"ok": true}')[2:-4]),  # raw deflate, as many servers send it
        (b"identity", b'{"ok": true}'),
    ],
    ids=["gzip", "deflate-zlib", "deflate-raw", "identity"],
)
def test_a_compressed_body_is_decoded_whole_and_streamed(encoding: bytes, packed: bytes) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        coded = [(b"Content-Encoding", encoding)]
        whole = UpstreamResponse(200, coded, source=Chunks(packed))
        streamed = UpstreamResponse(200, coded, source=Chunks(packed[:5], packed[5:]))
        arrived = UpstreamResponse.read(200, coded, packed)
        assert arrived.content == b'{"ok": true}' and arrived.is_closed
        return await whole.aread(), b"".join([part async for part in streamed.aiter_bytes()])

    assert asyncio.run(scenario()) == (b'{"ok": true}', b'{"ok": true}')


def test_a_corrupt_gzip_body_is_a_typed_decoding_error_and_the_connection_is_still_released() -> None:
    source = Chunks(b"\x1f\x8b\x08\x00 definitely not gzip")

    async def scenario() -> None:
        response = UpstreamResponse(200, [(b"content-encoding", b"gzip")], source=source)
        with pytest.raises(CorruptBody):
            await response.aread()

    asyncio.run(scenario())
    assert source.released == [True]  # the HTTP framing was fine: the connection may be reused
    assert issubclass(CorruptBody, httpx.HTTPError)


def test_content_before_reading_a_stream_is_an_error_and_reading_twice_returns_the_same_body() -> None:
    async def scenario() -> None:
        response = UpstreamResponse(200, [], source=Chunks(b"ab", b"c"))
        with pytest.raises(httpx.ResponseNotRead):
            _ = response.content
        assert await response.aread() == b"abc"
        assert await response.aread() == b"abc"
        assert response.is_closed

    asyncio.run(scenario())


def test_leaving_a_stream_early_releases_gracefully_and_giving_up_abandons() -> None:
    async def scenario() -> tuple[list[bool], list[bool]]:
        left, gave_up = Chunks(b"a\n", b"b\n"), Chunks(b"a\n", b"b\n")
        first = UpstreamResponse(200, [], source=left)
        async for _ in first.aiter_lines():
            break
        await first.aclose()
        second = UpstreamResponse(200, [], source=gave_up)
        await second.aclose(abandon=True)
        await second.aclose()  # a second close changes nothing
        return left.released, gave_up.released

    assert asyncio.run(scenario()) == ([True], [False])


def test_a_compressed_body_that_inflates_past_the_limit_is_refused_whole_or_streamed() -> None:
    bomb = gzip.compress(b"\0" * (4 * 1024 * 1024))  # a few KiB on the wire
    coded = [(b"Content-Encoding", b"gzip")]

    async def scenario() -> None:
        with pytest.raises(CorruptBody, match="inflates beyond 1048576 bytes"):
            UpstreamResponse.read(200, coded, bomb, limit=1024 * 1024)
        streamed = UpstreamResponse(200, coded, source=Chunks(bomb), limit=1024 * 1024)
        with pytest.raises(CorruptBody, match="inflates beyond"):
            async for _ in streamed.aiter_bytes():
                pass

    asyncio.run(scenario())
    assert len(bomb) < 16 * 1024
