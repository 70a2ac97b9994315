"""The SSRF guard: private destinations are refused unless the endpoint allows them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest

from services.providers.base import EndpointConnection
from services.providers.ssrf import PrivateAddressRefused, SsrfGuard, blocked_reason
from shared.routing import Endpoint


def fake_dns(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


DNS = fake_dns(
    {
        "api.example.com": ["93.184.216.34"],
        "internal.example.com": ["10.1.2.3"],
        "rebind.example.com": ["93.184.216.34", "127.0.0.1"],
        "metadata.example.com": ["169.254.169.254"],
        "v6.example.com": ["2606:4700::1111"],
        "v6-private.example.com": ["fd12:3456::1"],
        "mapped.example.com": ["::ffff:192.168.1.10"],
    }
)


def check(url: str, *, allow_private: bool = False) -> None:
    asyncio.run(SsrfGuard("ep", allow_private=allow_private, resolver=DNS).check_url(url))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "2002:0a00:0001::1",
        "224.0.0.1",
    ],
)
def test_private_and_special_addresses_are_blocked(address: str) -> None:
    assert blocked_reason(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(address) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://[::1]:11434/api/chat",
        "https://169.254.169.254/latest",
        "http://10.0.0.7/v1",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:10.0.0.1]/",
    ],
)
def test_ip_literals_in_private_space_are_refused(url: str) -> None:
    with pytest.raises(PrivateAddressRefused, match="allowPrivate"):
        check(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://internal.example.com/v1",
        "https://metadata.example.com/",
        "https://v6-private.example.com/",
        "https://mapped.example.com/v1",
        "https://rebind.example.com/v1",
    ],
)
def test_dns_names_that_resolve_inward_are_refused(url: str) -> None:
    with pytest.raises(PrivateAddressRefused, match="resolves to"):
        check(url)


def test_public_names_and_literals_are_allowed() -> None:
    check("https://api.example.com/v1/chat/completions")
    check("https://v6.example.com/v1")
    check("https://93.184.216.34/v1")


def test_allow_private_turns_the_guard_off() -> None:
    check("http://127.0.0.1:11434/api/chat", allow_private=True)
    check("https://internal.example.com/v1", allow_private=True)


def test_the_error_names_the_endpoint_and_the_address_but_no_credentials() -> None:
    with pytest.raises(PrivateAddressRefused) as caught:
        check("https://user:sk-secret@internal.example.com/v1?key=sk-secret")
    assert caught.value.http_status == 403
    assert "internal.example.com resolves to 10.1.2.3, a private address" in caught.value.message
    assert "sk-secret" not in caught.value.message


def test_the_connection_refuses_before_sending_and_never_follows_redirects() -> None:
    async def scenario() -> None:
        async def no_key(ref: str, endpoint: str) -> str:
            return ""

        endpoint = Endpoint(name="ep", provider="openai-compatible", base_url="https://api.example.com/v1")
        connection = EndpointConnection(endpoint, no_key, resolver=DNS)
        sent: list[str] = []

        def upstream(request: httpx.Request) -> httpx.Response:
            sent.append(str(request.url))
            return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})

        http = connection.http
        http._transport = httpx.MockTransport(upstream)  # only the network is replaced; the guard stays
        reply = await http.post("https://api.example.com/v1/models")
        assert reply.status_code == 302  # the redirect is returned, not followed
        assert sent == ["https://api.example.com/v1/models"]
        with pytest.raises(PrivateAddressRefused):
            await http.post("https://internal.example.com/v1/models")
        assert len(sent) == 1  # refused before anything left the process
        await connection.aclose()

    asyncio.run(scenario())
