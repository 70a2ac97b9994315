"""Opening upstream connections: the SSRF check at connect time, TLS, proxies from the environment."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from services.providers.http import UpstreamClient, transport_error
from services.providers.netio import environment_proxy
from services.providers.ssrf import PrivateAddressRefused, SsrfGuard
from services.providers.transport_errors import TLSVerifyFailed
from shared.errors import UpstreamTimeout, UpstreamUnavailable
from tests.unit.services.providers.upstream_fakes import (
    ON_BOTH_LOOPS,
    Request,
    Run,
    Upstream,
    answer,
    keep_alive,
    self_signed,
    server_tls,
    serving,
)

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def dns(table: dict[str, list[str]], asked: list[str] | None = None):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> Sequence[str]:
        if asked is not None:
            asked.append(host)
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


def guarded(table: dict[str, list[str]], *, allow_private: bool, asked: list[str] | None = None) -> SsrfGuard:
    return SsrfGuard("ep", allow_private=allow_private, resolver=dns(table, asked))


# ---------------------------------------------------------------- SSRF at connect time


@pytest.mark.parametrize(
    ("url", "table"),
    [
        ("http://api.example.test:{port}/v1", {"api.example.test": ["127.0.0.1"]}),
        ("http://rebind.example.test:{port}/v1", {"rebind.example.test": ["93.184.216.34", "127.0.0.1"]}),
        ("http://127.0.0.1:{port}/v1", {}),
    ],
    ids=["resolves-inward", "one-address-inward", "private-literal"],
)
def test_a_private_destination_is_refused_when_connecting_and_nothing_reaches_it(
    url: str, table: dict[str, list[str]]
) -> None:
    async def scenario() -> PrivateAddressRefused:
        async with serving(keep_alive()) as upstream:
            client = UpstreamClient(timeout_s=5, guard=guarded(table, allow_private=False))
            with pytest.raises(PrivateAddressRefused) as caught:
                await client.post(url.format(port=upstream.port), content=b"{}")
            assert upstream.connections == 0
            assert client.in_flight == 0
            await client.aclose()
        return caught.value

    err = asyncio.run(scenario())
    assert err.http_status == 403 and "allowPrivate" in err.message


def test_the_connection_goes_to_the_address_the_guard_checked_not_to_a_second_lookup() -> None:
    asked: list[str] = []

    async def scenario() -> None:
        async with serving(keep_alive()) as upstream:
            guard = guarded({"models.internal.test": ["127.0.0.1"]}, allow_private=True, asked=asked)
            client = UpstreamClient(timeout_s=5, guard=guard)
            for _ in range(3):
                reply = await client.post(f"http://models.internal.test:{upstream.port}/v1", content=b"{}")
                assert reply.status_code == 200
            assert upstream.requests[0].header("host") == f"models.internal.test:{upstream.port}"
            await client.aclose()

    asyncio.run(scenario())
    assert asked == ["models.internal.test"]  # once, for the one connection: no resolution behind its back


def test_an_unresolvable_host_is_a_retryable_connect_error() -> None:
    async def scenario() -> httpx.HTTPError:
        client = UpstreamClient(timeout_s=5, guard=guarded({}, allow_private=False))
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post("https://nowhere.example.test/v1", content=b"{}")
        await client.aclose()
        return caught.value

    err = transport_error(asyncio.run(scenario()), endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamUnavailable) and "cannot resolve nowhere.example.test" in err.message


# ---------------------------------------------------------------- TLS


@ON_BOTH_LOOPS
def test_requests_over_tls_are_verified_and_reuse_the_connection(tmp_path: Path, run: Run) -> None:
    cert, key = self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        async with serving(keep_alive(), tls=server_tls(cert, key)) as upstream:
            client = UpstreamClient(timeout_s=5, ssl_context=trusting)
            statuses = [(await client.post(f"{upstream.url}/v1", content=b"{}")).status_code for _ in range(3)]
            assert statuses == [200, 200, 200]
            assert upstream.connections == 1
            await client.aclose()

    run(scenario())


@ON_BOTH_LOOPS
def test_a_certificate_that_does_not_verify_is_a_clear_connect_error(tmp_path: Path, run: Run) -> None:
    cert, key = self_signed(tmp_path)

    async def scenario() -> httpx.HTTPError:
        async with serving(keep_alive(), tls=server_tls(cert, key)) as upstream:
            client = UpstreamClient(timeout_s=5)  # the default (certifi) roots do not know this certificate
            with pytest.raises(TLSVerifyFailed) as caught:
                await client.post(f"{upstream.url}/v1", content=b"{}")
            assert upstream.requests == []
            await client.aclose()
        return caught.value

    err = transport_error(run(scenario()), endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamUnavailable)
    assert "TLS certificate of 127.0.0.1 did not verify" in err.message


def test_tls_names_the_host_by_sni_and_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, dns="models.example.test")
    tls = server_tls(cert, key)
    names: list[str | None] = []
    tls.sni_callback = lambda _sock, name, _ctx: names.append(name)
    trusting = ssl.create_default_context(cafile=str(cert))
    table = {"models.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]}

    async def scenario() -> None:
        async with serving(keep_alive(), tls=tls) as upstream:
            guard = guarded(table, allow_private=True)
            client = UpstreamClient(timeout_s=5, guard=guard, ssl_context=trusting)
            ok = await client.post(f"https://models.example.test:{upstream.port}/v1", content=b"{}")
            assert ok.status_code == 200
            with pytest.raises(TLSVerifyFailed, match=r"other\.example\.test"):
                await client.post(f"https://other.example.test:{upstream.port}/v1", content=b"{}")
            await client.aclose()

    asyncio.run(scenario())
    assert names == ["models.example.test", "other.example.test"]


def test_a_custom_ca_from_ssl_cert_file_is_trusted_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))

    async def scenario() -> int:
        async with serving(keep_alive(), tls=server_tls(cert, key)) as upstream:
            client = UpstreamClient(timeout_s=5)
            status = (await client.post(f"{upstream.url}/v1", content=b"{}")).status_code
            await client.aclose()
        return status

    assert asyncio.run(scenario()) == 200


@ON_BOTH_LOOPS
def test_a_tls_handshake_that_never_completes_is_a_connect_timeout(run: Run) -> None:
    async def silent(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a TCP server that never speaks TLS

    async def scenario() -> httpx.HTTPError:
        async with serving(silent) as upstream:
            client = UpstreamClient(timeout_s=5)
            with pytest.raises(httpx.ConnectTimeout) as caught:
                await client.post(f"https://127.0.0.1:{upstream.port}/v1", content=b"{}", timeout=0.2)
            await client.aclose()
        return caught.value

    err = transport_error(run(scenario()), endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamTimeout) and err.retryable


# ---------------------------------------------------------------- proxies


def test_the_proxy_comes_from_the_environment_unless_no_proxy_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    assert environment_proxy("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example.com")
    assert environment_proxy("https://api.openai.com/v1") == "http://proxy.corp:3128"
    assert environment_proxy("https://internal.example.com/v1") is None
    assert environment_proxy("http://api.openai.com/v1") is None  # no proxy for plain http


def test_a_plain_http_upstream_is_reached_through_http_proxy_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        async with serving(keep_alive()) as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://alice:s%40cret@127.0.0.1:{proxy.port}")
            client = UpstreamClient(
                timeout_s=5, guard=guarded({"models.example.test": ["93.184.216.34"]}, allow_private=False)
            )
            for _ in range(2):
                reply = await client.post("http://models.example.test/v1/chat?x=1", content=b"{}")
                assert reply.status_code == 200
            request = proxy.requests[0]
            assert request.line == b"POST http://models.example.test/v1/chat?x=1 HTTP/1.1"
            assert request.header("host") == "models.example.test"
            assert request.header("proxy-authorization") == "Basic " + base64.b64encode(b"alice:s@cret").decode()
            assert proxy.connections == 1
            await client.aclose()

    asyncio.run(scenario())


def test_a_proxy_never_takes_a_request_the_guard_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with serving(keep_alive()) as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            client = UpstreamClient(
                timeout_s=5, guard=guarded({"metadata.test": ["169.254.169.254"]}, allow_private=False)
            )
            with pytest.raises(PrivateAddressRefused):
                await client.post("http://metadata.test/latest", content=b"{}")
            assert proxy.connections == 0
            await client.aclose()

    asyncio.run(scenario())


async def tunnel(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A CONNECT proxy: records the request, then pipes bytes both ways to 127.0.0.1 at the asked port."""
    head = await reader.readuntil(b"\r\n\r\n")
    upstream.requests.append(Request(head, b""))
    port = int(head.split(b" ")[1].rsplit(b":", 1)[1])
    far_reader, far_writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        dst.close()

    await asyncio.gather(pipe(reader, far_writer), pipe(far_reader, writer), return_exceptions=True)


@ON_BOTH_LOOPS
@pytest.mark.parametrize("proxy_scheme", ["http", "https"])
def test_an_https_upstream_is_reached_through_a_connect_tunnel_with_tls_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Run, proxy_scheme: str
) -> None:
    cert, key = self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(cert))  # the proxy's and the origin's (one test CA)
    proxy_tls = server_tls(cert, key) if proxy_scheme == "https" else None

    async def scenario() -> None:
        async with serving(keep_alive(), tls=server_tls(cert, key)) as origin, serving(tunnel, tls=proxy_tls) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"{proxy_scheme}://bob:pw@127.0.0.1:{proxy.port}")
            client = UpstreamClient(timeout_s=5, ssl_context=trusting)
            for _ in range(2):
                assert (await client.post(f"https://localhost:{origin.port}/v1", content=b"{}")).status_code == 200
            connect = proxy.requests[0]
            assert connect.line == f"CONNECT localhost:{origin.port} HTTP/1.1".encode()
            assert connect.header("proxy-authorization") == "Basic " + base64.b64encode(b"bob:pw").decode()
            assert origin.requests[0].line == b"POST /v1 HTTP/1.1"  # the proxy saw only ciphertext after CONNECT
            assert (proxy.connections, origin.connections) == (1, 1)
            await client.aclose()

    run(scenario())


def test_a_proxy_that_refuses_the_tunnel_is_a_proxy_error_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refuse = answer(b"denied", status="407 Proxy Authentication Required")

    async def deny(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(refuse)
        await writer.drain()

    async def scenario() -> httpx.HTTPError:
        async with serving(deny) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", f"http://carol:hunter2@127.0.0.1:{proxy.port}")
            client = UpstreamClient(timeout_s=5)
            with pytest.raises(httpx.ProxyError) as caught:
                await client.post("https://api.example.test/v1", content=b"{}")
            await client.aclose()
        return caught.value

    exc = asyncio.run(scenario())
    err = transport_error(exc, endpoint="ep", provider="openai", model="m")
    assert isinstance(err, UpstreamUnavailable) and "answered 407 to CONNECT api.example.test:443" in err.message
    assert "hunter2" not in err.message and "carol" not in err.message and "hunter2" not in str(exc)
