"""The errors the provider HTTP client raises, each an httpx exception class with a message of ours.

Adapters catch ``httpx.HTTPError`` and :func:`services.providers.http.transport_error`
maps it onto the error tree (timeouts to ``UpstreamTimeout``, the rest to
``UpstreamUnavailable``, both retryable). An httpx exception's text is never
quoted there, since it can carry the request URL; these carry only what the
client wrote (a host and port, a limit, llhttp's reason), marked by
:class:`Explained`, so their reason reaches the caller::

    Explained (mixin)
    ├── ConnectFailed           httpx.ConnectError       refused, unresolvable, TLS handshake failed
    │   └── TLSVerifyFailed                              the certificate did not verify
    ├── ConnectTimedOut         httpx.ConnectTimeout
    ├── PoolTimedOut            httpx.PoolTimeout
    ├── ReadTimedOut            httpx.ReadTimeout
    ├── WriteTimedOut           httpx.WriteTimeout
    ├── ConnectionLost          httpx.ReadError          reset during the call
    ├── UpstreamProtocolError   httpx.RemoteProtocolError  malformed, over a limit, cut short
    ├── ProxyFailed             httpx.ProxyError
    ├── CorruptBody             httpx.DecodingError      gzip/deflate that does not decompress
    └── BadRequestHeader        httpx.LocalProtocolError  a header that cannot be sent as it is
"""

from __future__ import annotations

import httpx


class Explained:
    """Mixin of the errors this client raises: their message is ours and names no URL, query or
    header value (llhttp's reason, a limit, a host and port), so the error mapping may quote it."""


class ConnectFailed(Explained, httpx.ConnectError):
    """No connection: refused, unresolvable, TLS handshake failed."""


class TLSVerifyFailed(ConnectFailed):
    """The upstream's certificate did not verify (unknown CA, expired, wrong host name)."""


class ConnectTimedOut(Explained, httpx.ConnectTimeout):
    """No connection (TCP, proxy tunnel and TLS) within the timeout."""


class PoolTimedOut(Explained, httpx.PoolTimeout):
    """Every pooled connection stayed busy for the whole timeout."""


class ReadTimedOut(Explained, httpx.ReadTimeout):
    """The upstream was silent for the whole timeout while an answer was awaited."""


class WriteTimedOut(Explained, httpx.WriteTimeout):
    """The upstream took none of the request for the whole timeout."""


class ConnectionLost(Explained, httpx.ReadError):
    """The connection broke (reset) during the call."""


class UpstreamProtocolError(Explained, httpx.RemoteProtocolError):
    """The answer is not valid HTTP/1.1, is over a limit, or was cut short by the upstream."""


class ProxyFailed(Explained, httpx.ProxyError):
    """The proxy refused the tunnel or broke its protocol."""


class CorruptBody(Explained, httpx.DecodingError):
    """The answer's gzip or deflate body does not decompress."""


class BadRequestHeader(Explained, httpx.LocalProtocolError):
    """A request header cannot be sent as it is (a line break, NUL, or non-latin-1 text)."""
