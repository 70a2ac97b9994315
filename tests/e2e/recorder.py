"""Loopback HTTP helpers for the Claude Code test: a recording reverse proxy and a proxy that refuses.

:class:`RecordingProxy` sits between Claude Code and the gateway. It relays every
request to the gateway unchanged and the answer back as it arrives (chunk by
chunk, so a stream stays a stream), and keeps what went through: method, path,
headers, the request body and the answer's status and body. That is how the
test sees what Claude Code really sent, and what to report when the gateway
refuses it.

:class:`RefusingProxy` is what ``HTTP_PROXY``/``HTTPS_PROXY`` point at. Any
request Claude Code tries to send anywhere but loopback (``NO_PROXY`` exempts
loopback) lands here, is answered 403 and is recorded, so the test can assert
that there were none.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Headers that carry a key: kept out of the recording, so no key reaches a log or a file.
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization", "cookie"})
# Hop-by-hop headers (RFC 9110 section 7.6.1) and the framing this proxy sets itself.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"}
)


@dataclass
class Exchange:
    """One request that went through a proxy, and the answer it got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    answer_headers: dict[str, str] = field(default_factory=dict)
    answer: bytearray = field(default_factory=bytearray)

    def json(self) -> Any:
        """The request body, decoded."""
        return json.loads(self.body)

    def answer_text(self) -> str:
        """The answer's body as text."""
        return self.answer.decode("utf-8", "replace")

    def streamed_text(self) -> str:
        """The text an Anthropic event stream carried: every ``text_delta`` of the answer, joined."""
        text = []
        for line in self.answer_text().splitlines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                delta = event.get("delta") or {}
                if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
                    text.append(delta["text"])
        return "".join(text)


def _redacted(headers: Any) -> dict[str, str]:
    return {k.lower(): ("<redacted>" if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], upstream: str | None) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()

    def keep(self, exchange: Exchange) -> None:
        with self.lock:
            self.exchanges.append(exchange)


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the recording is the log."""

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self) -> None:
        body = self._read_body()
        exchange = Exchange(self.command, self.path, _redacted(self.headers), body)
        self.server.keep(exchange)
        assert self.server.upstream is not None
        target = urlsplit(self.server.upstream)
        upstream = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=120)
        try:
            forwarded = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            forwarded["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=forwarded)
            answer = upstream.getresponse()
            exchange.status = answer.status
            exchange.answer_headers = _redacted(dict(answer.getheaders()))
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_HEADERS:
                    self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := answer.read1(65536):
                exchange.answer += chunk
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _relay


class _Refuse(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the recording is the log."""

    def _refuse(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.keep(Exchange(self.command, self.path, _redacted(self.headers), body, status=403))
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    do_CONNECT = do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse


class _Running:
    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    @property
    def exchanges(self) -> list[Exchange]:
        with self._server.lock:
            return list(self._server.exchanges)


class RecordingProxy(_Running):
    """A running recording reverse proxy in front of ``upstream``; ``url`` is where clients go."""


class RefusingProxy(_Running):
    """A running forward proxy that refuses (403) and records every request."""


@contextmanager
def _serving(server: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def recording_proxy(upstream: str) -> Iterator[RecordingProxy]:
    """Relay to ``upstream`` (``http://127.0.0.1:PORT``) and record, for the ``with`` block."""
    with _serving(_Server(_Relay, upstream)) as server:
        yield RecordingProxy(server)


@contextmanager
def refusing_proxy() -> Iterator[RefusingProxy]:
    """Refuse and record every request, for the ``with`` block."""
    with _serving(_Server(_Refuse, None)) as server:
        yield RefusingProxy(server)
