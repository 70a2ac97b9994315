"""Token budgets per run, shared by routers through a real nats-server's KV (compare-and-swap)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from services.router.budgets import TokenBudgets, budget_key
from shared.errors import InvalidRequest, PolicyDenied
from shared.natsserver import EmbeddedNats
from shared.routing import Policy
from shared.subjects import BUDGETS_BUCKET
from tests.conftest import run

pytestmark = pytest.mark.timeout(60)

TEAM = Policy(name="research/team-budget", max_tokens_per_run=1000)
TIGHT = Policy(name="research/tight", max_tokens_per_run=300)
OPEN = Policy(name="research/models-only", allowed_models=["gpt-4o"])


@asynccontextmanager
async def two_routers(url: str) -> AsyncIterator[tuple[TokenBudgets, TokenBudgets]]:
    """Two TokenBudgets on two connections: what two router processes would have."""
    a: Client = await nats.connect(url)
    b: Client = await nats.connect(url)
    try:
        yield TokenBudgets(a), TokenBudgets(b)
    finally:
        await a.close()
        await b.close()


def with_routers(
    nats_server: EmbeddedNats, body: Callable[[TokenBudgets, TokenBudgets], Coroutine[Any, Any, None]]
) -> None:
    async def main() -> None:
        async with two_routers(nats_server.url) as (a, b):
            await asyncio.wait_for(body(a, b), timeout=30)

    run(main())


def new_run() -> str:
    return f"run-{uuid.uuid4().hex}"


def test_concurrent_charges_from_two_routers_sum_exactly(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        run_id = new_run()
        await asyncio.gather(*(((a, b)[i % 2]).charge(run_id, [TEAM], 7) for i in range(100)))
        assert await a.used(run_id, TEAM) == 700
        assert await b.used(run_id, TEAM.name) == 700

    with_routers(nats_server, body)


def test_charges_count_per_policy_and_per_run(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        first, second = new_run(), new_run()
        await a.charge(first, [TEAM, TIGHT, OPEN], 40)
        await b.charge(first, [TEAM], 2)
        await b.charge(second, [TEAM], 5)
        assert await a.used(first, TEAM) == 42
        assert await a.used(first, TIGHT) == 40
        assert await a.used(first, OPEN) == 0  # no limit, nothing stored
        assert await a.used(second, TEAM) == 5

    with_routers(nats_server, body)


def test_check_denies_when_the_estimate_would_exceed_the_smallest_limit(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        run_id = new_run()
        await a.charge(run_id, [TEAM, TIGHT], 250)
        await b.check(run_id, [TEAM, TIGHT], 50)  # 300 is exactly the tight limit: allowed
        with pytest.raises(PolicyDenied) as info:
            await b.check(run_id, [TEAM, TIGHT], 51)
        err = info.value
        assert err.http_status == 403
        assert err.code == "token_budget_exceeded"
        assert "policy 'research/tight' allows 300 tokens per run" in err.message
        assert run_id in err.message and "used 250" in err.message
        # The other policy alone would still allow it.
        await b.check(run_id, [TEAM], 51)

    with_routers(nats_server, body)


def test_when_both_limits_are_exceeded_the_error_names_the_smallest(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        run_id = new_run()
        await a.charge(run_id, [TEAM, TIGHT], 900)
        with pytest.raises(PolicyDenied, match="policy 'research/tight' allows 300 tokens per run"):
            await b.check(run_id, [TEAM, TIGHT], 200)

    with_routers(nats_server, body)


def test_a_run_that_used_its_whole_budget_is_denied_even_a_tiny_request(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        run_id = new_run()
        await a.charge(run_id, [TIGHT], 300)
        with pytest.raises(PolicyDenied):
            await b.check(run_id, [TIGHT], 0)

    with_routers(nats_server, body)


def test_a_request_without_a_run_id_is_checked_alone_and_never_charged(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        await a.check(None, [TIGHT], 300)
        with pytest.raises(PolicyDenied, match="no Modelbus-Run-Id"):
            await a.check(None, [TIGHT], 301)
        await a.charge(None, [TIGHT], 500)  # nothing to charge it to: a no-op

    with_routers(nats_server, body)


def test_policies_without_a_token_limit_never_touch_the_bucket(nats_server: EmbeddedNats) -> None:
    """Watched at the broker: the router's connection sends no JetStream API request at all
    (no bucket lookup, read, create or write), and the same watch does see one when a limit applies."""

    async def main() -> None:
        router: Client = await nats.connect(nats_server.url)
        watcher: Client = await nats.connect(nats_server.url)
        try:
            api = await watcher.subscribe("$JS.API.>")
            marker = await watcher.subscribe("test.budgets.marker")
            await watcher.flush()
            budgets = TokenBudgets(router)
            run_id = new_run()
            await budgets.check(run_id, [OPEN], 10**9)
            await budgets.charge(run_id, [OPEN], 10**9)
            await router.publish("test.budgets.marker", b"")
            await router.flush()
            await marker.next_msg(timeout=20)  # generous: a loaded 2-core machine once took over 5 s
            # The broker delivers one connection's messages in order: whatever the router sent
            # before the marker is already in the watcher's queue.
            touched = [(await api.next_msg(timeout=1)).subject for _ in range(api.pending_msgs)]
            assert touched == []
            await budgets.check(run_id, [TIGHT], 1)
            seen = [(await api.next_msg(timeout=5)).subject]
            while not any(f"KV_{BUDGETS_BUCKET}" in subject for subject in seen):
                seen.append((await api.next_msg(timeout=5)).subject)
        finally:
            await router.close()
            await watcher.close()

    run(asyncio.wait_for(main(), timeout=60))


def test_an_empty_run_id_is_a_400(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        with pytest.raises(InvalidRequest):
            await a.check("", [TEAM], 1)

    with_routers(nats_server, body)


def test_the_bucket_holds_one_entry_per_policy_and_run_keyed_safely(nats_server: EmbeddedNats) -> None:
    async def body(a: TokenBudgets, b: TokenBudgets) -> None:
        odd_run = "run with spaces/and.dots*>"
        await a.charge(odd_run, [TEAM], 3)
        kv = await a._nc.jetstream().key_value(BUDGETS_BUCKET)
        entry = await kv.get(budget_key(TEAM.name, odd_run))
        assert entry.value == b"3"
        status = await kv.status()
        assert status.history == 1

    with_routers(nats_server, body)
