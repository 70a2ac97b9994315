"""Cost in the usage ledger on real processes: secrets, config, two routers and a provider
worker (the mock) on a private nats-server without identities.

Each record carries, as an exact decimal string, the cost its table's price gives for the
usage the mock reported (cache reads, cache writes and reasoning at their own rates, plus
the per-request price); a model without a price is unknown, never 0; a request no provider
was asked costs 0; a run pinned to a revision is priced with that revision's prices; and
``modelbus usage -o json`` totals are exactly the sum of the records' costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from shared import headers as H
from shared.natsserver import EmbeddedNats
from shared.usage import UsageRecord
from tests.conftest import ROOT, run
from tests.integration.procs import Services, services
from tests.integration.test_prices import apply, native
from tests.integration.test_usage_ledger import _records, ask, records_for

pytestmark = pytest.mark.timeout(120)

CONFIG = Path(__file__).with_name("configs") / "usage_costs.yaml"
CACHED = {
    "model": "cached-alias",
    "messages": [{"role": "user", "content": "price my cached tokens please, and the twelve words of this prompt"}],
}


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with services(nats_server.url, tmp_path_factory.mktemp("usage-costs-home"), CONFIG, routers=2) as s:
        yield s


def expected_cached_cost(record: UsageRecord, *, input_rate: str = "3") -> Decimal:
    """cached-price by hand: 5 cache reads, 2 cache writes and 3 reasoning tokens (the mock's options)
    at their own rates, the rest of the prompt at ``input_rate``, the rest of the answer at 15."""
    assert (record.cache_read_tokens, record.cache_write_tokens, record.reasoning_tokens) == (5, 2, 3)
    uncached = record.input_tokens - 5 - 2
    answer = record.output_tokens - 3
    assert uncached > 0 and answer > 0  # every rate shows in the cost
    per_million = (
        uncached * Decimal(input_rate)
        + answer * Decimal("15")
        + 5 * Decimal("0.30")
        + 2 * Decimal("3.75")
        + 3 * Decimal("20")
    )
    return per_million / 1_000_000 + Decimal("0.0001")


def one(replies_ids: set[str], url: str) -> dict[str, UsageRecord]:
    found = records_for(url, replies_ids)
    return {rid: recs[0] for rid, recs in found.items() if len(recs) == 1}


def test_each_record_costs_what_the_table_gives_for_its_cached_and_reasoning_tokens(stack: Services) -> None:
    replies = ask(stack.nats_url, [CACHED] * 4)
    assert all(r.status == 200 for r in replies), [r.body for r in replies]
    records = one({r.headers[H.REQUEST_ID] for r in replies}, stack.nats_url)
    assert len(records) == 4
    for record in records.values():
        assert record.cost is not None and record.currency == "USD"
        assert "E" not in record.cost and "e" not in record.cost  # plain decimal text, never exponent form
        assert Decimal(record.cost) == expected_cached_cost(record)


def test_a_model_without_a_price_has_an_unknown_cost_and_unasked_requests_cost_nothing(stack: Services) -> None:
    plain, broken, unknown = ask(
        stack.nats_url,
        [
            {"model": "plain", "messages": [{"role": "user", "content": "unpriced"}]},
            {"model": "broken-alias", "messages": [{"role": "user", "content": "fail"}]},
            {"model": "no-such-model", "messages": [{"role": "user", "content": "route me"}]},
        ],
    )
    assert (plain.status, broken.status, unknown.status) == (200, 400, 404)
    records = one({r.headers[H.REQUEST_ID] for r in (plain, broken, unknown)}, stack.nats_url)
    unpriced = records[plain.headers[H.REQUEST_ID]]
    assert unpriced.usage_reported and unpriced.input_tokens > 0
    assert unpriced.cost is None and unpriced.currency is None
    # A priced model's error answer billed no tokens, and the per-request price needs usage.
    failed = records[broken.headers[H.REQUEST_ID]]
    assert (failed.attempts, failed.usage_reported, failed.cost, failed.currency) == (1, False, "0", "USD")
    # No provider was asked at all: nothing was billed.
    unrouted = records[unknown.headers[H.REQUEST_ID]]
    assert (unrouted.attempts, unrouted.cost, unrouted.currency) == (0, "0", None)


USAGE_ARGS = ("--by", "model", "--since", "1h", "-o", "json")


def usage_json(s: Services) -> dict[str, object]:
    env = {**os.environ, "NATS_URL": s.nats_url, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(s.home / "cli"), "usage", *USAGE_ARGS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, object] = json.loads(out.stdout)
    return report


def test_modelbus_usage_totals_are_exactly_the_sum_of_the_records_costs(stack: Services) -> None:
    ask(
        stack.nats_url,
        [{"model": m, "messages": [{"role": "user", "content": "sum me"}]} for m in ("cached-alias", "plain")] * 5,
    )
    time.sleep(0.3)  # let the routers' background publishes land before both reads
    records = run(_records(stack.nats_url))
    report = usage_json(stack)
    total = report["total"]
    assert isinstance(total, dict) and total["requests"] == len(records)
    known = [Decimal(r.cost) for r in records if r.cost is not None]
    assert known and any(r.cost is None for r in records)
    assert isinstance(total["cost"], str) and Decimal(total["cost"]) == sum(known, Decimal(0))
    assert total["currency"] == "USD" and total["cost_complete"] is False
    assert total["cost_unknown_requests"] == sum(1 for r in records if r.cost is None)
    groups = {g["group"]: g for g in report["groups"]}  # type: ignore[attr-defined]
    cached = [Decimal(r.cost) for r in records if r.model == "cached-model" and r.cost is not None]
    assert Decimal(groups["cached-model"]["cost"]) == sum(cached, Decimal(0))
    assert groups["plain-model"]["cost"] is None
    assert groups["plain-model"]["cost_unknown_requests"] == sum(1 for r in records if r.model == "plain-model")


def test_a_pinned_run_is_priced_with_its_revisions_prices_and_others_with_the_new_ones(stack: Services) -> None:
    run_id = f"run-{uuid.uuid4().hex}"
    (first,) = ask(stack.nats_url, [CACHED], {H.RUN_ID: run_id})  # pins the run to this revision
    assert first.status == 200
    dearer = native(
        "ModelPrice",
        "cached-price",
        {
            "endpoint": "cached",
            "model": "cached-model",
            "input": "4",
            "output": "15",
            "cache_read": "0.30",
            "cache_write": "3.75",
            "reasoning": "20",
            "per_request": "0.0001",
        },
    )
    apply(stack.nats_url, [dearer])
    try:
        pinned, fresh = ask(stack.nats_url, [CACHED], {H.RUN_ID: run_id}) + ask(stack.nats_url, [CACHED])
        records = one({r.headers[H.REQUEST_ID] for r in (pinned, fresh)}, stack.nats_url)
        old = records[pinned.headers[H.REQUEST_ID]]
        new = records[fresh.headers[H.REQUEST_ID]]
        assert old.cost is not None and Decimal(old.cost) == expected_cached_cost(old, input_rate="3")
        assert new.cost is not None and Decimal(new.cost) == expected_cached_cost(new, input_rate="4")
    finally:
        apply(stack.nats_url, [native("ModelPrice", "cached-price", {**dearer["spec"], "input": "3"})])
