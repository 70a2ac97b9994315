"""Budgets on real processes: secrets, config, two routers and a provider worker (the mock) on a
private nats-server, and ``modelbus get budgets`` reading the bucket.

The mock reports usage by words (prompt words in, reply words out); a run's budget is a
policy's ``max_tokens_per_run``, reserved as the router's prompt estimate alone (no
``max_tokens``), so the long reply of the ``slow`` endpoint uses more than it reserved and
shows the documented overshoot bound at work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from services.router.filters import needs_of
from shared import headers as H
from shared.chat import ChatCompletionRequest
from shared.client import ModelbusClient, Reply
from shared.natsserver import EmbeddedNats
from shared.subjects import BUDGETS_BUCKET
from tests.conftest import ROOT, run
from tests.integration.procs import Services, services

pytestmark = pytest.mark.timeout(120)

CONFIG = Path(__file__).with_name("configs") / "budget_stack.yaml"
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "count these words please"}]}
RUN_LIMIT = 140


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with services(nats_server.url, tmp_path_factory.mktemp("budget-stack-home"), CONFIG, routers=2) as s:
        yield s


async def _ask(url: str, count: int, headers: dict[str, str], body: dict[str, Any], **connect: Any) -> list[Reply]:
    client = await ModelbusClient.connect(url, **connect)
    try:
        return list(
            await asyncio.gather(*(client.request_raw(body, headers=headers, timeout=30) for _ in range(count)))
        )
    finally:
        await client.close()


async def _ask_in_turn(
    url: str, count: int, headers: dict[str, str], body: dict[str, Any], **connect: Any
) -> list[Reply]:
    client = await ModelbusClient.connect(url, **connect)
    try:
        return [await client.request_raw(body, headers=headers, timeout=30) for _ in range(count)]
    finally:
        await client.close()


def usage(reply: Reply) -> tuple[int, int]:
    """``(prompt, completion)`` tokens of an answer, as the client got them."""
    got = json.loads(reply.body)["usage"]
    return got["prompt_tokens"], got["completion_tokens"]


def tokens(reply: Reply) -> int:
    return sum(usage(reply))


def error(reply: Reply) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(reply.body)["error"]
    return body


def get_budgets(s: Services) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(cli(s, "get", "budgets", "-o", "json"))["budgets"]
    return rows


def cli(s: Services, *args: str) -> str:
    env = {**os.environ, "NATS_URL": s.nats_url, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(s.home / "cli"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def row(rows: list[dict[str, Any]], budget: str, value: str | None) -> dict[str, Any]:
    (found,) = [r for r in rows if r["budget"] == budget and r["scope_value"] == value]
    return found


async def _settled(s: Services, budget: str, value: str) -> dict[str, Any]:
    """The row once nothing is reserved any more (settlement runs after the answers went out)."""
    for _ in range(100):
        r = row(await asyncio.to_thread(get_budgets, s), budget, value)
        if r["reserved_tokens"] == 0:
            return r
        await asyncio.sleep(0.1)
    raise AssertionError(f"{budget} {value}: reservations never settled")


def test_a_run_budget_holds_with_two_routers_and_32_concurrent_requests_within_the_bound(stack: Services) -> None:
    run_id = f"run-{uuid.uuid4().hex}"
    replies = run(_ask(stack.nats_url, 32, {H.AGENT: "runner", H.RUN_ID: run_id}, BODY))
    ok = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 429]
    assert len(ok) + len(refused) == 32 and ok and refused, [r.status for r in replies]
    # Two routers take the requests (a queue group): the first to reserve may take the whole budget.
    reserved = needs_of(
        msgspec.convert(BODY, ChatCompletionRequest)
    ).prompt_tokens  # no max_tokens, estimate 0: the prompt
    spent = sum(tokens(r) for r in ok)
    excess = sum(max(0, tokens(r) - reserved) for r in ok)
    print(f"\n{len(ok)} admitted of 32, spent {spent} of {RUN_LIMIT}; bound {RUN_LIMIT} + {excess}")
    assert (
        spent <= RUN_LIMIT + excess
    )  # the documented bound: only what in-flight requests used beyond their reservation
    assert len(ok) * reserved <= RUN_LIMIT  # every admission fitted the limit
    got = run(_settled(stack, "runs:max_tokens_per_run", run_id))
    assert got["spent_tokens"] == spent and got["remaining_tokens"] == max(0, RUN_LIMIT - spent)
    # Spent past the limit: refused at >=, even a request with no prompt to speak of.
    again = run(_ask(stack.nats_url, 1, {H.AGENT: "runner", H.RUN_ID: run_id}, BODY))[0]
    assert again.status == 429


def test_the_429_names_the_budget_its_limit_and_its_spend_and_is_not_retryable(stack: Services) -> None:
    run_id = f"run-{uuid.uuid4().hex}"
    replies = run(_ask_in_turn(stack.nats_url, 12, {H.AGENT: "runner", H.RUN_ID: run_id}, BODY))
    statuses = [r.status for r in replies]
    assert 200 in statuses and statuses[statuses.index(429) :] == [429] * (12 - statuses.index(429)), statuses
    err = error(replies[-1])
    assert err["code"] == "budget_exceeded" and err["retryable"] is False
    spent = sum(tokens(r) for r in replies if r.status == 200)
    assert f"budget 'runs:max_tokens_per_run' allows {RUN_LIMIT} tokens per run" in err["message"]
    assert f"spent {spent}, reserved 0" in err["message"] and run_id in err["message"]


def test_a_failed_request_releases_its_reservation(stack: Services) -> None:
    # breaker-run reserves 50 + the prompt of 100 tokens: a leaked reservation would refuse the second request.
    replies = run(_ask_in_turn(stack.nats_url, 4, {H.AGENT: "breaker", H.RUN_ID: "broken-run"}, BODY))
    assert [r.status for r in replies] == [400] * 4, [r.body for r in replies]
    got = run(_settled(stack, "breaker-run", "broken-run"))
    assert (got["spent_tokens"], got["reserved_tokens"], got["in_flight"]) == (0, 0, 0)


def test_a_namespace_cost_budget_spends_what_the_price_table_gives(stack: Services) -> None:
    body = {**BODY, "max_tokens": 10}
    writer = run(_ask_in_turn(stack.nats_url, 3, {H.AGENT: "research/writer"}, body))
    reader = run(_ask_in_turn(stack.nats_url, 3, {H.AGENT: "research/reader"}, body))
    ok = [r for r in writer + reader if r.status == 200]
    refused = [r for r in writer + reader if r.status == 429]
    assert ok and refused, [r.status for r in writer + reader]
    assert "budget 'research-cost' allows $0.0035 per day" in error(refused[0])["message"]
    expected = Decimal(0)
    for r in ok:
        prompt, completion = usage(r)
        expected += (prompt * Decimal(2) + completion * Decimal(10)) / 1_000_000
        expected += Decimal("0.001")
    got = run(_settled(stack, "research-cost", "research"))
    assert Decimal(got["spent_cost"]) == expected and got["window"] == f"{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    assert Decimal(got["spent_cost"]) < Decimal("0.0035")  # reservations were priced high enough to never overshoot
    rows = get_budgets(stack)
    per_agent = row(rows, "per-agent", "research/writer")
    assert per_agent["window"] == f"{dt.datetime.now(dt.UTC):%Y-%m}"
    assert per_agent["spent_tokens"] == sum(tokens(r) for r in writer if r.status == 200)


def test_a_key_budget_counts_each_caller_identity_apart(stack: Services) -> None:
    alice = run(_ask_in_turn(stack.nats_url, 8, {}, {**BODY, "model": "priced"}, inbox_prefix="_INBOX_client.alice"))
    statuses = [r.status for r in alice]
    assert 200 in statuses and 429 in statuses, statuses
    assert "budget 'per-client'" in error(alice[-1])["message"] and "'client.alice'" in error(alice[-1])["message"]
    bob = run(_ask_in_turn(stack.nats_url, 1, {}, {**BODY, "model": "priced"}, inbox_prefix="_INBOX_client.bob"))
    assert bob[0].status == 200
    anonymous = run(_ask_in_turn(stack.nats_url, 8, {}, {**BODY, "model": "priced"}))  # no identity: no key budget
    assert {r.status for r in anonymous} == {200}
    got = run(_settled(stack, "per-client", "client.alice"))
    assert got["spent_tokens"] == sum(tokens(r) for r in alice if r.status == 200) and got["max_tokens"] == 60
    spent = got["spent_tokens"]
    table = cli(stack, "get", "budgets", "per-client")
    assert "BUDGET" in table and "REMAINING" in table
    (line,) = [x for x in table.splitlines() if "key=client.alice" in x]
    cells = re.split(r"\s{2,}", line)
    assert cells[3:7] == [f"{spent}/60 tok", "0/60 tok", f"{60 - spent}/60 tok", "0"], cells


def test_a_request_no_budget_applies_to_never_touches_the_budgets_bucket(stack: Services) -> None:
    """Watched at the broker: no read or write of the bucket for it; the same watch sees one for a budgeted request."""

    async def scenario() -> None:
        watcher = await nats.connect(stack.nats_url)
        try:
            touched = await watcher.subscribe(f"$KV.{BUDGETS_BUCKET}.>")
            reads = await watcher.subscribe(f"$JS.API.DIRECT.GET.KV_{BUDGETS_BUCKET}.>")
            reads_too = await watcher.subscribe(f"$JS.API.STREAM.MSG.GET.KV_{BUDGETS_BUCKET}")
            await watcher.flush()
            plain = await _ask_in_turn(stack.nats_url, 5, {}, {**BODY, "model": "priced"})
            assert {r.status for r in plain} == {200}
            await watcher.flush()
            await asyncio.sleep(0.2)  # settlements would have gone out by now; none may
            assert (touched.pending_msgs, reads.pending_msgs, reads_too.pending_msgs) == (0, 0, 0)
            budgeted = await _ask_in_turn(stack.nats_url, 1, {H.AGENT: "research/writer"}, {**BODY, "max_tokens": 10})
            assert budgeted[0].status in (200, 429)
            await touched.next_msg(timeout=5)  # the positive control: a write of the bucket
        finally:
            await watcher.close()

    run(asyncio.wait_for(scenario(), timeout=30))


def test_routers_admit_from_leases_with_few_writes_show_them_and_give_them_back_when_idle(stack: Services) -> None:
    """The per-agent budget (100000 a month) is sliced: routers admit from a lease, not per request."""
    headers, body = {H.AGENT: "lease-probe"}, {**BODY, "max_tokens": 10}

    async def scenario() -> list[Reply]:
        watcher = await nats.connect(stack.nats_url)
        try:
            writes = await watcher.subscribe(f"$KV.{BUDGETS_BUCKET}.>")
            await watcher.flush()
            replies = await _ask_in_turn(stack.nats_url, 30, headers, body)
            await asyncio.sleep(0.2)  # the settlements' flush
            await watcher.flush()
            assert writes.pending_msgs <= 15, f"{writes.pending_msgs} KV writes for 30 requests"  # 55 without leases
            return replies
        finally:
            await watcher.close()

    replies = run(asyncio.wait_for(scenario(), timeout=30))
    assert {r.status for r in replies} == {200}
    leased = row(get_budgets(stack), "per-agent", "lease-probe")
    assert leased["leases"] >= 1 and leased["in_flight"] == 0 and leased["leased_tokens"] == leased["reserved_tokens"]
    assert f"(+{leased['leases']} router leases)" in cli(stack, "get", "budgets", "per-agent")

    async def given_back() -> dict[str, Any]:
        for _ in range(100):
            got = row(await asyncio.to_thread(get_budgets, stack), "per-agent", "lease-probe")
            if got["leases"] == 0:
                return got
            await asyncio.sleep(0.1)
        raise AssertionError("the idle leases were never given back")

    got = run(given_back())
    assert got["reserved_tokens"] == 0 and got["spent_tokens"] == sum(tokens(r) for r in replies)
