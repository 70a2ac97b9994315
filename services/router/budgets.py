"""Token budgets per run (``max_tokens_per_run``), shared by every router.

A policy's ``max_tokens_per_run`` counts the tokens of every request that
carries the same ``Modelbus-Run-Id``, whichever router served it. The count
lives in the JetStream KV bucket :data:`shared.subjects.BUDGETS_BUCKET`, one
entry per (policy, run) holding the tokens used as ASCII digits.

* :meth:`TokenBudgets.check` runs before a request is sent: it denies the
  request (403) if the tokens used so far plus the request's estimate would
  exceed any applying limit, so the smallest limit always wins.
* :meth:`TokenBudgets.charge` runs after a request finished and adds its real
  usage with compare-and-swap (``create`` when absent, ``update`` on the read
  revision otherwise, re-read and retry on a conflict), so two routers
  charging the same run at once never lose an update.

Check and charge are separate steps: requests of one run that are in flight
at the same time are each checked against the usage before any of them is
charged, so a run can overshoot its limit by the requests it had in flight
when it crossed it. The next request after that is denied.

Every check costs one KV read per applying limit (in parallel) and every
charge one read and one write; nothing is cached, because a cached count is
one another router may already have raised.

The bucket is file storage with ``MODELBUS_JS_REPLICAS`` replicas, so it
survives a server restart and, on a cluster, the loss of a node. If it is gone
all the same (a wiped store), the next read or write creates it again.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ServiceUnavailableError
from nats.js.kv import KeyValue

from shared.errors import InvalidRequest, ModelbusError, NoRouteAvailable, PolicyDenied
from shared.headers import RUN_ID
from shared.jetstream import ensure_kv, stream_missing
from shared.routing import Policy
from shared.subjects import BUDGETS_BUCKET

log = logging.getLogger("modelbus.router.budgets")
T = TypeVar("T")

BUCKET_TTL_S = 30 * 86400
"""An entry expires this long after its last charge (the bucket's max age)."""
BUCKET_CONFIG = KeyValueConfig(
    bucket=BUDGETS_BUCKET,
    storage=StorageType.FILE,
    history=1,
    ttl=BUCKET_TTL_S,
    description="modelbus token budgets: tokens used per (policy, run)",
)
MAX_CAS_ATTEMPTS = 32
RIDE_OUT_S = 10.0
"""How long a check or charge waits for the bucket to answer again before a retryable 503
(a cluster electing a new stream leader after a node was killed takes 4-9 s)."""
RETRY_EVERY_S = 0.1
"""Compare-and-swap retries of one charge before giving up."""
_LOCK_STRIPES = 64


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def budget_key(policy: str, run_id: str) -> str:
    """The KV key of one (policy, run): URL-safe base64 of each, joined by ``.``."""
    return f"{_b64(policy)}.{_b64(run_id)}"


def _limited(policies: Sequence[Policy]) -> list[tuple[Policy, int]]:
    return [(p, p.max_tokens_per_run) for p in policies if p.max_tokens_per_run is not None]


def _check_run_id(run_id: str) -> None:
    if not run_id:
        raise InvalidRequest(f"{RUN_ID} must not be empty", param=RUN_ID)


class TokenBudgets:
    """Tokens used per (policy, run), in a KV bucket every router shares."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._kv: KeyValue | None = None
        self._opened = False
        # Charges of one key on this router take turns, so only other routers
        # cause compare-and-swap conflicts. Striped: no per-key lock to clean up.
        self._locks = tuple(asyncio.Lock() for _ in range(_LOCK_STRIPES))

    async def _bucket(self) -> KeyValue:
        """The bucket, created (``MODELBUS_JS_REPLICAS`` replicas) on first use if absent."""
        if self._kv is None:
            self._kv, ensured = await ensure_kv(self._nc.jetstream(), BUCKET_CONFIG, update=False)
            if self._opened and ensured.created:
                log.error(
                    "budgets bucket %s was missing and has been created again, empty: "
                    "tokens charged to runs so far are forgotten",
                    BUDGETS_BUCKET,
                )
            self._opened = True
        return self._kv

    async def _healing(self, operation: Callable[[KeyValue], Awaitable[T]], *, read: bool) -> T:
        """Run ``operation`` on the bucket, riding out a bucket that does not answer for up to
        :data:`RIDE_OUT_S` (a cluster electing a new leader); a bucket that is gone is re-opened,
        which re-creates it. Then a retryable 503 ``budgets_unavailable``.

        A write that timed out may have been stored, so only a ``read`` is retried on a timeout
        (a write then fails, and the charge is not counted twice)."""
        deadline = time.monotonic() + RIDE_OUT_S
        retry = (nats.errors.TimeoutError, ServiceUnavailableError) if read else (ServiceUnavailableError,)
        while True:
            try:
                return await operation(await self._bucket())
            except Exception as exc:
                missing = stream_missing(exc)
                if not (missing or isinstance(exc, retry)):
                    raise
                if missing:
                    self._kv = None
                if time.monotonic() + RETRY_EVERY_S >= deadline:
                    raise NoRouteAvailable(
                        f"token budgets bucket {BUDGETS_BUCKET!r} did not answer for {RIDE_OUT_S:g}s; try again",
                        code="budgets_unavailable",
                        retry_after=1.0,
                    ) from None
            await asyncio.sleep(RETRY_EVERY_S)

    async def _read(self, key: str) -> tuple[int, int]:
        """``(tokens used, revision)``; ``(0, 0)`` when the key is absent."""

        async def read(kv: KeyValue) -> tuple[int, int]:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return 0, 0
            return int(entry.value or b"0"), entry.revision or 0

        return await self._healing(read, read=True)

    async def used(self, run_id: str, policy: Policy | str) -> int:
        """Tokens charged so far to ``run_id`` under ``policy``."""
        _check_run_id(run_id)
        name = policy if isinstance(policy, str) else policy.name
        return (await self._read(budget_key(name, run_id)))[0]

    async def check(self, run_id: str | None, policies: Sequence[Policy], estimate: int) -> None:
        """Deny the request if ``estimate`` more tokens would exceed a limit of an applying policy.

        Without a run id a request is a run of its own: only its estimate is
        compared with the limits. A run that already used its whole budget is
        denied whatever the estimate. When several limits would be exceeded
        the error names the smallest.
        """
        limited = _limited(policies)
        if not limited:
            return
        if run_id is None:
            used = [0] * len(limited)
        else:
            _check_run_id(run_id)
            reads = await asyncio.gather(*(self._read(budget_key(p.name, run_id)) for p, _ in limited))
            used = [u for u, _ in reads]
        over = [
            (limit, p, u) for (p, limit), u in zip(limited, used, strict=True) if u + estimate > limit or u >= limit
        ]
        if not over:
            return
        limit, policy, spent = min(over, key=lambda o: o[0])
        run = f"run {run_id!r}" if run_id is not None else "this request (no Modelbus-Run-Id)"
        raise PolicyDenied(
            f"token budget exceeded: policy {policy.name!r} allows {limit} tokens per run; "
            f"{run} has used {spent} and this request needs ~{estimate}",
            code="token_budget_exceeded",
            param=RUN_ID,
        )

    async def charge(self, run_id: str | None, policies: Sequence[Policy], tokens: int) -> None:
        """Add the real usage of a finished request to each applying policy's count for the run.

        Safe across routers: every update is conditional on the revision read.
        Raises :class:`ModelbusError` only if a key stays contended for
        :data:`MAX_CAS_ATTEMPTS` rounds.
        """
        if run_id is None or tokens <= 0:
            return
        limited = _limited(policies)
        if not limited:
            return
        _check_run_id(run_id)
        await asyncio.gather(*(self._add(budget_key(p.name, run_id), tokens) for p, _ in limited))

    async def _add(self, key: str, tokens: int) -> None:
        async with self._locks[hash(key) % _LOCK_STRIPES]:
            for attempt in range(MAX_CAS_ATTEMPTS):
                used, revision = await self._read(key)
                value = str(used + tokens).encode()

                async def write(kv: KeyValue, revision: int = revision, value: bytes = value) -> None:
                    if revision == 0:
                        await kv.create(key, value)
                    else:
                        await kv.update(key, value, last=revision)

                try:
                    await self._healing(write, read=False)
                    return
                except KeyWrongLastSequenceError:
                    # Another router won this round; back off a little, with jitter, and re-read.
                    await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise ModelbusError(f"could not record token usage: budget entry stayed contended for {MAX_CAS_ATTEMPTS} tries")
