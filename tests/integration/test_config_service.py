"""The config service end to end: every format applied and routed, atomic applies,
history and rollback, hot swap across three routers, run pinning and read-your-writes.

Foreign formats are routed to llm-katan (a real OpenAI-compatible server); the
AuroraSOC and Aegis BYO settings come from the environment at boot.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import nats
import pytest

from shared import headers as H
from shared.admin import ApplyRequest, ApplyResult, ResourceList, ResourceQuery, RouterList, WaitRequest
from shared.client import ModelbusClient
from shared.errors import ModelbusError, error_from_wire
from shared.natsserver import EmbeddedNats, die_with_parent
from shared.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECT,
    CONFIG_APPLY,
    CONFIG_GET,
    CONFIG_LOG,
    CONFIG_RESOURCES,
    CONFIG_ROUTERS,
    CONFIG_STREAM,
    CONFIG_WAIT,
)
from tests.conftest import ROOT, Katan, Stack, run, start_katan, start_stack, stop_process

HELLO = [{"role": "user", "content": "hello config"}]


@pytest.fixture(scope="module")
def katan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Katan]:
    k = start_katan(tmp_path_factory.mktemp("katan"))
    yield k
    stop_process(k.proc)


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, katan: Katan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        # AuroraSOC boot settings: a vLLM backend (llm-katan plays it).
        "LLM_BACKEND": "vllm",
        "LLM_VLLM_BASE_URL": f"{katan.base_url}/v1",
        "LLM_VLLM_MODEL": "echo",
        "LLM_VLLM_ORCHESTRATOR_MODEL": "echo",
        "LLM_VLLM_API_KEY": "vllm-key",  # llm-katan wants an Authorization header
        "KATAN_KEY": "katan-key-value",
        "ORLOJ_SECRET_katan_key": "orloj-katan-key",  # Orloj's env convention for Secret 'katan-key'
        # The Aegis BYO contract, server-wide.
        "ANTHROPIC_BASE_URL": f"{katan.base_url}/v1",
        "ANTHROPIC_AUTH_TOKEN": "byo-token-123",
        "ANTHROPIC_DEFAULT_MODEL": "echo",
        "ANTHROPIC_DEFAULT_FAST_MODEL": "echo",
        "API_TIMEOUT_MS": "15000",
    }
    s = start_stack(nats_server.url, None, tmp_path_factory.mktemp("home"), env=env, extra_args=["--routers", "3"])
    try:
        yield s
    finally:
        stop_process(s.proc)


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


def apply(url: str, documents: str | list[dict[str, Any]], *, dry_run: bool = False) -> ApplyResult:
    text = documents if isinstance(documents, str) else "\n---\n".join(json.dumps(d) for d in documents)
    result: ApplyResult = run(
        _admin(url, CONFIG_APPLY, ApplyRequest(documents=text, actor="test", dry_run=dry_run), ApplyResult)
    )
    return result


def resources(url: str, kind: str | None = None, name: str | None = None) -> ResourceList:
    result: ResourceList = run(_admin(url, CONFIG_RESOURCES, ResourceQuery(kind=kind, name=name), ResourceList))
    return result


def wait_routers(url: str, revision: int) -> RouterList:
    result: RouterList = run(_admin(url, CONFIG_WAIT, WaitRequest(revision=revision, timeout_ms=10_000), RouterList))
    return result


async def _ask(url: str, model: str | None = None, headers: dict[str, str] | None = None, n: int = 1) -> list[Any]:
    client = await ModelbusClient.connect(url)
    body: dict[str, Any] = {"messages": HELLO}
    if model:
        body["model"] = model
    try:
        return list(await asyncio.gather(*(client.request_raw(body, headers=headers, timeout=20) for _ in range(n))))
    finally:
        await client.close()


def ask(url: str, model: str | None = None, headers: dict[str, str] | None = None) -> Any:
    return run(_ask(url, model, headers))[0]


def native(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def mock_alias(name: str, model: str) -> dict[str, Any]:
    return native("ModelAlias", name, {"targets": [{"endpoint": "mock", "model": model}]})


# ---------------------------------------------------------------- formats


def test_aurorasoc_environment_becomes_a_routable_endpoint_and_orchestrator_alias(stack: Stack) -> None:
    reply = ask(stack.url, "orchestrator")
    assert reply.status == 200, reply.body
    assert reply.headers[H.ENDPOINT] == "vllm"
    endpoint = resources(stack.url, "ModelEndpoint", "vllm").items[0]
    assert endpoint.source == "env:aurorasoc"
    assert endpoint.spec["provider"] == "openai-compatible"


def test_aegis_byo_environment_becomes_endpoint_byo_with_default_and_fast(stack: Stack) -> None:
    for alias in ("default", "fast"):
        reply = ask(stack.url, alias)
        assert reply.status == 200, reply.body
        assert reply.headers[H.ENDPOINT] == "byo"
    byo = resources(stack.url, "ModelEndpoint", "byo").items[0]
    assert byo.spec["timeout_ms"] == 15000
    assert byo.spec["auth"] == {"secretRef": "env:ANTHROPIC_AUTH_TOKEN"}
    assert "byo-token-123" not in json.dumps(msgspec.to_builtins(resources(stack.url)))


def test_orloj_manifests_are_applied_as_is_and_routed_by_agent(stack: Stack, katan: Katan) -> None:
    manifests = f"""
apiVersion: orloj.dev/v1
kind: ModelEndpoint
metadata: {{name: katan-openai, namespace: research}}
spec:
  provider: openai-compatible
  base_url: {katan.base_url}/v1
  default_model: echo
  allowPrivate: true
  auth: {{secretRef: katan-key}}
---
apiVersion: orloj.dev/v1
kind: Agent
metadata: {{name: research-agent, namespace: research}}
spec:
  model_ref: katan-openai
  fallback_model_refs: [mock]
  prompt: You are a research assistant.
  tools: [web-search]
  limits: {{max_steps: 6, timeout: 30s}}
---
apiVersion: orloj.dev/v1
kind: AgentPolicy
metadata: {{name: cost-policy, namespace: research}}
spec:
  allowed_models: [echo, mock-1]
  max_tokens_per_run: 50000
"""
    result = apply(stack.url, manifests)
    assert {(c.kind, c.name) for c in result.changes} >= {
        ("ModelEndpoint", "research/katan-openai"),
        ("Agent", "research/research-agent"),
        ("AgentPolicy", "research/cost-policy"),
    }
    wait_routers(stack.url, result.revision)
    reply = ask(stack.url, headers={H.AGENT: "research/research-agent"})
    assert reply.status == 200, reply.body
    assert reply.headers[H.ENDPOINT] == "research/katan-openai"
    agent = resources(stack.url, "Agent", "research/research-agent").items[0]
    assert agent.source == "orloj.dev/v1"
    assert "prompt" not in agent.spec  # accepted, reported, not kept as routing config


def test_aegis_node_config_maps_providers_and_shared_aliases(stack: Stack, katan: Katan) -> None:
    node_config = f"""
apiVersion: 100monkeys.ai/v1
kind: NodeConfig
metadata: {{name: node-1}}
spec:
  llm_providers:
    - name: katan
      type: openai
      base_url: {katan.base_url}/v1
      api_key: env:KATAN_KEY
      models:
        - {{alias: aegis-fast, model: echo, capabilities: [code], context_window: 4096}}
    - name: local
      type: ollama
      endpoint: http://127.0.0.1:9
      models:
        - {{alias: aegis-fast, model: phi3:mini, capabilities: [code, reasoning], context_window: 4096}}
  llm_selection:
    strategy: failover
    default_provider: katan
    max_retries: 3
    retry_delay_ms: 1000
"""
    result = apply(stack.url, node_config)
    alias = resources(stack.url, "ModelAlias", "aegis-fast").items[0]
    assert [t["endpoint"] for t in alias.spec["targets"]] == ["katan", "local"]
    assert alias.spec["targets"][0]["context_window"] == 4096
    assert resources(stack.url, "ModelEndpoint", "katan").items[0].spec["provider"] == "openai-compatible"
    assert resources(stack.url, "RoutingDefaults").items[0].spec["default_provider"] == "katan"
    wait_routers(stack.url, result.revision)
    reply = ask(stack.url, "aegis-fast")
    assert reply.status == 200, reply.body
    assert reply.headers[H.ENDPOINT] == "katan"


def test_aegis_config_json_default_session_env_is_applied_and_routed(stack: Stack, katan: Katan) -> None:
    token = "session-token-7f3a9c"
    doc = {
        "defaultSessionEnv": {
            "ANTHROPIC_BASE_URL": f"{katan.base_url}/v1",
            "ANTHROPIC_AUTH_TOKEN": token,
            "ANTHROPIC_DEFAULT_MODEL": "echo",
            "ANTHROPIC_DEFAULT_FAST_MODEL": "echo",
            "API_TIMEOUT_MS": "20000",
        },
        "port": 9100,  # an Aegis server setting: reported as ignored, not an error
    }
    result = apply(stack.url, json.dumps(doc))
    assert result.secrets == ["byo/default-session"]
    wait_routers(stack.url, result.revision)
    byo = resources(stack.url, "ModelEndpoint", "byo").items[0]
    assert byo.source == "aegis-byo"
    assert byo.spec["auth"] == {"secretRef": "secret:byo/default-session"}
    assert byo.spec["timeout_ms"] == 20000
    assert token not in json.dumps(msgspec.to_builtins(resources(stack.url)))
    reply = ask(stack.url, "fast")
    assert reply.status == 200, reply.body
    assert reply.headers[H.ENDPOINT] == "byo"
    assert token not in stack.log()


def test_aegis_default_session_env_rejects_keys_outside_the_allowlist(stack: Stack) -> None:
    doc = json.dumps({"defaultSessionEnv": {"ANTHROPIC_BASE_URL": "https://x.example/v1", "OPENAI_API_KEY": "sk-1"}})
    with pytest.raises(ModelbusError) as caught:
        apply(stack.url, doc)
    assert caught.value.http_status == 400
    assert "OPENAI_API_KEY" in caught.value.message
    assert "sk-1" not in caught.value.message


# ---------------------------------------------------------------- validation and atomicity


def test_a_multi_document_apply_with_one_bad_document_changes_nothing(stack: Stack) -> None:
    before = resources(stack.url)
    docs = [
        native("ModelEndpoint", "atomic-ok", {"provider": "mock", "default_model": "m"}),
        mock_alias("atomic-alias", "m"),
        native("ModelEndpoint", "atomic-bad", {"provider": "openai", "base_url": "not a url"}),
    ]
    with pytest.raises(ModelbusError, match=r"doc 3 \(ModelEndpoint atomic-bad\): spec.base_url: not a URL"):
        apply(stack.url, docs)
    after = resources(stack.url)
    assert after.revision == before.revision
    assert after.items == before.items


def test_unknown_kinds_and_fields_are_errors_not_dropped(stack: Stack) -> None:
    with pytest.raises(ModelbusError, match=r"spec.temprature: unknown field"):
        apply(stack.url, [mock_alias("x", "m") | {"spec": {"targets": [{"endpoint": "mock"}], "temprature": 1}}])
    with pytest.raises(ModelbusError, match=r"'Tool' \(orloj.dev/v1\) is not routing configuration"):
        apply(stack.url, "apiVersion: orloj.dev/v1\nkind: Tool\nmetadata: {name: t}\nspec: {type: http}\n")
    with pytest.raises(ModelbusError, match="unknown kind 'Gateway'"):
        apply(stack.url, [native("Gateway", "g", {})])


def test_a_reference_to_a_missing_endpoint_is_rejected(stack: Stack) -> None:
    with pytest.raises(
        ModelbusError, match=r"ModelAlias dangling: spec.targets\[0\].endpoint: no endpoint named 'nope'"
    ):
        apply(stack.url, [native("ModelAlias", "dangling", {"targets": [{"endpoint": "nope", "model": "m"}]})])


def test_dry_run_reports_the_changes_and_stores_nothing(stack: Stack) -> None:
    before = resources(stack.url).revision
    result = apply(stack.url, [mock_alias("dry-alias", "m")], dry_run=True)
    assert result.dry_run and [c.op for c in result.changes] == ["create"]
    assert resources(stack.url).revision == before
    with pytest.raises(ModelbusError, match="does not exist"):
        resources(stack.url, "ModelAlias", "dry-alias")


def test_applying_the_same_documents_twice_makes_no_new_revision(stack: Stack) -> None:
    first = apply(stack.url, [mock_alias("idempotent", "m")])
    again = apply(stack.url, [mock_alias("idempotent", "m")])
    assert again.changes == [] and again.revision == first.revision


# ---------------------------------------------------------------- hot swap


def test_three_routers_take_200_rapid_changes_without_a_failed_request(stack: Stack) -> None:
    async def scenario() -> tuple[list[int], int]:
        client = await ModelbusClient.connect(stack.url)
        statuses: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                reply = await client.request_raw({"model": "hot", "messages": HELLO}, timeout=20)
                statuses.append(reply.status)

        last = 0
        try:
            first = await _admin(
                stack.url,
                CONFIG_APPLY,
                ApplyRequest(documents=json.dumps(mock_alias("hot", "hot-0")), actor="test"),
                ApplyResult,
            )
            await _admin(stack.url, CONFIG_WAIT, WaitRequest(revision=first.revision), RouterList)
            workers = [asyncio.create_task(traffic()) for _ in range(8)]
            for i in range(1, 201):
                result = await _admin(
                    stack.url,
                    CONFIG_APPLY,
                    ApplyRequest(documents=json.dumps(mock_alias("hot", f"hot-{i}")), actor="test"),
                    ApplyResult,
                )
                last = result.revision
            stop.set()
            await asyncio.gather(*workers)
        finally:
            await client.close()
        return statuses, last

    statuses, last = run(scenario())
    assert len(statuses) > 200
    assert set(statuses) == {200}
    routers = wait_routers(stack.url, last).items
    assert len(routers) == 3
    assert {r.revision for r in routers} == {last}
    assert len({r.config_hash for r in routers}) == 1  # identical tables
    reply = ask(stack.url, "hot")
    assert reply.headers[H.MODEL] == "hot-200"


def test_wait_returns_only_once_every_router_serves_the_new_revision(stack: Stack) -> None:
    for i in range(5):
        result = apply(stack.url, [mock_alias("ryw", f"ryw-{i}")])
        routers = wait_routers(stack.url, result.revision).items
        assert all(r.revision >= result.revision for r in routers)
        replies = run(_ask(stack.url, "ryw", n=24))
        assert {r.headers[H.MODEL] for r in replies} == {f"ryw-{i}"}


def test_a_pinned_run_keeps_its_revision_on_every_router(stack: Stack) -> None:
    result = apply(stack.url, [mock_alias("pinned", "before")])
    wait_routers(stack.url, result.revision)
    run_headers = {H.RUN_ID: "run-42/agent-step"}
    assert ask(stack.url, "pinned", run_headers).headers[H.MODEL] == "before"
    result = apply(stack.url, [mock_alias("pinned", "after")])
    wait_routers(stack.url, result.revision)
    replies = run(_ask(stack.url, "pinned", run_headers, n=30))
    assert {r.headers[H.MODEL] for r in replies} == {"before"}
    assert len({r.headers[H.ROUTER] for r in replies}) >= 2  # served by several routers
    assert ask(stack.url, "pinned", {H.RUN_ID: "a-new-run"}).headers[H.MODEL] == "after"
    assert ask(stack.url, "pinned").headers[H.MODEL] == "after"


def test_a_router_that_joins_late_converges_on_the_current_revision(stack: Stack) -> None:
    head = apply(stack.url, [mock_alias("late", "late-1")]).revision
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.router"],
        cwd=ROOT,
        env={**_env(), "NATS_URL": stack.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + 30
        routers: list[Any] = []
        while time.monotonic() < deadline:
            routers = run(_admin(stack.url, CONFIG_ROUTERS, None, RouterList)).items
            if len(routers) == 4:
                break
            time.sleep(0.1)
        assert len(routers) == 4
        assert {r.revision for r in routers} == {head}
        assert len({r.config_hash for r in routers}) == 1
    finally:
        stop_process(proc)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


BAD_REPLIES = [CONFIG_LOG, AUDIT_SUBJECT, f"$JS.API.STREAM.PURGE.{AUDIT_STREAM}"]


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_a_reply_subject_outside_an_inbox_gets_no_answer_and_writes_nothing(stack: Stack, reply: str) -> None:
    """Without identities nothing but the service stops this: answered, ``config.get`` would store the
    routing table as a forged revision on the config log, or send a purge to the audit stream."""
    tag = BAD_REPLIES.index(reply)
    injected = ApplyRequest(documents=json.dumps(mock_alias(f"injected-{tag}", "m")), actor="mallory")
    honest = ApplyRequest(documents=json.dumps(mock_alias(f"honest-{tag}", "m")), actor="test")

    async def attack() -> tuple[int, int, ApplyResult, int, int]:
        nc = await nats.connect(stack.url)
        try:
            js = nc.jetstream()
            before = [(await js.stream_info(s)).state.last_seq for s in (CONFIG_STREAM, AUDIT_STREAM)]
            await nc.publish(CONFIG_GET, b"", reply=reply)
            await nc.publish(CONFIG_APPLY, msgspec.json.encode(injected), reply=reply)
            # Handled after the injected ones (which, unguarded, would reach the commit lock first).
            msg = await nc.request(CONFIG_APPLY, msgspec.json.encode(honest), timeout=30)
            after = [(await js.stream_info(s)).state.last_seq for s in (CONFIG_STREAM, AUDIT_STREAM)]
        finally:
            await nc.close()
        return before[0], before[1], msgspec.json.decode(msg.data, type=ApplyResult), after[0], after[1]

    config_before, audit_before, result, config_after, audit_after = run(attack())
    assert result.revision == config_before + 1
    assert (config_after, audit_after) == (config_before + 1, audit_before + 1)
    assert f"injected-{tag}" not in {r.name for r in resources(stack.url, "ModelAlias").items}
