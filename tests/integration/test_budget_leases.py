"""Budget leases on a real nats-server's KV: a router admits from a slice of the headroom it
holds as one reservation, settles into it, gives it back, and a dead router's lease expires.

Two :class:`Budgets` on two connections are what two router processes have.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest

from services.cli.budgets_cmd import budgets_report
from services.router import budget_leases
from services.router.budgets import Budgets, Hold
from shared.budgets import LEASE_PREFIX, BudgetEntry, entry_key
from shared.errors import BudgetExceeded
from shared.natsserver import EmbeddedNats
from shared.routing import Budget, RoutingConfig
from tests.conftest import run
from tests.integration.test_budgets import answered, reserve, two_routers

pytestmark = pytest.mark.timeout(60)

WIDE = 64 * 1000
"""A run budget whose slice (1000 tokens) covers many requests of 10: leased."""


def wide(limit: int = WIDE) -> Budget:
    return Budget(name=f"wide-{uuid.uuid4().hex[:6]}", scope="run", period="run", max_tokens=limit)


def count_writes(b: Budgets) -> list[int]:
    """Count the KV writes of ``b``'s store (wraps its one write method)."""
    counter = [0]
    store: Any = b._store
    write = store._write

    async def counted(*args: Any) -> int:
        counter[0] += 1
        return int(await write(*args))

    store._write = counted
    return counter


def leases_of(entry: BudgetEntry) -> dict[str, int]:
    return {k: r.tokens for k, r in entry.reserved.items() if k.startswith(LEASE_PREFIX)}


async def until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 10.0) -> None:
    limit = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < limit, what
        await asyncio.sleep(0.05)


def test_a_run_of_sequential_requests_costs_far_fewer_kv_writes_than_requests(nats_server: EmbeddedNats) -> None:
    async def main() -> None:
        async with two_routers(nats_server.url) as (a, b):
            budget, run_id = wide(), f"run-{uuid.uuid4().hex}"
            writes = count_writes(a)
            for _ in range(60):
                hold = await reserve(a, [budget], run_id, 5, 5)
                assert hold is not None and hold.leased and not hold.windows
                a.settle(hold, answered("4 3"))
                await asyncio.sleep(0.002)
            assert writes[0] <= 20, f"{writes[0]} writes for 60 requests"
            entry = await b.entry(budget, run_id)
            assert leases_of(entry) == {a.leases.lease_id: entry.reserved_tokens}  # the lease alone
            assert entry.spent_tokens + entry.reserved_tokens <= WIDE
            config = RoutingConfig(revision=1, endpoints={}, aliases={}, budgets=[budget])
            (row,) = budgets_report(config, {entry_key(budget.name, run_id, "run"): entry}, time.time())["budgets"]
            assert (row["reserved_tokens"], row["in_flight"], row["leases"]) == (entry.reserved_tokens, 0, 1)
            await a.stop()  # gives the lease back and writes what was settled
            entry = await b.entry(budget, run_id)
            assert entry.reserved == {} and entry.spent_tokens == 60 * 7

    run(asyncio.wait_for(main(), timeout=30))


def test_leases_from_two_routers_never_admit_beyond_the_limit_and_fall_back_near_it(
    nats_server: EmbeddedNats,
) -> None:
    limit = 64 * 40  # slice 40: 4 requests of 10, the least that leases

    async def main() -> None:
        async with two_routers(nats_server.url) as (a, b):
            budget, run_id = wide(limit), f"run-{uuid.uuid4().hex}"
            results = await asyncio.gather(
                *(reserve((a, b)[i % 2], [budget], run_id, 5, 5) for i in range(300)), return_exceptions=True
            )
            held = [r for r in results if isinstance(r, Hold)]
            refused = [r for r in results if isinstance(r, BudgetExceeded)]
            assert len(held) + len(refused) == 300, [r for r in results if not isinstance(r, Hold | BudgetExceeded)]
            assert any(h.leased for h in held) and any(h.windows for h in held)  # leased, then per request
            entry = await a.entry(budget, run_id)
            assert entry.spent_tokens + entry.reserved_tokens <= limit
            # No starvation: all but what the two leases keep (less than a request each) is admitted.
            assert len(held) * 10 >= limit - 2 * 10, len(held)
            assert f"budget {budget.name!r} allows {limit} tokens per run; spent 0, reserved " in refused[0].message
            for i, result in enumerate(results):
                if isinstance(result, Hold):
                    (a, b)[i % 2].settle(result, answered("5 5"))  # on the router that admitted it
            await a.stop()
            await b.stop()
            entry = await a.entry(budget, run_id)
            assert entry.reserved == {} and entry.spent_tokens == 10 * len(held) <= limit

    run(asyncio.wait_for(main(), timeout=30))


def test_the_overshoot_bound_holds_with_leases_when_answers_use_more_than_they_reserved(
    nats_server: EmbeddedNats,
) -> None:
    limit = 64 * 40

    async def main() -> None:
        async with two_routers(nats_server.url) as (a, b):
            budget, run_id = wide(limit), f"run-{uuid.uuid4().hex}"
            admitted = leased = refusals_in_a_row = tries = 0
            while refusals_in_a_row < 2:  # until both routers refuse, one after the other
                router, tries = (a, b)[tries % 2], tries + 1
                try:
                    hold = await reserve(router, [budget], run_id, 5, 5)  # reserves 10
                except BudgetExceeded:
                    refusals_in_a_row += 1
                    await asyncio.sleep(0.06)  # let settlements reach the bucket
                    continue
                refusals_in_a_row = 0
                assert hold is not None
                admitted, leased = admitted + 1, leased + bool(hold.leased)
                router.settle(hold, answered("5 9"))  # uses 14: 4 beyond its reservation
            await a.stop()
            await b.stop()
            entry = await a.entry(budget, run_id)
            assert leased > admitted // 2 and entry.reserved == {}
            assert entry.spent_tokens == 14 * admitted
            assert entry.spent_tokens <= limit + 4 * admitted  # the documented bound
            assert entry.spent_tokens >= limit - 2 * 40  # at most a slice each was left in the leases

    run(asyncio.wait_for(main(), timeout=30))


def test_a_killed_routers_lease_expires_and_its_headroom_comes_back(nats_server: EmbeddedNats) -> None:
    async def main() -> None:
        dead_nc = await nats.connect(nats_server.url)
        alive_nc = await nats.connect(nats_server.url)
        try:
            dead, alive = Budgets(dead_nc, lease_ttl_s=1.5), Budgets(alive_nc)
            budget, run_id = wide(), f"run-{uuid.uuid4().hex}"
            hold = await reserve(dead, [budget], run_id, 5, 5)
            assert hold is not None and hold.leased
            dead.leases._stopping = True  # the process is gone: nobody renews or returns the lease
            await dead_nc.close()
            entry = await alive.entry(budget, run_id)
            assert leases_of(entry) == {dead.leases.lease_id: 1000}
            with pytest.raises(BudgetExceeded, match="reserved 1000"):
                await reserve(alive, [budget], run_id, WIDE - 500, 0)  # too big to lease: reserves itself

            async def fits() -> bool:
                try:
                    return await reserve(alive, [budget], run_id, WIDE - 500, 0) is not None
                except BudgetExceeded:
                    return False

            await until(fits, "the dead router's lease never expired")
            entry = await alive.entry(budget, run_id)
            assert leases_of(entry) == {} and entry.reserved_tokens == WIDE - 500
        finally:
            await alive_nc.close()

    run(asyncio.wait_for(main(), timeout=30))


def test_an_idle_lease_is_given_back(nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_leases, "LEASE_IDLE_S", 0.3)

    async def main() -> None:
        async with two_routers(nats_server.url) as (a, b):
            budget, run_id = wide(), f"run-{uuid.uuid4().hex}"
            hold = await reserve(a, [budget], run_id, 5, 5)
            assert hold is not None and hold.leased
            assert leases_of(await b.entry(budget, run_id)) == {a.leases.lease_id: 1000}
            a.settle(hold, answered("2 2"))

            async def returned() -> bool:
                entry = await b.entry(budget, run_id)
                return entry.reserved == {} and entry.spent_tokens == 4

            await until(returned, "the idle lease was never given back")
            await a.stop()

    run(asyncio.wait_for(main(), timeout=30))


def test_a_budget_too_small_to_slice_reserves_per_request(nats_server: EmbeddedNats) -> None:
    async def main() -> None:
        async with two_routers(nats_server.url) as (a, b):
            budget, run_id = wide(140), f"run-{uuid.uuid4().hex}"  # like max_tokens_per_run: 140
            hold = await reserve(a, [budget], run_id, 5, 5)
            assert hold is not None and not hold.leased
            entry = await b.entry(budget, run_id)
            assert list(entry.reserved) == [hold.request_id]
            await a.stop()

    run(asyncio.wait_for(main(), timeout=30))
