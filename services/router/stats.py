"""What one router has seen of each target: load, latency, outcomes.

The ``least-latency`` and ``least-busy`` strategies read these numbers on
every request, and the router's health view shows them. They are per router
and in memory only: routers share nothing, so two routers can briefly rank
targets differently (see :mod:`services.router.strategies`).

Kept per target key ``(endpoint name, model)``:

- requests in flight, counted by :meth:`TargetStats.start` and
  :meth:`TargetStats.finish`;
- an exponentially weighted moving average (EWMA) of the total latency of
  non-streamed requests, and one of the time to first token of streams;
- success and error counts and the last error's status.

Every call on the hot path is O(1): a dict lookup and a little arithmetic,
and no new containers once a key is known. Keys are bounded, because
``endpoint/model`` names and brought-along endpoints make them open-ended:
when a new key would pass ``max_keys``, the least recently used keys with
nothing in flight are dropped, down to three quarters of the bound, so the
cost of that sort is spread over many insertions.
"""

from __future__ import annotations

from msgspec import Struct

TargetKey = tuple[str, str]
"""``(endpoint name, model)``, as in :attr:`services.router.table.ResolvedTarget.key`."""

DEFAULT_ALPHA = 0.2
DEFAULT_MAX_KEYS = 4096


class TargetSnapshot(Struct, kw_only=True, frozen=True):
    """One target's numbers at one moment, for the router's health view."""

    endpoint: str
    """Endpoint name."""
    model: str
    """Upstream model name."""
    in_flight: int
    """Requests this router has sent and not yet seen finish."""
    latency_ewma_ms: float | None
    """EWMA of total latency of non-streamed requests; ``None`` before the first sample."""
    ttft_ewma_ms: float | None
    """EWMA of time to first token of streams; ``None`` before the first sample."""
    errors: int
    """Attempts that failed."""
    successes: int
    """Attempts that succeeded."""
    last_error_status: int | None
    """Status of the most recent failure; ``None`` if there was none."""


class _Entry:
    __slots__ = ("errors", "in_flight", "last_error_status", "latency", "successes", "touched", "ttft")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency: float | None = None
        self.ttft: float | None = None
        self.errors = 0
        self.successes = 0
        self.last_error_status: int | None = None
        self.touched = 0
        """Value of the owner's use counter at the last start or finish (for eviction)."""


class TargetStats:
    """Per-target load and latency as seen by this router.

    Not thread-safe: the router calls it from its single asyncio thread.
    """

    __slots__ = ("_alpha", "_entries", "_low_water", "_max_keys", "_uses")

    def __init__(self, *, alpha: float = DEFAULT_ALPHA, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha}")
        if max_keys < 1:
            raise ValueError(f"max_keys: must be at least 1, got {max_keys}")
        self._alpha = alpha
        self._max_keys = max_keys
        # Evicting down to a low-water mark, not to max_keys - 1, means a stream
        # of new keys pays for one sort per max_keys / 4 insertions, not per insertion.
        self._low_water = max_keys - max(1, max_keys // 4)
        self._entries: dict[TargetKey, _Entry] = {}
        self._uses = 0

    def _entry(self, key: TargetKey) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_keys:
                self._evict_idle()
            entry = self._entries[key] = _Entry()
        self._uses += 1
        entry.touched = self._uses
        return entry

    def _evict_idle(self) -> None:
        """Drop the least recently used keys with nothing in flight, down to the low-water mark."""
        excess = len(self._entries) - self._low_water
        # ``touched`` values are unique, so the sort never compares keys.
        idle = sorted((e.touched, k) for k, e in self._entries.items() if e.in_flight == 0)
        for _, key in idle[:excess]:
            del self._entries[key]

    def start(self, key: TargetKey) -> None:
        """Count an attempt sent to ``key`` as in flight."""
        self._entry(key).in_flight += 1

    def finish(
        self,
        key: TargetKey,
        *,
        latency_s: float | None,
        ttft_s: float | None,
        error_status: int | None,
    ) -> None:
        """Record the end of an attempt started with :meth:`start`.

        ``error_status`` is ``None`` for a success. ``latency_s`` is the total
        latency of a non-streamed attempt; for a stream pass ``ttft_s`` instead,
        since a stream's duration measures its length more than the target.
        Either may be ``None`` when unknown.

        A failed attempt can make a target look slower, never faster: its
        latency is averaged in only when it exceeds the current average. A
        fast 401 or 500 must not make a broken target the ``least-latency``
        pick, while a timeout should still count against it.
        """
        entry = self._entry(key)
        if entry.in_flight > 0:
            entry.in_flight -= 1
        alpha = self._alpha
        if error_status is None:
            entry.successes += 1
            if latency_s is not None:
                old = entry.latency
                entry.latency = latency_s if old is None else old + alpha * (latency_s - old)
            if ttft_s is not None:
                old = entry.ttft
                entry.ttft = ttft_s if old is None else old + alpha * (ttft_s - old)
        else:
            entry.errors += 1
            entry.last_error_status = error_status
            old = entry.latency
            if latency_s is not None and old is not None and latency_s > old:
                entry.latency = old + alpha * (latency_s - old)
            old = entry.ttft
            if ttft_s is not None and old is not None and ttft_s > old:
                entry.ttft = old + alpha * (ttft_s - old)

    def in_flight(self, key: TargetKey) -> int:
        """Attempts to ``key`` this router has started and not finished."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.in_flight

    def latency_ewma(self, key: TargetKey, *, streaming: bool) -> float | None:
        """Average latency of ``key`` in seconds, ``None`` while unmeasured.

        For streams this is the time-to-first-token average, falling back to
        the total-latency average while no stream has been measured.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        if streaming and entry.ttft is not None:
            return entry.ttft
        return entry.latency

    def snapshot(self) -> list[TargetSnapshot]:
        """Every known target's numbers, sorted by endpoint and model."""
        return [
            TargetSnapshot(
                endpoint=endpoint,
                model=model,
                in_flight=e.in_flight,
                latency_ewma_ms=None if e.latency is None else e.latency * 1000.0,
                ttft_ewma_ms=None if e.ttft is None else e.ttft * 1000.0,
                errors=e.errors,
                successes=e.successes,
                last_error_status=e.last_error_status,
            )
            for (endpoint, model), e in sorted(self._entries.items())
        ]
