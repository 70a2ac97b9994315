"""modelbus on a real 3-node nats-server cluster with ``MODELBUS_JS_REPLICAS=3``.

The real stack (``modelbus up --nats-url a,b,c``: config, secrets, two routers,
two provider workers with the mock provider) runs against all three URLs,
under bounded load (8 requests in flight, a third of them streamed, every
answer counted per request id at the wire). Each node in turn is killed with
SIGKILL and restarted before the next. No request is answered twice or never
(one whose own connection died with its node may go silent for 5 s: a
client following the contract raises ``RequestLost``). After each kill,
with no service restarted: ``apply`` and ``history`` (the config stream), a
run-pinned request (the run-pin bucket), a budget charge (the budgets bucket)
and ``audit verify`` (the audit stream) all work, and every stream has 3
replicas and a leader. With one replica (before the fix) the first assertion
fails, and losing the node that holds the run-pin bucket turns every pinned
request into an error.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client

from services.router.budgets import Budgets
from shared import headers as H
from shared.admin import ApplyRequest, ApplyResult, AuditReport, HistoryList, HistoryQuery
from shared.bus import server_urls
from shared.errors import error_from_wire
from shared.jetstream import replica_status
from shared.natscluster import EmbeddedCluster
from shared.replies import MAX_SILENCE_S
from shared.subjects import (
    AUDIT_STREAM,
    AUDIT_VERIFY,
    BREAKERS_BUCKET,
    BUDGETS_BUCKET,
    CHAT_COMPLETIONS,
    CONFIG_APPLY,
    CONFIG_HISTORY,
    CONFIG_STREAM,
    GATEWAY_KEYS_BUCKET,
    RUNS_BUCKET,
)
from tests.conftest import Stack, run, start_stack, stop_process
from tests.integration.wire import Seen, Wire, duplicates, verdict

POLICY = "cluster-budget"
CONFIG = f"""
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {{name: mock}}
spec: {{provider: mock, default_model: mock-1, options: {{latency_ms: 150, ttft_ms: 50, itl_ms: 40}}}}
---
apiVersion: modelbus.dev/v1
kind: ModelAlias
metadata: {{name: default}}
spec: {{targets: [{{endpoint: mock}}]}}
---
apiVersion: modelbus.dev/v1
kind: Agent
metadata: {{name: budgeted}}
spec: {{model_ref: mock}}
---
apiVersion: modelbus.dev/v1
kind: AgentPolicy
metadata: {{name: {POLICY}}}
spec: {{max_tokens_per_run: 100000000, agents: [budgeted]}}
"""
STREAMS = [
    CONFIG_STREAM,
    AUDIT_STREAM,
    f"KV_{RUNS_BUCKET}",
    f"KV_{BREAKERS_BUCKET}",
    f"KV_{BUDGETS_BUCKET}",
    f"KV_{GATEWAY_KEYS_BUCKET}",
]
"""Every stream the stack keeps (the secrets bucket too when the stack has a master key)."""
LOAD_CONCURRENCY = 8
LOAD_TIMEOUT_MS = 8000
RECOVER_WITHIN_S = 25.0
"""Upper bound for each operation to work again after a kill (measured figures are printed)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    c = EmbeddedCluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def stack(cluster: EmbeddedCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("home")
    config = home / "cluster.yaml"
    config.write_text(CONFIG)
    s = start_stack(
        cluster.url,
        config,
        home,
        env={"MODELBUS_JS_REPLICAS": "3", "MODELBUS_ADMIN_HTTP": "off"},
        extra_args=["--routers", "2", "--provider-workers", "2"],
        timeout_s=120,
    )
    try:
        yield s
    finally:
        stop_process(s.proc)
        (home / "stack.log").write_text(s.log())  # for a failed run: what every service said
        print(f"\nstack log: {home / 'stack.log'}")


async def connect(cluster: EmbeddedCluster) -> Client:
    return await nats.connect(servers=server_urls(cluster.url), max_reconnect_attempts=-1, reconnect_time_wait=0.25)


TRY_S = 10.0
"""One try's timeout: above a JetStream leader election (about 5 s here). A request the dead node
swallowed is lost (core NATS is at most once) and tried again; apply is declarative, so a second
try of a first that did land changes nothing."""


async def rpc(
    nc: Client, subject: str, request: Any, reply_type: type[Any], *, headers: dict[str, str] | None = None
) -> Any:
    body = b"" if request is None else msgspec.json.encode(request)
    msg = await nc.request(subject, body, timeout=TRY_S, headers=headers)
    status = int((msg.headers or {}).get(H.STATUS, "0"))
    if status != 200:
        raise error_from_wire(status, msg.data)
    return msgspec.json.decode(msg.data, type=reply_type)


async def completion(nc: Client, run_id: str, *, agent: bool) -> dict[str, Any]:
    headers = {H.RUN_ID: run_id, H.TIMEOUT_MS: "20000"}
    if agent:
        headers[H.AGENT] = "budgeted"
    body = {"model": "default", "messages": [{"role": "user", "content": "cluster"}]}
    reply: dict[str, Any] = await rpc(nc, CHAT_COMPLETIONS, body, dict, headers=headers)
    return reply


async def until_ok(what: str, attempt: Callable[[], Awaitable[Any]], errors: list[str]) -> tuple[Any, float]:
    """Retry ``attempt`` until it succeeds; its result and how long that took. Every failure is recorded."""
    start = time.monotonic()
    while True:
        try:
            return await attempt(), time.monotonic() - start
        except Exception as exc:
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            if time.monotonic() - start > RECOVER_WITHIN_S:
                raise AssertionError(f"{what} did not work within {RECOVER_WITHIN_S}s: {errors[-3:]}") from exc
            await asyncio.sleep(0.1)


async def load(wire: Wire, stop: asyncio.Event, sent: list[Seen]) -> None:
    """``LOAD_CONCURRENCY`` requests in flight until ``stop``; every third streams."""
    slots = asyncio.Semaphore(LOAD_CONCURRENCY)
    words = " ".join(f"w{i}" for i in range(10))
    bodies: list[dict[str, Any]] = [
        {"model": "default", "messages": [{"role": "user", "content": "load"}]},
        {"model": "default", "messages": [{"role": "user", "content": "load"}]},
        {"model": "default", "stream": True, "messages": [{"role": "user", "content": words}]},
    ]
    headers = {H.TIMEOUT_MS: str(LOAD_TIMEOUT_MS), H.KEEPALIVE: "1"}

    async def one(body: dict[str, Any]) -> None:
        try:
            seen = await wire.send(body, headers)
            sent.append(seen)
            end = seen.sent_at + LOAD_TIMEOUT_MS / 1000 + 3
            while not seen.finals() and time.monotonic() < end:
                heard = seen.messages[-1][0] if seen.messages else seen.sent_at
                if time.monotonic() - heard >= MAX_SILENCE_S:
                    return  # lost (e.g. with the node its connection was on): a contract client gives up
                await asyncio.sleep(0.05)
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    while not stop.is_set():
        await slots.acquire()
        tasks.append(asyncio.create_task(one(bodies[len(tasks) % 3])))
    await asyncio.gather(*tasks)


async def all_replicated(nc: Client, streams: list[str]) -> dict[str, tuple[int, str | None, int]]:
    js = nc.jetstream()
    return {s: await replica_status(js, s) for s in streams}


async def wait_replicated(nc: Client, streams: list[str], *, current: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    status: dict[str, tuple[int, str | None, int]] = {}
    while time.monotonic() < deadline:
        try:
            status = await all_replicated(nc, streams)
            if all(r == 3 and leader and cur >= current for r, leader, cur in status.values()):
                return
        except Exception as exc:
            status = {"error": (0, str(exc), 0)}
        await asyncio.sleep(0.2)
    raise AssertionError(f"streams not at 3 replicas with a leader and {current} current: {status}")


def test_every_stream_and_bucket_is_created_with_three_replicas(stack: Stack, cluster: EmbeddedCluster) -> None:
    async def scenario() -> None:
        nc = await connect(cluster)
        await completion(nc, "warm-up", agent=True)  # the budgets bucket is made on first use
        await wait_replicated(nc, STREAMS, current=3)
        status = await all_replicated(nc, STREAMS)
        assert {s: r for s, (r, _, _) in status.items()} == dict.fromkeys(STREAMS, 3)
        await nc.close()

    run(scenario())


@pytest.mark.slow
def test_config_pins_budgets_and_audit_keep_working_while_each_node_in_turn_is_killed(
    stack: Stack, cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELBUS_JS_REPLICAS", "3")  # this process reads budgets like a router of the stack

    async def scenario() -> None:
        nc = await connect(cluster)
        budgets = Budgets(nc)
        await completion(nc, "warm-up", agent=True)
        await wait_replicated(nc, STREAMS, current=3)
        first = (await rpc(nc, CONFIG_HISTORY, HistoryQuery(limit=1), HistoryList)).items[0].revision
        figures: list[str] = []
        wire = await Wire.open(cluster.url)
        stop_load = asyncio.Event()
        sent: list[Seen] = []
        loader = asyncio.create_task(load(wire, stop_load, sent))
        origin = time.monotonic()
        events: list[str] = []
        for node in range(len(cluster.nodes)):
            errors: list[str] = []
            cluster.kill(node)
            killed = time.monotonic()
            events.append(f"node {node} killed +{killed - origin:.3f}s")
            doc = json.dumps(
                {
                    "apiVersion": "modelbus.dev/v1",
                    "kind": "ModelEndpoint",
                    "metadata": {"name": f"after-kill-{node}"},
                    "spec": {"provider": "mock", "default_model": "m"},
                }
            )
            request = ApplyRequest(documents=doc, actor="test")
            applied, t_apply = await until_ok(
                "apply", functools.partial(rpc, nc, CONFIG_APPLY, request, ApplyResult), errors
            )
            history, t_history = await until_ok(
                "history", lambda: rpc(nc, CONFIG_HISTORY, HistoryQuery(limit=500), HistoryList), errors
            )
            revisions = [entry.revision for entry in history.items]
            assert revisions[0] == applied.revision and first in revisions  # nothing lost
            run_id = f"run-after-kill-{node}"
            _, t_pin = await until_ok("pinned request", functools.partial(completion, nc, run_id, agent=True), errors)

            async def charged(run_id: str = run_id) -> int:
                used = (await budgets.entry(POLICY + ":max_tokens_per_run", run_id)).spent_tokens  # a new run
                assert used > 0, "the charge is not recorded yet"
                return used

            _, t_budget = await until_ok("budget charge", charged, errors)
            report, t_audit = await until_ok("audit verify", lambda: rpc(nc, AUDIT_VERIFY, None, AuditReport), errors)
            assert report.ok, report
            # With one node down: still 3 replicas configured, a leader, and 2 of them current.
            await wait_replicated(nc, STREAMS, current=2, timeout_s=RECOVER_WITHIN_S)

            async def load_ok(killed: float = killed) -> float:
                """Seconds from the kill to the first OK answer of a request sent after it."""
                answered = [s.finals()[0][0] for s in sent if s.sent_at > killed and s.status() == "200"]
                assert answered, "no request sent since the kill was answered OK"
                return min(answered) - killed

            t_load, _ = await until_ok("load", load_ok, errors)
            figures.append(
                f"node {node} killed: apply {t_apply:.2f}s, history {t_history:.2f}s, pinned {t_pin:.2f}s, "
                f"budget {t_budget:.2f}s, audit {t_audit:.2f}s, load OK {t_load:.2f}s after the kill "
                f"(total {time.monotonic() - killed:.2f}s, "
                f"{len(errors)} failed attempts{': ' + errors[0] if errors else ''})"
            )

            await asyncio.to_thread(cluster.restart, node)
            events.append(f"node {node} restarted +{time.monotonic() - origin:.3f}s")
            await wait_replicated(nc, STREAMS, current=3)
        stop_load.set()
        await loader
        await asyncio.sleep(1.5)  # a late second answer would arrive now
        await wire.close()
        counts = verdict(sent, LOAD_TIMEOUT_MS / 1000)
        figures.append(f"load: {counts}")
        print("\n" + "\n".join(figures))
        await nc.close()
        assert counts["sent"] > 100, counts
        assert (counts["never"], counts["duplicated"]) == (0, 0), (counts, events, duplicates(sent, origin))

    run(scenario())
