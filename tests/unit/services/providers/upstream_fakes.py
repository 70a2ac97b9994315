"""Loopback upstreams that misbehave on purpose, for the provider HTTP client's tests.

llm-katan (tests/integration) is the well-behaved upstream; these are for what
no real server does on request: cut an answer short, lie about lengths, send
garbage, close a kept-alive connection, stay silent, or stand in for a proxy.
Each counts the connections and requests it saw, so a test can tell reuse from
reconnection and one send from two.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

OK_BODY = b'{"ok":true}'

Run = Callable[[Any], Any]
"""``asyncio.run`` or ``uvloop.run``."""
ON_BOTH_LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
"""Run a scenario on asyncio's own loop and on uvloop's (the services run on uvloop)."""


def answer(body: bytes = OK_BODY, *, status: str = "200 OK", headers: str = "") -> bytes:
    """A whole answer with a Content-Length."""
    extra = "".join(f"{line}\r\n" for line in headers.split("\n") if line)
    return f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``b""`` gives the terminator)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass
class Request:
    head: bytes
    body: bytes

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


@dataclass
class Upstream:
    """What a fake upstream saw."""

    url: str = ""
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set each time the server side of a connection has been closed."""


Handler = Callable[[Upstream, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(upstream: Upstream, reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection (the client always sends a Content-Length), or ``None`` at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        request = Request(head, b"")
        request.body = await reader.readexactly(int(request.header("content-length") or 0))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    upstream.requests.append(request)
    return request


def keep_alive(reply: bytes = b"") -> Handler:
    """Answer every request on the connection with ``reply`` (a plain 200 by default)."""

    async def handle(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(upstream, reader) is not None:
            writer.write(reply or answer())
            await writer.drain()

    return handle


def once(reply: bytes) -> Handler:
    """Read one request, send ``reply`` (which may be anything), then close."""

    async def handle(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await read_request(upstream, reader) is not None:
            writer.write(reply)
            await writer.drain()

    return handle


@asynccontextmanager
async def serving(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Upstream]:
    """Run ``handler`` for every connection to a loopback port until the block ends."""
    upstream = Upstream()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.connections += 1
        try:
            await handler(upstream, reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            if tls is not None:
                writer.transport.abort()  # no TLS close_notify exchange: the fakes need not wait 30 s for it
            else:
                writer.close()
                try:
                    await writer.wait_closed()
                except ConnectionError:
                    pass
            upstream.closed.set()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=tls)
    upstream.port = server.sockets[0].getsockname()[1]
    upstream.url = f"{'https' if tls else 'http'}://127.0.0.1:{upstream.port}"
    try:
        yield upstream
    finally:
        server.close()


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polling the loop), or fail naming ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def self_signed(tmp_path: Path, *, dns: str = "localhost") -> tuple[Path, Path]:
    """A certificate for ``dns`` and 127.0.0.1 (its own CA), and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelbus-test")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
