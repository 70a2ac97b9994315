"""Rate limits on real processes: secrets, config, two routers, a provider worker (the mock) and
an HTTP gateway, against a private nats-server.

A limit holds across both routers under concurrent load, the refusals are 429 ``rate_limited``
with a ``Retry-After`` consistent with the window, and HTTP clients of both APIs get it as a
header. Counts are per calendar minute: a test that would straddle a minute's end waits for the
next one first (at most a few seconds), so the count it checks is one window's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.router.windows import WINDOW_S
from shared import headers as H
from shared.client import ModelbusClient, Reply
from shared.natsserver import EmbeddedNats
from tests.conftest import ROOT, run
from tests.integration.procs import services, start_gateway, write_gateway_keys
from tests.integration.provider_harness import render_documents

pytestmark = pytest.mark.timeout(120)

AGENT_RPM = 8
KEY_RPM = 2
GATEWAY_KEY = "mb-rate-test-" + uuid.uuid4().hex


def _config() -> str:
    return render_documents(
        [
            {"kind": "ModelEndpoint", "metadata": {"name": "mock"}, "spec": {"provider": "mock", "default_model": "m"}},
            {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "mock"}]}},
            {"kind": "Agent", "metadata": {"name": "bot", "namespace": "research"}, "spec": {"model_ref": "mock"}},
            {
                "kind": "RateLimit",
                "metadata": {"name": "bot-rpm"},
                "spec": {"scope": "agent", "match": "research/bot", "rpm": AGENT_RPM},
            },
            {"kind": "RateLimit", "metadata": {"name": "per-key"}, "spec": {"scope": "key", "rpm": KEY_RPM}},
        ]
    )


class Stack:
    def __init__(self, nats_url: str, gateway_url: str, home: Path) -> None:
        self.nats_url, self.gateway_url, self.home = nats_url, gateway_url, home


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("rate-home")
    config = home / "config.yaml"
    config.write_text(_config())
    keys = home / "gateway-keys.json"
    write_gateway_keys(keys, {"team-a": GATEWAY_KEY})
    with services(nats_server.url, home, config, routers=2) as s:
        url = start_gateway(s, keys, env={"MODELBUS_INBOX_PREFIX": "_INBOX_gateway"})
        yield Stack(nats_server.url, url, home)


def _inside_one_minute(seconds: float) -> float:
    """Wait, if need be, until the present minute has ``seconds`` left; the present minute's end."""
    left = WINDOW_S - time.time() % WINDOW_S
    if left < seconds:
        time.sleep(left + 0.05)
    return (time.time() // WINDOW_S + 1) * WINDOW_S


async def _burst(url: str, n: int, headers: dict[str, str]) -> list[Reply]:
    client = await ModelbusClient.connect(url)
    try:
        body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        return list(await asyncio.gather(*(client.request_raw(body, headers=headers, timeout=30) for _ in range(n))))
    finally:
        await client.close()


def test_a_limit_shared_by_two_routers_admits_at_most_its_rpm_under_concurrent_load(stack: Stack) -> None:
    warm = run(_burst(stack.nats_url, 16, {}))  # no limit applies: both routers are up and serving
    assert len({r.headers.get(H.ROUTER) for r in warm}) == 2
    end = _inside_one_minute(10)
    replies = run(_burst(stack.nats_url, AGENT_RPM * 4, {H.AGENT: "research/bot"}))
    accepted = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    # The routers share the queue group's load (about half each): counted apart, they would admit
    # up to twice the limit. Tolerance within one minute: none.
    assert len(accepted) == AGENT_RPM, [r.status for r in replies]
    now = time.time()
    for reply in refused:
        assert reply.status == 429
        error = json.loads(reply.body)["error"]
        assert error["code"] == "rate_limited" and error["retryable"] is True
        assert "rate limit 'bot-rpm' (agent 'research/bot') allows 8 requests per minute" in error["message"]
        exact = float(reply.headers[H.RETRY_AFTER_MS]) / 1000
        # When the minute ends, the 8 start fading; one more fits when they weigh 7: 60/8 s later.
        assert end - now + WINDOW_S / AGENT_RPM - 1.0 <= exact <= end - now + WINDOW_S / AGENT_RPM + 0.1
        assert int(reply.headers[H.RETRY_AFTER]) == int(-(-exact // 1))  # whole seconds, rounded up


def test_requests_of_another_agent_are_not_counted_by_that_limit(stack: Stack) -> None:
    replies = run(_burst(stack.nats_url, AGENT_RPM * 2, {}))
    assert [r.status for r in replies] == [200] * (AGENT_RPM * 2)


def _post(stack: Stack, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}{path}", json=body, headers=headers, timeout=30)


def test_both_http_apis_answer_a_refusal_with_a_computed_retry_after(stack: Stack) -> None:
    _inside_one_minute(10)
    chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    message = {"model": "default", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": f"Bearer {GATEWAY_KEY}"}
    statuses = [_post(stack, "/v1/chat/completions", chat, auth).status_code for _ in range(KEY_RPM)]
    assert statuses == [200] * KEY_RPM
    for path, body in (("/v1/chat/completions", chat), ("/v1/messages", message)):
        answer = _post(stack, path, body, auth)
        assert answer.status_code == 429, answer.text
        assert answer.headers["x-should-retry"] == "true"
        retry_ms = int(answer.headers["retry-after-ms"])
        assert 1 <= int(answer.headers["retry-after"]) <= WINDOW_S * 2
        assert int(answer.headers["retry-after"]) == -(-retry_ms // 1000)
        assert "per-key" in answer.text and "team-a" in answer.text
    # The key is the gateway's to name: a NATS client claiming it is counted as itself.
    (claimed,) = run(_burst(stack.nats_url, 1, {H.KEY: "team-a"}))
    assert claimed.status == 200


def test_modelbus_get_ratelimits_shows_each_limit_with_its_counted_values(stack: Stack) -> None:
    run(_burst(stack.nats_url, 1, {H.AGENT: "research/bot"}))
    env = {**os.environ, "NATS_URL": stack.nats_url, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "services.cli", "--data-dir", str(stack.home), "get", "ratelimits", "-o", "json"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    limits = {limit["name"]: limit for limit in report["limits"]}
    assert set(limits) == {"bot-rpm", "per-key"}
    (bot,) = limits["bot-rpm"]["values"]
    assert bot["value"] == "research/bot"
    assert 1 <= bot["sliding_requests"] <= AGENT_RPM
    assert (limits["bot-rpm"]["scope"], limits["bot-rpm"]["match"], limits["bot-rpm"]["rpm"]) == (
        "agent",
        "research/bot",
        AGENT_RPM,
    )
    table = subprocess.run(argv[:-2], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "bot-rpm" in table.stdout and "agent=research/bot" in table.stdout
