"""``Modelbus-Overhead-Ms``: the time modelbus spent on a request, excluding the upstream.

Every hop measures only its own time, with its own monotonic clock, and adds it to what the hop
before it reported, so clocks of different hosts never meet (no skew):

* the HTTP gateway, from the HTTP request to its NATS publish, sends that on the request;
* the router adds its time up to the attempt that answers (resolving, policy, waits between
  attempts; failed attempts count as upstream time) and hands the sum to the provider worker
  in the call's delivery headers;
* the provider worker adds its time from taking the call to sending the answer, minus the
  upstream call (for a stream: minus the wait for the first content), and sets the header on the
  completion, on a stream's first chunk and on its terminator (the same value: upstream time is
  not final before the end);
* an error the router answers carries the router's sum; the gateway adds its own time from the
  reply to the response headers.

Network transit between hops is not counted by anyone (it is neither modelbus's work nor the
upstream's). Values are milliseconds with three decimals.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared import headers as H

MAX_MS = 3_600_000.0
"""A value above an hour is not believed (a client may send anything): read as 0."""


def prior_ms(headers: Mapping[str, str]) -> float:
    """The overhead the hops before this one reported (0 when absent or unreadable)."""
    raw = headers.get(H.OVERHEAD_MS)
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        return 0.0
    return value if 0.0 <= value <= MAX_MS else 0.0


def overhead_value(prior: float, own_s: float) -> str:
    """The header's value: ``prior`` milliseconds plus this hop's ``own_s`` seconds (never negative)."""
    return f"{prior + max(own_s, 0.0) * 1000:.3f}"
