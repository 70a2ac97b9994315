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

import base64
import time

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.errors import InvalidRequest
from shared.subjects import RUNS_BUCKET

MAX_RUN_ID = 256


def run_key(run_id: str) -> str:
    """A valid KV key for any run id (URL-safe base64, no padding)."""
    return base64.urlsafe_b64encode(run_id.encode()).decode().rstrip("=")


class RunPins:
    """``run id → revision``, shared by every router."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._kv: KeyValue | None = None
        self._cache: dict[str, tuple[int, float]] = {}

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._nc.jetstream().key_value(RUNS_BUCKET)
            except BucketNotFoundError:
                raise RuntimeError(
                    f"run-pin bucket {RUNS_BUCKET!r} is missing; is the config service running?"
                ) from None
        return self._kv

    async def revision_for(self, run_id: str, current: int, ttl_s: int) -> int:
        """The revision ``run_id`` is pinned to, pinning it to ``current`` if it is new."""
        if not run_id or len(run_id) > MAX_RUN_ID:
            raise InvalidRequest(f"Modelbus-Run-Id must be 1 to {MAX_RUN_ID} characters", param="Modelbus-Run-Id")
        cached = self._cache.get(run_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        kv = await self._bucket()
        key = run_key(run_id)
        try:
            await kv.create(key, str(current).encode(), msg_ttl=ttl_s)
            revision = current
        except KeyWrongLastSequenceError:
            try:
                revision = int((await kv.get(key)).value or b"0")
            except KeyNotFoundError:  # expired between the two calls: pin afresh
                await kv.put(key, str(current).encode())
                revision = current
        self._cache[run_id] = (revision, now + ttl_s)
        if len(self._cache) > 100_000:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        return revision
