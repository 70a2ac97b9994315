"""One-token reachability probe of an endpoint, through the bus like any client request.

The probe sends a real chat completion (``max_tokens: 1``) with ``model`` set
to the endpoint's name, so it exercises the whole path a client would use:
router, provider worker, credential lookup and the upstream. It needs nothing
but a NATS connection and :mod:`shared`, so the HTTP admin API and a CLI
(``modelbus test endpoint NAME``) can both use it.
"""

from __future__ import annotations

import time

from msgspec import Struct
from nats.aio.client import Client

from shared import headers as H
from shared.client import ModelbusClient
from shared.errors import ModelbusError, error_from_wire

DEFAULT_TIMEOUT_MS = 15_000
"""Deadline of one probe when the caller gives none."""
MAX_TIMEOUT_MS = 120_000
"""Longest deadline a probe may ask for."""
PROBE_PROMPT = "ping"


class ProbeError(Struct, kw_only=True, frozen=True):
    """Why a probe failed, as the error reply said it."""

    message: str
    status: int
    code: str | None = None


class ProbeResult(Struct, kw_only=True, frozen=True):
    """Outcome of one probe."""

    ok: bool
    """Whether the endpoint answered with a completion."""
    latency_ms: float
    """Round trip through the bus, in milliseconds."""
    model: str | None
    """Upstream model that answered (``Modelbus-Model``), when it did."""
    endpoint: str
    """The endpoint probed."""
    error: ProbeError | None = None
    """The error reply, when it did not answer."""


async def probe_endpoint(nc: Client, endpoint: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> ProbeResult:
    """Send a one-token completion to ``endpoint`` and report whether and how fast it answered.

    Never raises for an unreachable endpoint: the failure is the result. An
    answer from another endpoint (an alias of the same name shadows the
    endpoint, see docs/contract.md) is reported as a failure, since the probed
    endpoint was not reached.
    """
    client = ModelbusClient(nc)
    request = {
        "model": endpoint,
        "messages": [{"role": "user", "content": PROBE_PROMPT}],
        "max_tokens": 1,
    }
    started = time.perf_counter()
    try:
        reply = await client.request_raw(
            request,
            headers={H.TIMEOUT_MS: str(timeout_ms)},
            # The router answers by the deadline; the extra second covers the hops to it.
            timeout=timeout_ms / 1000 + 1.0,
        )
    except ModelbusError as err:
        return _failed(endpoint, started, err)
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    if reply.status != 200:
        return _failed(endpoint, started, error_from_wire(reply.status, reply.body), latency_ms)
    answered_by = reply.headers.get(H.ENDPOINT)
    if answered_by is not None and answered_by != endpoint:
        error = ProbeError(
            message=f"the request for {endpoint!r} was answered by endpoint {answered_by!r}: "
            f"an alias named {endpoint!r} shadows the endpoint",
            status=409,
            code="endpoint_shadowed",
        )
        return ProbeResult(ok=False, latency_ms=latency_ms, model=None, endpoint=endpoint, error=error)
    return ProbeResult(ok=True, latency_ms=latency_ms, model=reply.headers.get(H.MODEL), endpoint=endpoint)


def _failed(endpoint: str, started: float, err: ModelbusError, latency_ms: float | None = None) -> ProbeResult:
    if latency_ms is None:
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
    return ProbeResult(
        ok=False,
        latency_ms=latency_ms,
        model=None,
        endpoint=endpoint,
        error=ProbeError(message=err.message, status=err.http_status, code=err.code),
    )
