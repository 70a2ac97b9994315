"""Prometheus metrics and ``Modelbus-Overhead-Ms`` on a real ``modelbus up`` stack.

The stack's ready line names every service's metrics endpoint; each is scraped and parsed with
``prometheus_client``'s own parser, and the router's numbers are compared with the requests this
module sent (counts by status, tokens by kind, streams' time to first token, fallbacks). Every
answer, over NATS and HTTP, plain and streamed, success and error, carries a sane overhead.
A router with ``MODELBUS_METRICS=off`` names no endpoint.
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
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import headers as H
from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats
from shared.replies import is_keepalive, is_stream_end, status_of
from shared.subjects import CHAT_COMPLETIONS
from tests.conftest import ROOT, Stack, run, start_stack, stop_process, wait_for_line
from tests.test_dashboard import load_dashboard, sample_names, unknown_metrics

pytestmark = pytest.mark.timeout(120)

CONFIG = Path(__file__).with_name("configs") / "metrics.yaml"
SERVICES = 5
"""secrets, config, router, providers, gateway."""


class Scraped:
    """Samples of one scrape: ``{(name, frozenset(labels.items())): value}``."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


class Metrics:
    def __init__(self, stack: Stack, ready: str, home: Path) -> None:
        self.stack = stack
        self.ready = ready
        self.home = home
        self.urls = ready.split(" metrics=", 1)[1].split()[0].split(",")
        self.http = ready.split(" http=", 1)[1].split()[0]
        self.key = (home / "gateway.key").read_text().strip()

    def scrape_all(self) -> list[Scraped]:
        return [Scraped(httpx.get(url, timeout=5).text) for url in self.urls]

    def service(self, name: str) -> Scraped:
        """The scrape of the one process that runs service ``name``."""
        found = [s for s in self.scrape_all() if s.total("modelbus_service_info", service=name) == 1]
        assert len(found) == 1, (name, self.ready)
        return found[0]

    def router(self) -> Scraped:
        return self.service("router")

    def gateway(self) -> Scraped:
        return self.service("gateway")


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metrics]:
    home = tmp_path_factory.mktemp("metrics-home")
    s = start_stack(nats_server.url, CONFIG, home)
    try:
        ready = next(line for line in s.output if line.startswith("ready "))
        yield Metrics(s, ready, home)
    finally:
        stop_process(s.proc)


def _body(model: str, *, stream: bool = False) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "count these five words please"}],
            "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        }
    ).encode()


async def _nats(url: str, body: bytes, extra: dict[str, str] | None = None) -> list[tuple[dict[str, str], bytes]]:
    """Every message of one request's answer (keepalives skipped), up to its final one."""
    nc = await nats.connect(url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        headers = {H.REQUEST_ID: uuid.uuid4().hex, **(extra or {})}
        await nc.publish(CHAT_COMPLETIONS, body, reply=inbox, headers=headers)
        out: list[tuple[dict[str, str], bytes]] = []
        stream = json.loads(body).get("stream", False)
        while True:
            msg = await sub.next_msg(timeout=15)
            h = dict(msg.headers or {})
            if is_keepalive(h):
                continue
            out.append((h, msg.data))
            if not stream or is_stream_end(h) or status_of(h, default=200) != 200:
                return out
    finally:
        await nc.close()


def ask(url: str, body: bytes, extra: dict[str, str] | None = None) -> list[tuple[dict[str, str], bytes]]:
    return run(_nats(url, body, extra))


def _overhead(headers: dict[str, str]) -> float:
    value = float(headers[H.OVERHEAD_MS])
    # Milliseconds of modelbus's own work: some (a clock that ticks in whole milliseconds would
    # show 0 here), never seconds (an upstream's time counted in).
    assert 0 < value < 2000, headers
    return value


def test_the_ready_line_names_a_scrapeable_metrics_endpoint_per_service(stack: Metrics) -> None:
    assert len(stack.urls) == SERVICES, stack.ready
    services: set[frozenset[tuple[str, str]]] = set()
    for url in stack.urls:
        assert url.startswith("http://127.0.0.1:"), url
        scraped = Scraped(httpx.get(url, timeout=5).text)
        assert "process_cpu_seconds" in scraped.families
        services.update(ls for (n, ls) in scraped.samples if n == "modelbus_service_info")
    assert {dict(ls)["service"] for ls in services} == {"secrets", "config", "router", "providers", "gateway"}


def test_every_dashboard_query_names_a_metric_the_running_stack_exposes(stack: Metrics) -> None:
    known: set[str] = set()
    for url in stack.urls:
        known |= sample_names(httpx.get(url, timeout=5).text)
    assert unknown_metrics(load_dashboard(), known) == {}


def test_the_router_counts_each_answer_and_its_tokens_by_kind(stack: Metrics) -> None:
    before = stack.router()
    replies = [ask(stack.stack.url, _body("cached-alias")) for _ in range(3)]
    usage = [json.loads(r[-1][1])["usage"] for r in replies]
    after = stack.router()
    labels = {"alias": "cached-alias", "endpoint": "cached", "status": "200"}
    assert after.total("modelbus_requests_total", **labels) - before.total("modelbus_requests_total", **labels) == 3
    kinds = {
        "input": sum(u["prompt_tokens"] for u in usage),
        "output": sum(u["completion_tokens"] for u in usage),
        "cache_read": 15,
        "cache_write": 6,
        "reasoning": 9,
    }
    for kind, tokens in kinds.items():
        got = after.total(
            "gen_ai_client_token_usage_sum", gen_ai_token_type=kind, gen_ai_request_model="cached-alias"
        ) - before.total("gen_ai_client_token_usage_sum", gen_ai_token_type=kind, gen_ai_request_model="cached-alias")
        assert got == tokens, kind
    duration = {"gen_ai_request_model": "cached-alias", "gen_ai_provider_name": "mock", "error_type": ""}
    counted = after.total("gen_ai_client_operation_duration_seconds_count", **duration)
    assert counted - before.total("gen_ai_client_operation_duration_seconds_count", **duration) == 3
    for reply in replies:
        _overhead(reply[-1][0])


def test_the_overhead_leaves_out_the_upstreams_time(stack: Metrics) -> None:
    # The upstream takes 400 ms (plain) and 400 ms to its first chunk (stream): none of it is modelbus's.
    for stream in (False, True):
        started = time.perf_counter()
        messages = ask(stack.stack.url, _body("slow-alias", stream=stream))
        assert time.perf_counter() - started >= 0.4
        assert _overhead(messages[0][0]) < 200, stream


def test_a_stream_carries_the_overhead_on_its_first_chunk_and_counts_its_time_to_first_token(
    stack: Metrics,
) -> None:
    before = stack.router()
    messages = ask(stack.stack.url, _body("cached-alias", stream=True))
    first, last = messages[0][0], messages[-1][0]
    assert first[H.SEQ] == "0" and is_stream_end(last)
    assert _overhead(first) == _overhead(last)
    after = stack.router()
    name = "gen_ai_server_time_to_first_token_seconds_count"
    assert (
        after.total(name, gen_ai_request_model="cached-alias") - before.total(name, gen_ai_request_model="cached-alias")
        == 1
    )


def test_an_error_answer_is_counted_by_its_status_and_carries_the_overhead(stack: Metrics) -> None:
    before = stack.router()
    plain = ask(stack.stack.url, _body("broken-alias"))
    streamed = ask(stack.stack.url, _body("broken-alias", stream=True))
    unknown = ask(stack.stack.url, _body("no-such-alias"))
    for reply in (plain, streamed, unknown):
        assert status_of(reply[-1][0]) >= 400
        _overhead(reply[-1][0])
    after = stack.router()
    labels = {"alias": "broken-alias", "status": "400"}
    assert after.total("modelbus_requests_total", **labels) - before.total("modelbus_requests_total", **labels) == 2


def test_a_fallback_to_the_next_target_is_counted(stack: Metrics) -> None:
    before = stack.router()
    reply = ask(stack.stack.url, _body("fallback-alias"))
    assert status_of(reply[-1][0]) == 200 and reply[-1][0][H.ENDPOINT] == "cached"
    after = stack.router()
    name = "modelbus_fallbacks_total"
    assert after.total(name, alias="fallback-alias") - before.total(name, alias="fallback-alias") == 1


def test_the_router_reports_its_config_revision_and_propagation_lag(stack: Metrics) -> None:
    router = stack.router()
    assert router.total("modelbus_config_revision") >= 1
    assert "modelbus_config_propagation_lag_seconds" in router.families
    assert router.total("modelbus_config_propagation_lag_seconds") >= 0
    assert "modelbus_requests_in_flight" in router.families


def test_budget_spend_and_limit_are_scraped_from_the_routers_budgets(stack: Metrics) -> None:
    reply = ask(stack.stack.url, _body("ignored"), {H.AGENT: "metered"})
    assert status_of(reply[-1][0]) == 200
    total = json.loads(reply[-1][1])["usage"]["total_tokens"]
    labels = {"budget": "metered-tokens", "unit": "tokens"}
    deadline = time.monotonic() + 10
    while True:  # the spend is settled in the background, after the answer
        router = stack.router()
        if router.total("modelbus_budget_spent", **labels) >= total or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert router.total("modelbus_budget_spent", **labels) == total, router.families.get("modelbus_budget_spent")
    assert router.total("modelbus_budget_limit", **labels) == 100000


def test_rate_limit_and_endpoint_quota_counts_are_scraped_against_what_they_allow(stack: Metrics) -> None:
    assert status_of(ask(stack.stack.url, _body("ignored"), {H.AGENT: "metered"})[-1][0]) == 200
    assert status_of(ask(stack.stack.url, _body("quoted-alias"))[-1][0]) == 200
    router = stack.router()
    rate = {"limit": "metered-rate", "scope_value": "metered"}
    assert router.total("modelbus_rate_limit_per_minute", unit="requests", **rate) == 1000
    assert router.total("modelbus_rate_limit_per_minute", unit="tokens", **rate) == 1000000
    assert router.total("modelbus_rate_limit_used", unit="requests", **rate) >= 1
    assert router.total("modelbus_rate_limit_used", unit="tokens", **rate) >= 1
    assert router.total("modelbus_endpoint_quota_per_minute", endpoint="quoted", unit="requests") == 1000
    assert router.total("modelbus_endpoint_quota_used", endpoint="quoted", unit="requests") >= 1
    assert router.total("modelbus_endpoint_quota_used", endpoint="cached") == 0  # no quota declared


def test_http_answers_carry_the_overhead_plain_streamed_and_errors(stack: Metrics) -> None:
    url = f"{stack.http}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {stack.key}", "content-type": "application/json"}
    before = stack.gateway()
    with httpx.Client(timeout=15) as http:
        plain = http.post(url, content=_body("cached-alias"), headers=auth)
        with http.stream("POST", url, content=_body("cached-alias", stream=True), headers=auth) as streamed:
            assert streamed.status_code == 200
            streamed.read()
        broken = http.post(url, content=_body("broken-alias"), headers=auth)
        refused = http.post(url, content=_body("cached-alias"), headers={"content-type": "application/json"})
    for response, status in ((plain, 200), (streamed, 200), (broken, 400), (refused, 401)):
        assert response.status_code == status
        value = float(response.headers["modelbus-overhead-ms"])
        assert 0 < value < 2000
    after = stack.gateway()
    name = "modelbus_http_requests_total"
    route = "POST /v1/chat/completions"
    assert after.total(name, route=route, status="200") - before.total(name, route=route, status="200") == 2
    assert after.total(name, route=route, status="401") - before.total(name, route=route, status="401") == 1


def test_a_router_with_metrics_off_serves_no_endpoint(stack: Metrics) -> None:
    env = {**os.environ, "NATS_URL": stack.stack.url, "MODELBUS_METRICS": "off", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.router"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output: list[str] = []
        line = wait_for_line(proc, lambda text: READY_MARKER in text, 30, output)
        assert "metrics=" not in line
        # It routes all the same (the queue group may send this request to either router).
        replies: list[Any] = [ask(stack.stack.url, _body("cached-alias")) for _ in range(4)]
        assert all(status_of(r[-1][0]) == 200 for r in replies)
    finally:
        stop_process(proc)


def test_scrapes_run_while_requests_are_served(stack: Metrics) -> None:
    async def both() -> None:
        loop = asyncio.get_running_loop()
        scrapes = [loop.run_in_executor(None, stack.scrape_all) for _ in range(4)]
        answers = [_nats(stack.stack.url, _body("cached-alias")) for _ in range(8)]
        results = await asyncio.gather(*answers)
        await asyncio.gather(*scrapes)
        assert all(status_of(r[-1][0]) == 200 for r in results)

    run(both())
