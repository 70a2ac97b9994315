"""Quota shaping on real processes: two routers keep an endpoint within the ``rpm`` it declares.

The upstream is llm-katan with ``--rate-limit-after N``: it answers 429 to every request after
its N-th. The endpoint declares ``rpm: N``, so the routers (counting together) send it N requests
in the minute and no more: the others go to the next target of the plan, or, with none left,
get a 429 with a computed ``Retry-After`` from the router itself, never llm-katan's. A test that
would straddle a minute's end waits for the next minute first (at most a few seconds).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.router.windows import WINDOW_S
from shared import headers as H
from shared.client import ModelbusClient, Reply
from shared.natsserver import EmbeddedNats
from tests.conftest import Katan, run, start_katan, stop_process
from tests.integration.procs import services
from tests.integration.provider_harness import render_documents

pytestmark = pytest.mark.timeout(120)

QUOTA = 4
KEY_VAR = "QUOTA_SHAPING_KATAN_KEY"


def _endpoint(name: str, katan: Katan, **quota: int) -> dict[str, Any]:
    spec = {
        "provider": "openai-compatible",
        "base_url": f"{katan.base_url}/v1",
        "default_model": "echo",
        "allowPrivate": True,
        "auth": {"secretRef": f"env:{KEY_VAR}"},
        **quota,
    }
    return {"kind": "ModelEndpoint", "metadata": {"name": name}, "spec": spec}


def _config(limited: Katan, alone: Katan, spare: Katan) -> str:
    return render_documents(
        [
            _endpoint("limited", limited, rpm=QUOTA),
            _endpoint("alone", alone, rpm=QUOTA),
            _endpoint("spare", spare),
            {
                "kind": "ModelAlias",
                "metadata": {"name": "shaped"},
                "spec": {"targets": [{"endpoint": "limited"}, {"endpoint": "spare"}], "strategy": "failover"},
            },
            {"kind": "ModelAlias", "metadata": {"name": "only-alone"}, "spec": {"targets": [{"endpoint": "alone"}]}},
            # Breakers that never open: a skipped target must not look like a failing one.
            {"kind": "RoutingDefaults", "metadata": {"name": "defaults"}, "spec": {"breaker_failures": 1000}},
        ]
    )


@pytest.fixture(scope="module")
def nats_url(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    katans = [
        start_katan(tmp_path_factory.mktemp("katan-limited"), "--rate-limit-after", str(QUOTA)),
        start_katan(tmp_path_factory.mktemp("katan-alone"), "--rate-limit-after", str(QUOTA)),
        start_katan(tmp_path_factory.mktemp("katan-spare")),
    ]
    try:
        home = tmp_path_factory.mktemp("quota-home")
        config = home / "config.yaml"
        config.write_text(_config(*katans))
        with pytest.MonkeyPatch.context() as env:
            env.setenv(KEY_VAR, "katan-key")  # the secrets service resolves env: references from its own
            with services(nats_server.url, home, config, routers=2):
                yield nats_server.url
    finally:
        for katan in katans:
            stop_process(katan.proc)


def _inside_one_minute(seconds: float) -> None:
    left = WINDOW_S - time.time() % WINDOW_S
    if left < seconds:
        time.sleep(left + 0.05)


async def _burst(url: str, model: str, n: int, headers: dict[str, str] | None = None) -> list[Reply]:
    client = await ModelbusClient.connect(url)
    try:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        return list(
            await asyncio.gather(*(client.request_raw(body, headers=headers or {}, timeout=30) for _ in range(n)))
        )
    finally:
        await client.close()


def test_traffic_over_an_endpoints_quota_goes_to_the_next_target_and_no_upstream_429_comes_back(
    nats_url: str,
) -> None:
    _inside_one_minute(10)
    replies = run(_burst(nats_url, "shaped", QUOTA * 4))
    assert [r.status for r in replies] == [200] * (QUOTA * 4), [r.body[:200] for r in replies if r.status != 200]
    by_endpoint = [r.headers[H.ENDPOINT] for r in replies]
    assert by_endpoint.count("limited") == QUOTA  # two routers, one quota between them
    assert by_endpoint.count("spare") == QUOTA * 3
    assert {r.headers[H.ATTEMPTS] for r in replies} == {"1"}  # nothing was sent to earn a 429 first
    assert len({r.headers[H.ROUTER] for r in replies}) == 2


def test_with_no_target_left_under_its_quota_the_router_answers_429_with_a_computed_retry_after(
    nats_url: str,
) -> None:
    _inside_one_minute(10)
    served = run(_burst(nats_url, "only-alone", QUOTA))
    assert [r.status for r in served] == [200] * QUOTA
    # A short deadline: the quota frees up only after this minute, so waiting cannot help.
    (refused,) = run(_burst(nats_url, "only-alone", 1, {H.TIMEOUT_MS: "2000"}))
    end = (time.time() // WINDOW_S + 1) * WINDOW_S
    assert refused.status == 429, refused.body
    error = json.loads(refused.body)["error"]
    assert error["code"] == "rate_limited" and "provider quota" in error["message"]
    assert "katan" not in error["message"].lower()  # the router's answer, not the upstream's 429
    exact = float(refused.headers[H.RETRY_AFTER_MS]) / 1000
    # QUOTA requests this minute: one more fits WINDOW_S / QUOTA into the next.
    expected = end - time.time() + WINDOW_S / QUOTA
    assert expected - 1.0 <= exact <= expected + 0.5
    # llm-katan itself was never pushed past its N: the next minute's N would still be served.
