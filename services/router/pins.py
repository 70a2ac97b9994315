"""Run pinning: a run keeps the configuration revision of its first request.

From Aegis: "running executions continue using the provider that was active
when they started". The first router to see a ``Modelbus-Run-Id`` records
``run → revision`` in the shared KV bucket :data:`shared.subjects.RUNS_BUCKET`
with ``create`` (compare-and-set, so exactly one revision wins even when two
routers race) and a per-entry TTL; every router then reads the same pin. Pins
are cached in memory until they expire, so only a run's first request on each
router pays the KV round trip.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time

import nats.errors
from nats.aio.client import Client
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from shared.errors import InvalidRequest, NoRouteAvailable
from shared.jetstream import stream_missing
from shared.subjects import RUNS_BUCKET

MAX_RUN_ID = 256
RIDE_OUT_S = 10.0
"""How long a pin waits for the bucket to answer again, at most (the request's own
deadline may be sooner): a cluster electing a new stream leader after the node
holding it was killed takes 4-9 s in nats-server 2.x. Then a retryable 503."""
RETRY_EVERY_S = 0.1


def run_key(run_id: str) -> str:
    """A valid KV key for any run id (URL-safe base64, no padding)."""
    return base64.urlsafe_b64encode(run_id.encode()).decode().rstrip("=")


class _BucketMissing(Exception):
    pass


def _transient(exc: BaseException) -> bool:
    """Whether trying again soon can help: the bucket is missing (the config service
    re-creates it), or JetStream did not answer or is electing a leader."""
    return isinstance(exc, _BucketMissing | nats.errors.TimeoutError | ServiceUnavailableError) or stream_missing(exc)


class RunPins:
    """``run id → revision``, shared by every router.

    The bucket belongs to the config service, which creates it (with
    ``MODELBUS_JS_REPLICAS`` replicas) and re-creates it if it is lost; this
    side only reads and writes keys. While the bucket does not answer, a pin is
    retried for up to :data:`RIDE_OUT_S`, then the request gets a retryable 503
    ``run_pins_unavailable`` rather than a 500.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._kv: KeyValue | None = None
        self._cache: dict[str, tuple[int, float]] = {}

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._nc.jetstream().key_value(RUNS_BUCKET)
            except BucketNotFoundError:
                raise _BucketMissing from None
        return self._kv

    async def revision_for(self, run_id: str, current: int, ttl_s: int, *, deadline: float | None = None) -> int:
        """The revision ``run_id`` is pinned to, pinning it to ``current`` if it is new.

        ``deadline`` (``time.monotonic()``) is the request's: waiting for an unavailable
        bucket stops there, or after :data:`RIDE_OUT_S`, whichever is sooner."""
        if not run_id or len(run_id) > MAX_RUN_ID:
            raise InvalidRequest(f"Modelbus-Run-Id must be 1 to {MAX_RUN_ID} characters", param="Modelbus-Run-Id")
        cached = self._cache.get(run_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        deadline = min(now + RIDE_OUT_S, deadline if deadline is not None else math.inf)
        while True:
            try:
                revision = await self._pin(run_key(run_id), current, ttl_s)
                break
            except Exception as exc:
                if not _transient(exc):
                    raise
                if isinstance(exc, _BucketMissing) or stream_missing(exc):
                    self._kv = None  # open it afresh once it is back
                if time.monotonic() + RETRY_EVERY_S >= deadline:
                    missing = isinstance(exc, _BucketMissing)
                    raise NoRouteAvailable(
                        f"run-pin bucket {RUNS_BUCKET!r} "
                        + ("is missing; is the config service running?" if missing else "did not answer")
                        + f" (for {time.monotonic() - now:.1f}s); try again",
                        code="run_pins_unavailable",
                        retry_after=1.0,
                    ) from None
                await asyncio.sleep(RETRY_EVERY_S)
        self._cache[run_id] = (revision, now + ttl_s)
        if len(self._cache) > 100_000:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        return revision

    async def _pin(self, key: str, current: int, ttl_s: int) -> int:
        """Create the pin (compare-and-set) or read the one another request made first."""
        kv = await self._bucket()
        try:
            await kv.create(key, str(current).encode(), msg_ttl=ttl_s)
            return current
        except KeyWrongLastSequenceError:
            try:
                return int((await kv.get(key)).value or b"0")
            except KeyNotFoundError:  # expired between the two calls: pin afresh
                await kv.put(key, str(current).encode())
                return current
