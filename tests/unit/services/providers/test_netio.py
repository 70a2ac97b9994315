"""The asyncio network backend under the provider HTTP client: TLS, timeouts and a closed peer."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.providers.http import UpstreamClient
from services.providers.netio import AsyncioBackend

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelbus-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def answer_each_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 server that answers every POST with ANSWER."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def test_requests_over_tls_are_verified_and_reuse_the_connection(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer_each_request(reader, writer)

    async def scenario() -> list[int]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        client = UpstreamClient(timeout_s=5, ssl_context=trusting)
        statuses = [(await client.post(url, content=b"{}")).status_code for _ in range(3)]
        untrusting = UpstreamClient(timeout_s=5)  # the default (certifi) context does not know this certificate
        with pytest.raises(httpx.ConnectError):
            await untrusting.post(url, content=b"{}")
        await client.aclose()
        await untrusting.aclose()
        server.close()
        return statuses

    assert asyncio.run(scenario()) == [200, 200, 200]
    assert connections == 1  # one kept alive for all three calls (the refused handshake never reaches the handler)


def test_an_upstream_that_never_answers_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)

    async def scenario() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        client = UpstreamClient(timeout_s=5)
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, content=b"{}", timeout=0.2)
        assert client.in_flight == 0
        await client.aclose()
        server.close()

    asyncio.run(scenario())


def test_a_pooled_connection_the_peer_closed_is_seen_as_readable_and_replaced() -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head
        await reader.readexactly(2)
        writer.write(ANSWER)
        await writer.drain()
        writer.close()  # keep-alive promised, then closed: the pool must not reuse it

    async def scenario() -> list[int]:
        server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        client = UpstreamClient(timeout_s=5, shards=1)
        first = await client.post(url, content=b"{}")
        await asyncio.sleep(0.1)  # the FIN arrives
        second = await client.post(url, content=b"{}")
        await client.aclose()
        server.close()
        return [first.status_code, second.status_code]

    assert asyncio.run(scenario()) == [200, 200]


def test_connecting_to_a_closed_port_is_a_connect_error() -> None:
    async def scenario() -> None:
        with pytest.raises(httpcore.ConnectError):
            await AsyncioBackend().connect_tcp("127.0.0.1", 9, timeout=2)

    asyncio.run(scenario())
