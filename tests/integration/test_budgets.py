"""Budgets shared by routers through a real nats-server's KV: reservations, settlement, expiry.

Two :class:`Budgets` on two connections are what two router processes have; every
admission and settlement goes through the bucket with compare-and-set.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from services.router.budget_scopes import applying
from services.router.budgets import Budgets, Hold
from services.router.filters import Needs
from services.router.ledger import Outcome
from services.router.table import ResolvedTarget, RoutingTable
from shared import headers as H
from shared.budgets import decode_entry, entry_key
from shared.errors import BudgetExceeded, InvalidRequest, PolicyDenied
from shared.natsserver import EmbeddedNats
from shared.pricing import price_from_rates
from shared.routing import Alias, Budget, Endpoint, Policy, RoutingConfig, Target
from shared.subjects import BUDGETS_BUCKET
from tests.conftest import run

pytestmark = pytest.mark.timeout(60)

RUN = Budget(name="team:max_tokens_per_run", scope="run", period="run", max_tokens=1000, policy="team")
TIGHT = Budget(name="tight:max_tokens_per_run", scope="run", period="run", max_tokens=300, policy="tight")
DOLLAR = Budget(name="dollar", scope="run", period="run", max_cost=Decimal("0.01"))
TABLE = RoutingTable(
    RoutingConfig(
        revision=1,
        endpoints={
            "priced": Endpoint(name="priced", provider="mock", default_model="m"),
            "free": Endpoint(name="free", provider="mock", default_model="m"),
        },
        aliases={
            "priced": Alias(name="priced", targets=[Target(endpoint="priced", model="m")]),
            "both": Alias(
                name="both", targets=[Target(endpoint="priced", model="m"), Target(endpoint="free", model="m")]
            ),
        },
        prices=[price_from_rates(name="p", endpoint="priced", model="m", input=Decimal("2"), output=Decimal("10"))],
    )
)
PRICED = list(TABLE.resolve("priced").targets)
BOTH = list(TABLE.resolve("both").targets)


def needs(prompt: int, output: int | None) -> Needs:
    return Needs(vision=False, tools=False, prompt_tokens=prompt, output_tokens=output)


def new_run() -> str:
    return f"run-{uuid.uuid4().hex}"


def answered(usage: str | None, endpoint: str = "priced") -> Outcome:
    outcome = Outcome(0.0)
    outcome.usage, outcome.endpoint, outcome.provider, outcome.model = usage, endpoint, "mock", "m"
    return outcome


async def reserve(
    b: Budgets,
    budgets: list[Budget],
    run_id: str | None,
    prompt: int,
    output: int | None,
    targets: list[ResolvedTarget] | None = None,
    deadline_s: float = 30.0,
) -> Hold | None:
    policies = [Policy(name=p) for p in ("team", "tight")]
    headers = {H.RUN_ID: run_id} if run_id is not None else {}
    hold = b.prepare(
        uuid.uuid4().hex,
        applying(budgets, policies, headers, "_INBOX.x"),
        needs(prompt, output),
        targets or PRICED,
        TABLE,
        time.monotonic() + deadline_s,
    )
    if hold is not None:
        await b.reserve(hold)
    return hold


@asynccontextmanager
async def two_routers(url: str, **kwargs: Any) -> AsyncIterator[tuple[Budgets, Budgets]]:
    a: Client = await nats.connect(url)
    b: Client = await nats.connect(url)
    try:
        yield Budgets(a, **kwargs), Budgets(b, **kwargs)
    finally:
        await a.close()
        await b.close()


def with_routers(nats_server: EmbeddedNats, body: Callable[[Budgets, Budgets], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with two_routers(nats_server.url) as (a, b):
            await asyncio.wait_for(body(a, b), timeout=30)

    run(main())


def test_32_concurrent_reservations_from_two_routers_admit_exactly_what_fits(nats_server: EmbeddedNats) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        results = await asyncio.gather(
            *(reserve((a, b)[i % 2], [RUN], run_id, 20, 80) for i in range(32)), return_exceptions=True
        )
        held = [r for r in results if isinstance(r, Hold)]
        refused = [r for r in results if isinstance(r, BudgetExceeded)]
        assert len(held) == 10 and len(refused) == 22, results  # 10 x 100 tokens is exactly 1000
        entry = await a.entry(RUN, run_id)
        assert entry.reserved_tokens == 1000 and entry.spent_tokens == 0
        for i, hold in enumerate(held):
            (a, b)[i % 2].settle(hold, answered("20 50"))
        await a.drained()
        await b.drained()
        entry = await b.entry(RUN, run_id)
        assert entry.spent_tokens == 700 and entry.reserved == {}

    with_routers(nats_server, body)


def test_a_budget_is_enforced_at_its_limit_and_refuses_everything_once_reached(nats_server: EmbeddedNats) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        await a.charge(TIGHT, run_id, 250)
        hold = await reserve(b, [TIGHT], run_id, 10, 40)  # 250 + 50 is exactly the limit: admitted
        with pytest.raises(BudgetExceeded) as info:
            await reserve(a, [TIGHT], run_id, 0, 0)  # spent + reserved >= limit: even 0 is refused
        err = info.value
        assert err.http_status == 429 and err.code == "budget_exceeded" and err.retryable is False
        assert "budget 'tight:max_tokens_per_run' allows 300 tokens per run" in err.message
        assert "spent 250, reserved 50" in err.message and run_id in err.message
        assert b'"retryable":false' in err.to_json() and b'"budget_exceeded"' in err.to_json()
        b.settle(hold, answered("10 40"))
        await b.drained()
        with pytest.raises(BudgetExceeded, match="spent 300, reserved 0"):
            await reserve(b, [TIGHT], run_id, 0, 0)

    with_routers(nats_server, body)


def test_when_two_budgets_refuse_the_error_names_the_smallest_and_nothing_stays_reserved(
    nats_server: EmbeddedNats,
) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        await a.charge(TIGHT, run_id, 280)
        with pytest.raises(BudgetExceeded, match="tight:max_tokens_per_run' allows 300"):
            await reserve(b, [RUN, TIGHT], run_id, 10, 40)
        await b.drained()
        assert (await a.entry(RUN, run_id)).reserved == {}  # the one that admitted it was released
        await reserve(b, [RUN], run_id, 10, 40)  # the other budget alone still admits it

    with_routers(nats_server, body)


def test_a_failed_request_releases_its_reservation(nats_server: EmbeddedNats) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        hold = await reserve(a, [TIGHT], run_id, 100, 200)
        assert (await b.entry(TIGHT, run_id)).reserved_tokens == 300
        with pytest.raises(BudgetExceeded):
            await reserve(b, [TIGHT], run_id, 1, 0)
        failed = answered(None)
        failed.answered(502, "upstream_error")
        a.settle(hold, failed)
        await a.drained()
        entry = await b.entry(TIGHT, run_id)
        assert entry.reserved == {} and entry.spent_tokens == 0
        await reserve(b, [TIGHT], run_id, 100, 200)

    with_routers(nats_server, body)


def test_a_reservation_of_a_router_that_died_expires_and_is_dropped_on_the_next_write(
    nats_server: EmbeddedNats,
) -> None:
    async def main() -> None:
        async with two_routers(nats_server.url, expiry_margin_s=0.0) as (dead, alive):
            run_id = new_run()
            await reserve(dead, [TIGHT], run_id, 100, 200, deadline_s=0.0)  # expires in the 1 s grace
            with pytest.raises(BudgetExceeded):
                await reserve(alive, [TIGHT], run_id, 1, 0)
            limit = time.monotonic() + 10
            while True:  # no fixed sleep: retry until the reservation has expired
                try:
                    hold = await reserve(alive, [TIGHT], run_id, 100, 200)
                    break
                except BudgetExceeded:
                    assert time.monotonic() < limit, "the dead router's reservation never expired"
                    await asyncio.sleep(0.1)
            entry = await alive.entry(TIGHT, run_id)
            assert hold is not None and list(entry.reserved) == [hold.request_id]

    run(asyncio.wait_for(main(), timeout=30))


def test_a_cost_budget_reserves_the_dearest_cost_and_settles_at_the_answering_price(nats_server: EmbeddedNats) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        hold = await reserve(a, [DOLLAR], run_id, 1000, 500)
        entry = await b.entry(DOLLAR, run_id)
        assert entry.reserved_cost == Decimal("0.007")  # 1000 x $2/M + 500 x $10/M
        assert hold is not None
        a.settle(hold, answered("900 300"))
        await a.drained()
        entry = await b.entry(DOLLAR, run_id)
        assert entry.spent_cost == Decimal("0.0048") and entry.spent_tokens == 1200 and entry.reserved == {}
        hold = await reserve(b, [DOLLAR], run_id, 100, 400)  # $0.0002 + $0.004 more fits in $0.01
        await reserve(a, [DOLLAR], run_id, 100, 80)  # $0.0002 + $0.0008: exactly $0.01, admitted
        with pytest.raises(BudgetExceeded, match=r"allows \$0.01 per run; spent \$0.0048, reserved \$0.0052"):
            await reserve(a, [DOLLAR], run_id, 1, 0)  # the limit is reached: refused

    with_routers(nats_server, body)


def test_a_cost_budget_refuses_a_request_it_cannot_price_unless_told_to_count_tokens(
    nats_server: EmbeddedNats,
) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        with pytest.raises(PolicyDenied) as info:
            await reserve(a, [DOLLAR], run_id, 10, 10, targets=BOTH)
        assert info.value.code == "budget_price_unknown" and "free/m has no price" in info.value.message
        lenient = Budget(
            name="lenient",
            scope="run",
            period="run",
            max_cost=Decimal("1"),
            max_tokens=100,
            unknown_price="count_tokens",
        )
        hold = await reserve(a, [lenient], run_id, 10, 10, targets=BOTH)
        a.settle(hold, answered("10 10", endpoint="free"))
        await a.drained()
        entry = await b.entry(lenient, run_id)
        assert entry.spent_tokens == 20 and entry.spent_cost == 0  # counted in tokens only

    with_routers(nats_server, body)


def test_a_request_without_a_run_id_is_a_run_of_its_own_and_touches_no_entry(nats_server: EmbeddedNats) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        assert await reserve(a, [TIGHT], None, 100, 200) is None
        with pytest.raises(BudgetExceeded, match="no Modelbus-Run-Id"):
            await reserve(a, [TIGHT], None, 100, 201)
        with pytest.raises(InvalidRequest):
            await reserve(a, [TIGHT], "", 1, 1)

    with_routers(nats_server, body)


def test_the_snapshot_shows_what_this_router_last_saw_without_asking_the_bucket(nats_server: EmbeddedNats) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        hold = await reserve(a, [TIGHT, DOLLAR], run_id, 10, 20)
        rows = {s.budget: s for s in a.snapshot() if s.scope_value == run_id}
        assert rows[TIGHT.name].reserved_tokens == 30 and rows[TIGHT.name].limit_tokens == 300
        assert rows[DOLLAR.name].reserved_cost == Decimal("0.00022") and rows[DOLLAR.name].limit_cost == Decimal("0.01")
        a.settle(hold, answered("10 5"))
        await a.drained()
        rows = {s.budget: s for s in a.snapshot() if s.scope_value == run_id}
        assert (rows[TIGHT.name].spent_tokens, rows[TIGHT.name].reserved_tokens, rows[TIGHT.name].window) == (
            15,
            0,
            "run",
        )
        assert not [s for s in b.snapshot() if s.scope_value == run_id]  # b never saw this run

    with_routers(nats_server, body)


def test_the_bucket_holds_one_entry_per_budget_value_and_window_keyed_safely(nats_server: EmbeddedNats) -> None:
    async def body(a: Budgets, b: Budgets) -> None:
        odd_run = "run with spaces/and.dots*>"
        await a.charge(TIGHT, odd_run, 3)
        kv = await a._nc.jetstream().key_value(BUDGETS_BUCKET)
        entry = await kv.get(entry_key(TIGHT.name, odd_run, "run"))
        assert decode_entry(entry.value).spent_tokens == 3
        assert (await kv.status()).history == 1

    with_routers(nats_server, body)


def test_two_requests_with_the_same_request_id_hold_two_reservations(nats_server: EmbeddedNats) -> None:
    """A client reusing a request id must not collapse reservations (that would loosen the bound)."""

    async def body(a: Budgets, b: Budgets) -> None:
        run_id = new_run()
        budgets = applying([TIGHT], [Policy(name="tight")], {H.RUN_ID: run_id}, "_INBOX.x")
        holds = [a.prepare("same-id", budgets, needs(50, 50), PRICED, TABLE, time.monotonic() + 30) for _ in range(2)]
        for hold in holds:
            assert hold is not None
            await a.reserve(hold)
        assert (await b.entry(TIGHT, run_id)).reserved_tokens == 200
        with pytest.raises(BudgetExceeded):
            await reserve(b, [TIGHT], run_id, 50, 51)

    with_routers(nats_server, body)
