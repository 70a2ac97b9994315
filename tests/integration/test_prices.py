"""Prices on real processes: secrets, config, two routers and a provider worker (the mock) on a
private nats-server without identities.

A ModelPrice applied through the config service is in the compiled configuration every router
serves (their config hashes are those of a table built from it), its figures survive the config
log exactly, the cost of a real answer counts cached, cache-write and reasoning tokens at their
own rates, ``modelbus get prices`` shows what applies (shipped defaults with source and date),
and the defaults can be switched off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.router.table import RoutingTable
from shared import headers as H
from shared.admin import ApplyRequest, ApplyResult, RouterList, WaitRequest
from shared.client import ModelbusClient, Reply
from shared.errors import ConfigError, error_from_wire
from shared.natsserver import EmbeddedNats
from shared.pricing import cost_of, tokens_from_counts
from shared.routing import RoutingConfig
from shared.subjects import CONFIG_APPLY, CONFIG_GET, CONFIG_ROUTERS, CONFIG_WAIT
from shared.usage import parse_usage_header
from tests.conftest import ROOT, run
from tests.integration.procs import Services, services

pytestmark = pytest.mark.timeout(180)

CONFIG = Path(__file__).with_name("configs") / "prices.yaml"


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with services(nats_server.url, tmp_path_factory.mktemp("prices-home"), CONFIG, routers=2) as s:
        yield s


async def _admin(url: str, subject: str, request: Any, reply_type: type[Any]) -> Any:
    client = await ModelbusClient.connect(url)
    try:
        body = b"" if request is None else msgspec.json.encode(request)
        msg = await client.nc.request(subject, body, timeout=30)
    finally:
        await client.close()
    status = int((msg.headers or {}).get(H.STATUS, "0"))
    if status != 200:
        raise error_from_wire(status, msg.data)
    return msgspec.json.decode(msg.data, type=reply_type)


def native(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def apply(url: str, docs: list[dict[str, Any]]) -> ApplyResult:
    text = "\n---\n".join(json.dumps(d) for d in docs)
    result: ApplyResult = run(_admin(url, CONFIG_APPLY, ApplyRequest(documents=text, actor="test"), ApplyResult))
    run(_admin(url, CONFIG_WAIT, WaitRequest(revision=result.revision, timeout_ms=10_000), RouterList))
    return result


def compiled(url: str) -> RoutingConfig:
    config: RoutingConfig = run(_admin(url, CONFIG_GET, None, RoutingConfig))
    return config


def get_prices(s: Services, *args: str) -> subprocess.CompletedProcess[str]:
    return modelbus(s, "get", "prices", *args)


def modelbus(s: Services, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": s.nats_url, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(s.home / "cli"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


CACHED_PRICE = native(
    "ModelPrice",
    "cached-price",
    {
        "endpoint": "cached",
        "model": "cached-model",
        "input": 3,
        "output": "15",
        "cache_read": 0.30,
        "cache_write": "3.75",
        "reasoning": 20,
        "per_request": "0.0001",
    },
)
MOCK_PATTERN = native(
    "ModelPrice", "mock-models", {"model_pattern": "*-model", "provider": "mock", "input": 1, "output": 2}
)


def test_a_model_price_applied_through_the_config_service_reaches_every_routers_table(stack: Services) -> None:
    result = apply(stack.nats_url, [CACHED_PRICE, MOCK_PATTERN])
    assert {(c.kind, c.name) for c in result.changes} >= {("ModelPrice", "cached-price"), ("ModelPrice", "mock-models")}
    config = compiled(stack.nats_url)
    table = RoutingTable(config)
    routers: RouterList = run(_admin(stack.nats_url, CONFIG_ROUTERS, None, RouterList))
    assert len(routers.items) == 2
    # Every router serves exactly this compiled configuration, prices included.
    assert {r.config_hash for r in routers.items} == {table.config_hash}
    exact = table.price_for("cached", "mock", "cached-model")
    assert exact is not None and exact.name == "cached-price"
    assert (exact.input, exact.cache_read, exact.cache_write, exact.reasoning) == (
        Decimal("3"),
        Decimal("0.3"),
        Decimal("3.75"),
        Decimal("20"),
    )
    pattern = table.price_for("plain", "mock", "plain-model")
    assert pattern is not None and pattern.name == "mock-models"
    assert pattern.cache_read == pattern.cache_write == Decimal("1") and pattern.reasoning == Decimal("2")
    shipped = table.price_for("openai", "openai", "gpt-4o-mini")
    assert shipped is not None and shipped.origin == "default" and shipped.cache_read == Decimal("0.075")
    assert table.price_for("plain", "mock", "unpriced") is None


def test_applying_the_same_price_again_is_no_change(stack: Services) -> None:
    before = apply(stack.nats_url, [CACHED_PRICE, MOCK_PATTERN])
    again = apply(stack.nats_url, [CACHED_PRICE, MOCK_PATTERN])
    assert again.changes == [] and again.revision == before.revision


def test_the_cost_of_a_real_answer_counts_cached_and_reasoning_tokens_at_their_own_rates(stack: Services) -> None:
    apply(stack.nats_url, [CACHED_PRICE, MOCK_PATTERN])

    async def ask() -> Reply:
        client = await ModelbusClient.connect(stack.nats_url)
        try:
            return await client.request_raw(
                {"model": "cached-alias", "messages": [{"role": "user", "content": "price my cache"}]}, timeout=30
            )
        finally:
            await client.close()

    reply = run(ask())
    assert reply.status == 200, reply.body
    usage = json.loads(reply.body)["usage"]
    counts = parse_usage_header(reply.headers.get(H.USAGE))
    if counts is None:  # the router does not pass Modelbus-Usage on: rebuild it from the body and the mock's options
        counts = parse_usage_header(f"{usage['prompt_tokens']} {usage['completion_tokens']} 5 2 3")
    assert counts is not None
    tokens = tokens_from_counts(counts)
    assert (tokens.cache_read, tokens.cache_write, tokens.reasoning) == (5, 2, 3)
    assert tokens.input == usage["prompt_tokens"] - 7 and tokens.output == usage["completion_tokens"] - 3
    price = RoutingTable(compiled(stack.nats_url)).price_for("cached", "mock", "cached-model")
    expected = (
        Decimal(tokens.input) * 3
        + Decimal(tokens.output) * 15
        + Decimal(5) * Decimal("0.30")
        + Decimal(2) * Decimal("3.75")
        + Decimal(3) * 20
    ) / 1_000_000 + Decimal("0.0001")
    assert cost_of(price, tokens) == expected


def test_modelbus_get_prices_shows_what_applies_and_where_shipped_prices_come_from(stack: Services) -> None:
    apply(stack.nats_url, [CACHED_PRICE])
    out = get_prices(stack, "-o", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    applies = {(a["endpoint"], a["model"]): a["price"] for a in report["applies"]}
    assert applies[("cached", "cached-model")] == "cached-price"
    assert applies[("openai", "gpt-4o-mini")] == "default:openai/gpt-4o-mini"
    assert report["default_prices"] is True
    shipped = [p for p in report["prices"] if p["origin"] == "default"]
    assert shipped and all(p["source"].startswith("https://") and p["as_of"] for p in shipped)
    table = get_prices(stack)
    assert table.returncode == 0, table.stderr
    assert "cached/cached-model" in table.stdout and "cached-price" in table.stdout
    assert "https://platform.claude.com/docs/en/about-claude/pricing" in table.stdout


def test_a_second_price_for_the_same_target_is_refused_and_changes_nothing(stack: Services) -> None:
    apply(stack.nats_url, [CACHED_PRICE])
    before = compiled(stack.nats_url).revision
    twin = native("ModelPrice", "cached-twin", {"endpoint": "cached", "model": "cached-model", "input": 1, "output": 1})
    with pytest.raises(ConfigError, match=r"cached-twin.*like ModelPrice cached-price"):
        apply(stack.nats_url, [twin])
    with pytest.raises(ConfigError, match=r"spec\.input: Input should be greater than or equal to 0"):
        apply(stack.nats_url, [native("ModelPrice", "negative", {"model_pattern": "x*", "input": -1, "output": 1})])
    assert compiled(stack.nats_url).revision == before


def test_default_prices_false_leaves_only_the_model_prices(stack: Services) -> None:
    apply(stack.nats_url, [CACHED_PRICE, native("RoutingDefaults", "defaults", {"default_prices": False})])
    try:
        table = RoutingTable(compiled(stack.nats_url))
        assert table.price_for("openai", "openai", "gpt-4o-mini") is None
        assert table.price_for("cached", "mock", "cached-model") is not None
        report = json.loads(get_prices(stack, "-o", "json").stdout)
        assert report["default_prices"] is False and {p["origin"] for p in report["prices"]} == {"config"}
    finally:
        apply(stack.nats_url, [native("RoutingDefaults", "defaults", {"default_prices": True})])
    assert RoutingTable(compiled(stack.nats_url)).price_for("openai", "openai", "gpt-4o-mini") is not None


def test_a_model_price_can_be_described_and_deleted_by_its_kind_like_any_resource(stack: Services) -> None:
    spare = native("ModelPrice", "spare-price", {"endpoint": "plain", "model": "spare", "input": 1, "output": 1})
    apply(stack.nats_url, [spare])
    assert RoutingTable(compiled(stack.nats_url)).price_for("plain", "mock", "spare") is not None
    described = modelbus(stack, "describe", "modelprice", "spare-price")
    assert described.returncode == 0, described.stderr
    assert "spare" in described.stdout and "ModelPrice" in described.stdout
    deleted = modelbus(stack, "delete", "ModelPrice", "spare-price")
    assert deleted.returncode == 0, deleted.stderr
    assert RoutingTable(compiled(stack.nats_url)).price_for("plain", "mock", "spare") is None
    gone = modelbus(stack, "describe", "modelprice", "spare-price")
    assert gone.returncode != 0 and "does not exist" in gone.stderr
