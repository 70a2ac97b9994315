"""Circuit breakers per target (endpoint and model), shared by every router.

After ``breaker_failures`` failures of one target within ``breaker_window_s``
the breaker opens and routers skip the target for ``breaker_cooldown_s``.
Then it is half-open: exactly one request (the probe) goes through. A
successful probe closes the breaker; a failed one opens it for another
cooldown. A probe that never reports (its request was cancelled) loses its
permission after a timeout, so a breaker can never wedge half-open.

:class:`BreakerBook` is that state machine, pure and driven by a clock the
caller passes in. :class:`SharedBreakers` wraps one for a router and shares
state changes through the KV bucket :data:`shared.subjects.BREAKERS_BUCKET`:
opening a breaker writes ``key → BreakerEntry`` with a per-message TTL of the
cooldown, a successful probe purges the key, and every router watches the
bucket, so when one router opens a breaker the others skip the target within
milliseconds. Only state changes touch NATS; the per-request calls are local.

Entries carry wall-clock epoch ``until`` (routers share the machine or NTP);
locally everything runs on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import msgspec
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType, StreamInfo
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shared.jetstream import Ensured, StateKeeper, ensure_kv, stream_missing
from shared.routing import RoutingDefaults
from shared.subjects import BREAKERS_BUCKET

log = logging.getLogger("modelbus.router.breakers")

TargetKey = tuple[str, str]
"""``(endpoint name, model)``, as :attr:`services.router.table.ResolvedTarget.key`."""

PROBE_RETRY_HINT_S = 1.0
"""Retry-After hint while another caller's probe is in flight: a probe usually
answers well before its permission times out."""
TTL_MARGIN_S = 0.5
"""Added to the cooldown for an entry's TTL, so it outlives ``until`` on every router."""
CLOSE_MARKER_TTL_S = 60
"""A purge marker expires too: closed breakers leave no tombstones behind."""
SAME_OPENING_S = 0.05
"""Remote ``until`` values this close to the local one are the same opening
(a router's own write coming back, off by clock conversion)."""
PRUNE_AT = 4096
"""Above this many tracked targets, closed ones with no recent failures are dropped
(bring-your-own endpoints can create any number of targets)."""


# ------------------------------------------------------------------ the state machine


@dataclass(frozen=True, slots=True)
class Decision:
    """What a router may do with a target right now."""

    kind: Literal["allow", "skip", "probe"]
    """``allow``: closed; ``probe``: half-open and this caller is the one probe; ``skip``: do not send."""
    retry_after_s: float = 0.0
    """For ``skip``: seconds until the target may be tried again."""

    @property
    def allowed(self) -> bool:
        """Whether the request may go to the target (as a normal request or as the probe)."""
        return self.kind != "skip"


ALLOW = Decision("allow")
PROBE = Decision("probe")


class OpenState(NamedTuple):
    """An open (or half-open) breaker as the book knows it."""

    until: float
    failures: int
    cooldown_s: float


@dataclass(slots=True)
class _Breaker:
    failures: deque[float] = field(default_factory=deque)
    window_s: float = 0.0
    open_until: float | None = None
    """``None`` while closed; the end of the cooldown once opened (half-open after it)."""
    probe_until: float | None = None
    """While a probe is out: when its permission lapses."""
    cooldown_s: float = 0.0
    open_failures: int = 0


class BreakerBook:
    """Breaker state per target; every method takes ``now`` from one monotonic clock."""

    def __init__(self, *, probe_timeout_s: float | None = None) -> None:
        """``probe_timeout_s``: how long a probe may stay unanswered; ``None`` uses the breaker's cooldown."""
        self._probe_timeout_s = probe_timeout_s
        self._breakers: dict[TargetKey, _Breaker] = {}

    def check(self, key: TargetKey, now: float) -> Decision:
        """May a request go to ``key``? Hands out the half-open probe to exactly one caller."""
        br = self._breakers.get(key)
        if br is None or br.open_until is None:
            return ALLOW
        if now < br.open_until:
            return Decision("skip", br.open_until - now)
        if br.probe_until is not None and now < br.probe_until:
            return Decision("skip", min(PROBE_RETRY_HINT_S, br.probe_until - now))
        timeout = self._probe_timeout_s if self._probe_timeout_s is not None else br.cooldown_s
        br.probe_until = now + timeout
        return PROBE

    def record_success(self, key: TargetKey, now: float) -> bool:
        """A request to ``key`` succeeded. True if that closed a half-open breaker.

        Successes during the cooldown come from requests sent before it opened
        and prove little, so they are ignored. In the closed state failures stay
        counted: the breaker counts failures per window, not in a row.
        """
        br = self._breakers.get(key)
        if br is None or br.open_until is None or now < br.open_until:
            return False
        del self._breakers[key]
        return True

    def record_failure(self, key: TargetKey, now: float, *, threshold: int, window_s: float, cooldown_s: float) -> bool:
        """A request to ``key`` failed. True if this failure opened the breaker."""
        br = self._breakers.get(key)
        if br is None:
            if len(self._breakers) >= PRUNE_AT:
                self._prune(now)
            br = self._breakers[key] = _Breaker()
        if br.open_until is not None:
            if now < br.open_until:
                return False  # a straggler sent before the breaker opened: the cooldown stands
            self._open(br, now + cooldown_s, cooldown_s, failures=1)  # half-open and the probe failed
            return True
        threshold = max(threshold, 1)
        if br.failures.maxlen != threshold:
            br.failures = deque(br.failures, maxlen=threshold)
        br.window_s = window_s
        br.failures.append(now)
        while br.failures and br.failures[0] <= now - window_s:
            br.failures.popleft()
        if len(br.failures) < threshold:
            return False
        self._open(br, now + cooldown_s, cooldown_s, failures=len(br.failures))
        return True

    def apply_remote_open(self, key: TargetKey, until: float, *, cooldown_s: float) -> None:
        """Another router opened ``key`` until ``until`` (on this book's clock)."""
        br = self._breakers.get(key)
        if br is None:
            br = self._breakers[key] = _Breaker()
        elif br.open_until is not None and abs(br.open_until - until) < SAME_OPENING_S:
            return  # the echo of an opening this book already has: keep its probe
        self._open(br, until, cooldown_s, failures=br.open_failures)

    def apply_remote_close(self, key: TargetKey) -> None:
        """Another router's probe succeeded: ``key`` is closed and its failures forgotten."""
        self._breakers.pop(key, None)

    def open_state(self, key: TargetKey) -> OpenState | None:
        """The open or half-open breaker of ``key``, if any."""
        br = self._breakers.get(key)
        if br is None or br.open_until is None:
            return None
        return OpenState(br.open_until, br.open_failures, br.cooldown_s)

    def retry_after(self, keys: Iterable[TargetKey], now: float) -> float:
        """Seconds until the soonest of ``keys`` may be tried; 0 if one may be tried now."""
        soonest: float | None = None
        for key in keys:
            wait = self._wait(key, now)
            if wait <= 0:
                return 0.0
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest or 0.0

    def open_keys(self, now: float) -> list[tuple[TargetKey, float, bool]]:
        """``(key, retry_after_s, half_open)`` of every breaker that is not closed."""
        out = []
        for key, br in self._breakers.items():
            if br.open_until is not None:
                out.append((key, max(self._wait(key, now), 0.0), now >= br.open_until))
        return out

    def _wait(self, key: TargetKey, now: float) -> float:
        br = self._breakers.get(key)
        if br is None or br.open_until is None:
            return 0.0
        if now < br.open_until:
            return br.open_until - now
        if br.probe_until is not None and now < br.probe_until:
            return min(PROBE_RETRY_HINT_S, br.probe_until - now)
        return 0.0

    @staticmethod
    def _open(br: _Breaker, until: float, cooldown_s: float, *, failures: int) -> None:
        br.open_until = until
        br.cooldown_s = cooldown_s
        br.probe_until = None
        br.open_failures = failures
        br.failures.clear()

    def _prune(self, now: float) -> None:
        self._breakers = {
            key: br
            for key, br in self._breakers.items()
            if br.open_until is not None or (br.failures and br.failures[-1] > now - br.window_s)
        }


# ------------------------------------------------------------------ sharing over NATS


class BreakerEntry(msgspec.Struct, kw_only=True, frozen=True):
    """The KV value of an open breaker; routers are its only writers and readers."""

    endpoint: str
    model: str
    until_epoch: float
    """Wall-clock end of the cooldown (Unix seconds)."""
    cooldown_s: float
    """Caps how long a reader keeps it open, whatever the clocks say."""
    router_id: str
    """The router that opened it."""
    failures: int
    """Failures that opened it (1 when a probe failed)."""


class OpenBreaker(msgspec.Struct, kw_only=True, frozen=True):
    """A target that is cooling down or waiting for a probe, for the health view."""

    endpoint: str
    model: str
    retry_after_s: float
    state: Literal["open", "half-open"]


_entry_encoder = msgspec.json.Encoder()
_entry_decoder = msgspec.json.Decoder(BreakerEntry)
_key_decoder = msgspec.json.Decoder(tuple[str, str])


def breaker_key(key: TargetKey) -> str:
    """A valid KV key for any endpoint and model (URL-safe base64 of ``["endpoint","model"]``, no padding)."""
    return base64.urlsafe_b64encode(_entry_encoder.encode(key)).decode().rstrip("=")


def parse_breaker_key(kv_key: str) -> TargetKey:
    """The ``(endpoint, model)`` a :func:`breaker_key` stands for."""
    raw = base64.urlsafe_b64decode(kv_key + "=" * (-len(kv_key) % 4))
    return _key_decoder.decode(raw)


def breakers_bucket_config(bucket: str = BREAKERS_BUCKET) -> KeyValueConfig:
    """The breakers bucket: memory storage, one value per key, entries with their own TTL.

    Memory, because the state is worth a cooldown at most: after a nats-server
    restart routers relearn failures within a few requests, and open breakers
    should not outlive the server by surprise. The bucket is lost with the
    server (or, with one replica, with the cluster node holding it), so every
    router keeps it in place (:class:`SharedBreakers`). The bucket-wide ``ttl``
    is only a backstop above the longest cooldown the config allows (3600 s).
    """
    return KeyValueConfig(
        bucket=bucket,
        storage=StorageType.MEMORY,
        history=1,
        ttl=2 * 3600,
        description="modelbus circuit breakers: (endpoint, model) -> open until",
    )


async def ensure_breakers_bucket(nc: Client, bucket: str = BREAKERS_BUCKET) -> KeyValue:
    """Open the breakers bucket, creating it with ``MODELBUS_JS_REPLICAS`` replicas if missing
    (idempotent; nats-py buckets allow per-message TTL). A router never reconfigures an
    existing bucket: the config service brings it to the replica count."""
    return (await _ensure_bucket(nc, bucket))[0]


async def _ensure_bucket(nc: Client, bucket: str) -> tuple[KeyValue, Ensured]:
    return await ensure_kv(nc.jetstream(), breakers_bucket_config(bucket), update=False)


def _created(info: StreamInfo) -> float | None:
    """A stream's creation time: a different one means the stream was deleted and made again."""
    created = info.created
    return created.timestamp() if created is not None else None


class SharedBreakers:
    """One router's breakers, kept in step with every other router's through KV."""

    def __init__(
        self,
        nc: Client,
        *,
        bucket: str = BREAKERS_BUCKET,
        router_id: str = "",
        probe_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._bucket = bucket
        self._router_id = router_id
        self._clock = clock
        self._wall = wall
        self.book = BreakerBook(probe_timeout_s=probe_timeout_s)
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._created: float | None = None
        """When the bucket being watched was created (server time), to notice a new one."""
        self.keeper = StateKeeper(nc, f"breakers {bucket}", self._repair)
        """Re-creates the bucket and re-opens the watch after reconnects and lost servers."""

    async def start(self, timeout_s: float = 5.0) -> None:
        """Open (or create) the bucket and return once every open breaker is known."""
        await self._open(timeout_s)
        self.keeper.start()

    async def _open(self, timeout_s: float) -> None:
        """(Re)open the bucket and a fresh watch of it; return once its current entries are applied."""
        kv, ensured = await _ensure_bucket(self._nc, self._bucket)
        await self._stop_watch()
        self._kv = kv
        self._created = _created(ensured.info)
        self._ready = asyncio.Event()
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watcher, self._ready), name="breakers-watch")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            await self._stop_watch()
            raise RuntimeError(f"breakers bucket {self._bucket!r} did not answer within {timeout_s}s") from None

    async def _repair(self, reason: str) -> None:
        """After a reconnect, re-open the watch (its consumer may have died with a server); otherwise
        re-open it only if the bucket is gone or is a new one (a KV watcher on a re-created
        stream resumes at the old sequence and would miss every new entry)."""
        if reason != "reconnected":
            try:
                info = await self._nc.jetstream().stream_info(f"KV_{self._bucket}")
            except NotFoundError:
                info = None
            if info is not None and _created(info) == self._created:
                return
        before = self._created
        await self._open(5.0)
        if self._created == before:
            log.info("breakers bucket %s: watch re-opened (%s)", self._bucket, reason)
            return
        log.warning(
            "breakers bucket %s was lost (%s) and is in place again; sharing open breakers", self._bucket, reason
        )
        for key, _, _ in self.book.open_keys(self._clock()):
            await self._publish_open(key)  # the new bucket is empty: what this router knows is worth sharing

    async def stop(self) -> None:
        """Stop watching; local state stays usable but no longer follows other routers."""
        await self.keeper.stop()
        await self._stop_watch()

    async def _stop_watch(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                # Bounded: with the server gone, deleting the consumer would wait for a timeout.
                await asyncio.wait_for(watcher.stop(), 1.0)  # type: ignore[no-untyped-call]  # unannotated
            except Exception:  # the connection may be closing, or the consumer already gone
                pass
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # ---- the hot path: local only

    def decide(self, key: TargetKey) -> Decision:
        """May a request go to ``key`` now? ``probe`` means: report how it went."""
        return self.book.check(key, self._clock())

    async def success(self, key: TargetKey) -> None:
        """Report a success; a successful probe closes the breaker for every router."""
        if self.book.record_success(key, self._clock()) and self._kv is not None:
            try:
                await self._kv.purge(breaker_key(key), msg_ttl=CLOSE_MARKER_TTL_S)
            except Exception as exc:  # others then close when their own probe succeeds
                if stream_missing(exc):
                    self.keeper.poke()
                log.warning("could not share the closed breaker of %s/%s: %s", *key, exc)

    async def failure(self, key: TargetKey, defaults: RoutingDefaults) -> None:
        """Report a failure; when it opens the breaker, every router learns it."""
        opened = self.book.record_failure(
            key,
            self._clock(),
            threshold=defaults.breaker_failures,
            window_s=defaults.breaker_window_s,
            cooldown_s=defaults.breaker_cooldown_s,
        )
        if opened:
            await self._publish_open(key)

    def retry_after(self, keys: Iterable[TargetKey]) -> float:
        """Seconds until the soonest of ``keys`` may be tried: the Retry-After when all are cooling."""
        return self.book.retry_after(keys, self._clock())

    def open_breakers(self) -> list[OpenBreaker]:
        """Every target that is not closed, for the health view."""
        return [
            OpenBreaker(
                endpoint=key[0],
                model=key[1],
                retry_after_s=round(wait, 3),
                state="half-open" if half_open else "open",
            )
            for key, wait, half_open in self.book.open_keys(self._clock())
        ]

    # ---- KV

    async def _publish_open(self, key: TargetKey) -> None:
        state = self.book.open_state(key)
        if state is None or self._kv is None:
            return
        entry = BreakerEntry(
            endpoint=key[0],
            model=key[1],
            until_epoch=state.until - self._clock() + self._wall(),
            cooldown_s=state.cooldown_s,
            router_id=self._router_id,
            failures=state.failures,
        )
        # kv.put() takes no TTL and kv.create() refuses an existing key (a re-open
        # after a failed probe), so publish to the key's subject as put() does.
        subject = f"$KV.{self._bucket}.{breaker_key(key)}"
        try:
            await self._nc.jetstream().publish(
                subject, _entry_encoder.encode(entry), msg_ttl=math.ceil(state.cooldown_s + TTL_MARGIN_S)
            )
        except Exception as exc:  # the breaker still works locally; others open on their own failures
            if stream_missing(exc):
                self.keeper.poke()
            log.warning("could not share the open breaker of %s/%s: %s", *key, exc)

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:  # the end of the initial values
                ready.set()
                continue
            try:
                self._apply(entry)
            except Exception:
                log.exception("ignoring an unreadable breaker entry %r", entry.key)

    def _apply(self, entry: KeyValue.Entry) -> None:
        key = parse_breaker_key(entry.key)
        # Expiry is silent (the bucket has no limit markers), so a delete or purge
        # is always a successful probe somewhere: close.
        if entry.operation in (KV_DEL, KV_PURGE):
            self.book.apply_remote_close(key)
            return
        shared = _entry_decoder.decode(entry.value or b"")
        now = self._clock()
        until = min(shared.until_epoch - self._wall() + now, now + shared.cooldown_s)
        self.book.apply_remote_open(key, until, cooldown_s=shared.cooldown_s)
