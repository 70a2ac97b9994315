"""The closed-loop load generator, interleaved rounds, and the statistics the report uses.

A contender is reduced to one coroutine function, :data:`Send`, that performs
one request and raises when it failed (non-200 or any exception). The load
generator runs K workers that each call it back to back, timing every call
with ``perf_counter``; a failure is counted and kept as a sample message,
never allowed to abort the run.

Percentiles interpolate linearly between the two nearest ranks (numpy's
default), so p99 of 2,000 samples sits between the 1,980th and 1,981st.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Send = Callable[[], Awaitable[None]]
"""Perform one request; raise :class:`RequestFailed` (or anything) when it did not succeed."""

MAX_ERROR_SAMPLES = 5


class RequestFailed(Exception):
    """A request got an answer, but not a successful one (non-200, empty stream, ...)."""


@dataclass
class LoadResult:
    """What one or more load runs of one contender observed."""

    latencies_ms: list[float] = field(default_factory=list)
    """Latency of every successful request, in completion order."""
    errors: int = 0
    """Requests that failed (non-200 or an exception); their latency is not recorded."""
    elapsed_s: float = 0.0
    """Wall time spent generating load (summed over merged runs)."""
    error_samples: list[str] = field(default_factory=list)
    """Up to :data:`MAX_ERROR_SAMPLES` distinct failure messages."""

    def record_error(self, exc: BaseException) -> None:
        """Count one failed request and keep its message if it is a new one."""
        self.errors += 1
        message = f"{type(exc).__name__}: {exc}"[:300]
        if len(self.error_samples) < MAX_ERROR_SAMPLES and message not in self.error_samples:
            self.error_samples.append(message)

    def merge(self, other: LoadResult) -> None:
        """Add another run of the same contender (the next round) to this one."""
        self.latencies_ms.extend(other.latencies_ms)
        self.errors += other.errors
        self.elapsed_s += other.elapsed_s
        for message in other.error_samples:
            if len(self.error_samples) < MAX_ERROR_SAMPLES and message not in self.error_samples:
                self.error_samples.append(message)

    @property
    def requests_per_s(self) -> float:
        """Successful requests per second of load time."""
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def closed_loop(
    send: Send,
    concurrency: int,
    *,
    requests: int | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight until a budget runs out.

    Exactly one budget: a number of ``requests`` (shared by the workers), a
    ``duration_s`` (no new request starts after it; those in flight finish),
    or a ``stop`` event set by someone else.
    """
    if sum(budget is not None for budget in (requests, duration_s, stop)) != 1:
        raise ValueError("give exactly one of requests, duration_s or stop")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    result = LoadResult()
    remaining = requests
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else math.inf

    def may_start() -> bool:
        nonlocal remaining
        if remaining is not None:
            remaining -= 1
            return remaining >= 0
        if stop is not None:
            return not stop.is_set()
        return time.perf_counter() < deadline

    async def worker() -> None:
        while may_start():
            t0 = time.perf_counter()
            try:
                await send()
            except Exception as exc:  # every failure is counted, none stops the run
                result.record_error(exc)
                continue
            result.latencies_ms.append((time.perf_counter() - t0) * 1000.0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The contender order of one round: each round starts one contender later."""
    if not names:
        return []
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal whole shares that add up to it exactly."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


async def interleaved(
    contenders: Mapping[str, Send],
    rounds: int,
    run_one: Callable[[Send, int], Awaitable[LoadResult]],
) -> dict[str, LoadResult]:
    """Measure every contender in ``rounds`` rounds, rotating their order each round.

    ``run_one(send, round_index)`` performs one contender's share of one
    round, so slow drift of the machine (another job, thermal limits) lands
    on every contender alike instead of on whichever ran last.
    """
    totals = {name: LoadResult() for name in contenders}
    for round_index in range(rounds):
        for name in rotated(list(contenders), round_index):
            totals[name].merge(await run_one(contenders[name], round_index))
    return totals


# ---------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, interpolating between ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(samples: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99, mean, min and max of ``samples`` in ms (``None`` when there are none)."""
    if not samples:
        return {key: None for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")}
    return {
        "p50_ms": percentile(samples, 50),
        "p90_ms": percentile(samples, 90),
        "p99_ms": percentile(samples, 99),
        "mean_ms": statistics.fmean(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
    }


def summarize(result: LoadResult, *, warmup_errors: int = 0) -> dict[str, Any]:
    """The JSON summary of one contender's measurement."""
    return {
        "requests": len(result.latencies_ms),
        "errors": result.errors,
        "warmup_errors": warmup_errors,
        **distribution(result.latencies_ms),
        "requests_per_s": result.requests_per_s,
        "elapsed_s": result.elapsed_s,
        "error_samples": list(result.error_samples),
    }


def cdf_points(samples: Iterable[float]) -> tuple[list[float], list[float]]:
    """Sorted samples and, for each, the fraction of samples at or below it."""
    ordered = sorted(samples)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]


def difference(a: float | None, b: float | None) -> float | None:
    """``a - b``, or ``None`` when either side was not measured."""
    return None if a is None or b is None else a - b


async def warm_up(send: Send, concurrency: int, requests: int) -> int:
    """Send ``requests`` unmeasured requests (connections, caches, lazy imports); return the failures."""
    if requests <= 0:
        return 0
    return (await closed_loop(send, concurrency, requests=requests)).errors
