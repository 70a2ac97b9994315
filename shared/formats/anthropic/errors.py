"""What an HTTP ingress speaking Anthropic's format writes back besides answers: errors in
Anthropic's shape (https://docs.anthropic.com/en/api/errors) and the server-sent events of a
stream (https://docs.anthropic.com/en/docs/build-with-claude/streaming).

Errors
======

An error answer is ``{"type": "error", "error": {"type", "message"}, "request_id"?}``. Its
status is :func:`shared.formats.openai.http_error_status` (the error's own status; 408
becomes 504, anything outside 400-599 becomes 502), so both ingresses answer one error with
one status, and the headers are :func:`shared.formats.openai.http_error_headers`
(``retry-after``, ``retry-after-ms``, ``x-should-retry``). The ``error.type`` follows the
status as Anthropic documents it (:data:`ERROR_TYPES`)::

    400 invalid_request_error   InvalidRequest, ConfigError, BadUpstreamRequest
    401 authentication_error    AuthenticationError, AuthFailed
    403 permission_error        PolicyDenied, PrivateAddressRefused, AuthFailed (403)
    404 not_found_error         NotFound, BadUpstreamRequest (404)
    409 conflict_error          Conflict
    413 request_too_large       PayloadTooLarge
    429 rate_limit_error        RateLimited
    500 api_error               ModelbusError, AuditChainBroken
    502 api_error               BadUpstreamResponse, WorkerLost, CredentialUnavailable, VaultError
    503 overloaded_error        NoRouteAvailable, UpstreamUnavailable, AuditError, StoreUnavailable
    504 timeout_error           UpstreamTimeout, RequestLost, DeadlineExceeded (408)
    529 overloaded_error        UpstreamUnavailable relaying Anthropic's own 529

Other 4xx are ``invalid_request_error`` (the docs: "may also be used for other 4XX status
codes not listed"), other 5xx ``api_error``. Anthropic documents no 502 or 503. A 502 is an
answer modelbus could not use, which is what ``api_error`` ("an unexpected error ... internal
to Anthropic's systems") covers. A 503 is "nothing can serve this right now, try again
shortly", which is what ``overloaded_error`` means (other gateways with an Anthropic edge
map 503 the same way), so a client that tells overload from failure by the type backs off
and retries; the status stays 503, not 529, so HTTP tooling between the client and
modelbus reads it as what it is. The anthropic SDK raises ``InternalServerError``
for both (it gives 529 ``OverloadedError``, 413 ``RequestTooLargeError``, and the other 4xx
the classes OpenAI's SDK gives them). Anthropic's body has no ``code`` or ``param``; the
message already names the field (``messages[0].content: ...``).

Streams
=======

:class:`~shared.formats.anthropic.ingress.StreamWriter` yields ``(name, data)`` pairs;
:func:`sse_event` frames one as ``event: <name>`` / ``data: <json>`` and a blank line.
:data:`PING_EVENT` keeps an idle stream open, and :func:`error_event` ends a stream that
fails after it started (the SDK raises from it; no ``message_stop`` follows).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from shared.errors import ModelbusError
from shared.formats.anthropic import wire
from shared.formats.anthropic.ingress import NativeEvent
from shared.formats.openai import http_error_headers, http_error_status

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's error type for each status it documents, plus modelbus's 502 and 503."""


class ErrorResponse(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, tag_field="type", tag="error"):
    """An error answer's body, and the data of an ``error`` event (``type`` is always ``error``)."""

    error: wire.ErrorDetail
    request_id: str | None = None
    """The request's id, as Anthropic puts it in its error bodies; left out when unknown."""


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an answer with this HTTP status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def _error_response(err: ModelbusError, status: int, request_id: str | None) -> bytes:
    detail = wire.ErrorDetail(type=error_type(status), message=err.message)
    return wire.encoder.encode(ErrorResponse(error=detail, request_id=request_id))


def error_to_native(err: ModelbusError, *, request_id: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """``err`` as an Anthropic error answer: status, headers and body (see the module docstring)."""
    status = http_error_status(err)
    return status, http_error_headers(err), _error_response(err, status, request_id)


def sse_event(event: NativeEvent) -> bytes:
    """One event as a server-sent event. The data is one JSON line (JSON escapes newlines)."""
    name, data = event
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def sse_events(events: Iterable[NativeEvent]) -> bytes:
    """Several events as one write (what one chunk adds, or the closing events)."""
    return b"".join(sse_event(event) for event in events)


PING_EVENT = sse_event(("ping", wire.encoder.encode(wire.Ping())))
"""``event: ping``, which Anthropic sends to keep a stream open; clients skip it."""


def error_event(err: ModelbusError, *, request_id: str | None = None) -> bytes:
    """The ``error`` event that ends a stream failing after it started.

    Its ``error.type`` is the one the same error would get as an answer's status, so a
    client sees ``overloaded_error`` for a 503, mid-stream or not.
    """
    return sse_event(("error", _error_response(err, http_error_status(err), request_id)))
