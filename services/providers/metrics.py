"""A provider worker's metrics: one observation per call, once its outcome is sent.

Label children are bound once per ``(provider, endpoint, model, status)`` and cached; with
``MODELBUS_METRICS=off`` the worker makes no :class:`ProviderMetrics` and skips it with one
``is None`` test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from prometheus_client import Counter, Histogram

from shared import metrics as M

MAX_CACHED = 10_000
"""Label tuples kept bound; past it the cache starts again."""


class _Bound(NamedTuple):
    calls: Counter
    duration: Histogram


class ProviderMetrics:
    """Counts and times this worker's upstream calls; one per worker."""

    def __init__(self, in_flight: Callable[[], float]) -> None:
        self._bound: dict[tuple[str, str, str, int], _Bound] = {}
        M.in_flight_gauge(in_flight)
        self._overhead = M.overhead_seconds.labels("providers")

    def observe(
        self, provider: str, endpoint: str, model: str, status: int, seconds: float, overhead: str | None
    ) -> None:
        """One call's outcome: its status and duration (and the overhead its answer carried)."""
        key = (provider, endpoint, model, status)
        bound = self._bound.get(key)
        if bound is None:
            if len(self._bound) >= MAX_CACHED:
                self._bound.clear()
            labels = (provider, endpoint, model, str(status))
            bound = self._bound[key] = _Bound(
                M.provider_calls_total.labels(*labels), M.provider_call_duration.labels(*labels)
            )
        bound.calls.inc()
        bound.duration.observe(seconds)
        if overhead is not None:
            self._overhead.observe(float(overhead) / 1000)
