"""SSRF guard: refuse upstream connections into private address space.

Unless an endpoint sets ``allowPrivate: true`` (ollama and mock default to
it), every request is checked before it is sent: the host is resolved and the
request is refused if **any** resolved address is loopback, private (RFC 1918,
unique-local IPv6), link-local (which covers the 169.254.169.254 metadata
service), CGNAT shared space, multicast, reserved or unspecified, including
IPv4-mapped and 6to4/Teredo-embedded forms. Redirects are never followed, so a
public URL cannot bounce a request inward.

The check runs when a connection is opened (:mod:`services.providers.netio`),
on the very addresses the connection then uses, so a DNS answer that changes
between the check and the connect (rebinding) cannot steer a request inward;
a kept-alive connection is checked once. Through a proxy, the proxy resolves
the name and the guard checks the name as this host resolves it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from shared.errors import PolicyDenied

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``; injectable for tests."""

CACHE_TTL_S = 10.0
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class PrivateAddressRefused(PolicyDenied):
    """The endpoint's host resolves into private address space and it does not allow that."""

    default_code = "private_address_refused"


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve with the event loop's ``getaddrinfo`` (never blocks the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def blocked_reason(address: str) -> str | None:
    """Why ``address`` is off limits, or ``None`` if it is a public address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            inner = blocked_reason(str(embedded))
            if inner:
                return f"{inner} (embedded in {ip})"
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "a reserved address"
    return None


class SsrfGuard:
    """Per-endpoint check, with a short per-host cache of verdicts."""

    def __init__(self, endpoint_name: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> None:
        self.endpoint_name = endpoint_name
        self.allow_private = allow_private
        self.resolver = resolver
        self._verdicts: dict[tuple[str, int], tuple[str | None, float]] = {}

    async def check_url(self, url: str) -> None:
        """Raise :class:`PrivateAddressRefused` if ``url`` may not be reached."""
        if self.allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise PrivateAddressRefused(f"endpoint {self.endpoint_name!r}: URL has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (host, port)
        cached = self._verdicts.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            verdict = cached[0]
        else:
            verdict = await self._judge(host, port)
            self._verdicts[key] = (verdict, now + CACHE_TTL_S)
        if verdict is not None:
            raise PrivateAddressRefused(
                f"endpoint {self.endpoint_name!r}: {host} {verdict}; "
                "set allowPrivate: true on the endpoint if this is intended"
            )

    async def _judge(self, host: str, port: int) -> str | None:
        literal = host.strip("[]")
        try:
            ipaddress.ip_address(literal.split("%", 1)[0])
            addresses: Sequence[str] = [literal]
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except OSError:
                return None  # unresolvable: the connection itself will fail with a clear transport error
        for address in addresses:
            reason = blocked_reason(address)
            if reason is not None:
                return f"resolves to {address}, {reason}" if address != literal else f"is {reason}"
        return None
