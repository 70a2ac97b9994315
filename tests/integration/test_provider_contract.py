"""The behaviour every provider shares: one row per provider, every case run on every row.

Each row (:data:`ROWS`) says how that provider's endpoints point at a real
upstream: llm-katan, a third-party server speaking OpenAI, Azure, Anthropic,
Gemini/Vertex and Bedrock, for every provider it speaks, and the Ollama fake
(:mod:`tests.fakes.ollama`, built from Ollama's API docs) for ``ollama``, which
llm-katan does not speak. Each upstream plays one role per process: ``ok``,
``failing`` (every answer a 500), ``limited`` (every answer a 429), ``gateway``
(every answer a 504 gateway timeout) and ``slow`` (answers only after the
endpoint's ``timeout_ms`` has passed). They start once per module, behind one
stack; every request goes through client → router → provider worker.

Adding a provider means adding one row here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest

from shared import headers as H
from shared.errors import ModelbusError
from shared.natsserver import EmbeddedNats
from tests.conftest import Stack, run, start_katan, start_stack, stop_process
from tests.fakes.ollama import FakeOllama
from tests.integration.provider_harness import ONE_ATTEMPT, complete, katan_fleet, render_documents, stream, text

Role = Literal["ok", "failing", "limited", "gateway", "slow"]
ROLES: tuple[Role, ...] = ("ok", "failing", "limited", "gateway", "slow")
Upstream = Literal["llm-katan", "ollama-fake"]

KEY = {"secretRef": "env:CONTRACT_KEY"}
AWS_CREDS = {"secretRef": "env:CONTRACT_AWS"}
ENV = {
    "CONTRACT_KEY": "contract-key-31337",
    "CONTRACT_AWS": json.dumps({"access_key_id": "AKIACONTRACT00000001", "secret_access_key": "contract-secret"}),
}
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
HELLO = [{"role": "user", "content": "hello contract"}]
SLOW_TIMEOUT_MS = 300
"""The ``slow`` endpoints' timeout; their upstreams answer after 2 s or more."""


@dataclass(frozen=True)
class Row:
    """One provider: how its endpoint reaches an upstream, and what that upstream answers."""

    provider: str
    upstream: Upstream
    spec: Callable[[str], dict[str, Any]]
    """The endpoint spec (without ``provider``) for an upstream at this base URL."""
    model: str
    """The model the answer names."""
    retry_after: str | None = None
    """The ``Retry-After`` the upstream's 429 carries, if it sends one."""


ROWS = [
    Row("openai", "llm-katan", lambda base: {"base_url": f"{base}/v1", "default_model": "echo", "auth": KEY}, "echo"),
    Row(
        "openai-compatible",
        "llm-katan",
        lambda base: {"base_url": f"{base}/v1", "default_model": "echo", "auth": KEY},
        "echo",
    ),
    Row(
        "azure-openai",
        "llm-katan",
        lambda base: {
            "base_url": base,
            "default_model": "contract-deploy",
            "options": {"api_version": "2024-10-21"},
            "auth": KEY,
        },
        "contract-deploy",  # llm-katan answers as the deployment in the URL
    ),
    Row(
        "anthropic", "llm-katan", lambda base: {"base_url": f"{base}/v1", "default_model": "echo", "auth": KEY}, "echo"
    ),
    Row(
        "gemini",
        "llm-katan",
        lambda base: {
            "base_url": base,
            "default_model": "echo",
            "options": {"credential": "access_token"},
            "auth": KEY,
        },
        "echo",
    ),
    Row(
        "bedrock",
        "llm-katan",
        lambda base: {
            "base_url": base,
            "default_model": BEDROCK_MODEL,
            "options": {"region": "us-east-1"},
            "auth": AWS_CREDS,
        },
        BEDROCK_MODEL,
    ),
    Row(
        "ollama",
        "ollama-fake",
        lambda base: {"base_url": base, "default_model": "llama3.2"},
        "llama3.2",
        retry_after="7",
    ),
]
PROVIDERS = [pytest.param(row, id=row.provider) for row in ROWS]


def endpoint_name(row: Row, role: Role) -> str:
    return f"{row.provider}-{role}"


# ---------------------------------------------------------------- upstreams, started once


def _prime(base_url: str) -> None:
    """Spend the one good answer llm-katan's ``--rate-limit-after 1`` and ``--timeout-after 1``
    allow, so every request of the module meets the failure."""
    body = {"model": "echo", "messages": HELLO}
    headers = {"authorization": f"Bearer {ENV['CONTRACT_KEY']}"}  # llm-katan wants one, of any value
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text


def _katans(stack: ExitStack, tmp_path_factory: pytest.TempPathFactory) -> dict[Role, str]:
    roles = ("ok", "failing", "limited", "slow")  # katan_fleet's "slow" answers 504: our "gateway"
    fleet = stack.enter_context(katan_fleet(tmp_path_factory, [], roles=roles))
    _prime(fleet["limited"].base_url)
    _prime(fleet["slow"].base_url)
    slow = start_katan(tmp_path_factory.mktemp("katan-latency"), "--latency-ms", "2000", "--max-concurrent", "32")
    stack.callback(stop_process, slow.proc)
    return {
        "ok": fleet["ok"].base_url,
        "failing": fleet["failing"].base_url,
        "limited": fleet["limited"].base_url,
        "gateway": fleet["slow"].base_url,
        "slow": slow.base_url,
    }


def _ollama_fakes(stack: ExitStack) -> dict[Role, str]:
    fakes: dict[Role, FakeOllama] = {
        "ok": FakeOllama(),
        "failing": FakeOllama(fail_status=500),
        "limited": FakeOllama(fail_status=429, retry_after="7"),
        "gateway": FakeOllama(fail_status=504),
        "slow": FakeOllama(latency_s=3.0),
    }
    urls: dict[Role, str] = {}
    for role, fake in fakes.items():
        fake.start()
        stack.callback(fake.stop)
        urls[role] = fake.base_url
    return urls


STARTERS: dict[Upstream, Callable[[ExitStack, pytest.TempPathFactory], dict[Role, str]]] = {
    "llm-katan": _katans,
    "ollama-fake": lambda stack, _: _ollama_fakes(stack),
}


def _config(urls: dict[Upstream, dict[Role, str]]) -> str:
    docs: list[dict[str, Any]] = []
    for row in ROWS:
        for role in ROLES:
            spec = {
                "provider": row.provider,
                "allowPrivate": True,  # every upstream listens on loopback
                "timeout_ms": SLOW_TIMEOUT_MS if role == "slow" else 10_000,
                **row.spec(urls[row.upstream][role]),
            }
            docs.append({"kind": "ModelEndpoint", "metadata": {"name": endpoint_name(row, role)}, "spec": spec})
    first = endpoint_name(ROWS[0], "ok")
    docs += [{"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": first}]}}]
    return render_documents([*docs, ONE_ATTEMPT])


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with ExitStack() as upstreams:
        kinds = dict.fromkeys(row.upstream for row in ROWS)
        urls = {kind: STARTERS[kind](upstreams, tmp_path_factory) for kind in kinds}
        tmp = tmp_path_factory.mktemp("contract")
        config = tmp / "config.yaml"
        config.write_text(_config(urls))
        s = start_stack(nats_server.url, config, tmp / "home", env=ENV)
        try:
            yield s
        finally:
            stop_process(s.proc)


def _error(stack: Stack, row: Row, role: Role) -> tuple[int, dict[str, Any], dict[str, str]]:
    status, headers, body = run(complete(stack.url, {"model": endpoint_name(row, role), "messages": HELLO}))
    assert "error" in body, body
    return status, body["error"], headers


# ---------------------------------------------------------------- the contract


@pytest.mark.parametrize("row", PROVIDERS)
def test_a_completion_comes_back_openai_shaped_with_usage(stack: Stack, row: Row) -> None:
    status, headers, body = run(complete(stack.url, {"model": endpoint_name(row, "ok"), "messages": HELLO}))
    assert status == 200, body
    assert headers[H.PROVIDER] == row.provider
    assert body["object"] == "chat.completion"
    assert body["id"] and isinstance(body["created"], int)
    assert body["model"] == row.model
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert "hello contract" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


@pytest.mark.parametrize("row", PROVIDERS)
def test_a_stream_yields_text_deltas_a_finish_reason_and_a_final_usage_chunk(stack: Stack, row: Row) -> None:
    request = {
        "model": endpoint_name(row, "ok"),
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = run(stream(stack.url, request))
    deltas = [c.delta.content for chunk in chunks for c in chunk.choices if c.delta.content]
    assert len(deltas) > 1, deltas  # piece by piece, not one buffered answer
    assert "hello contract" in text(chunks)
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    assert len({chunk.id for chunk in chunks}) == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


@pytest.mark.parametrize("row", PROVIDERS)
def test_an_upstream_500_is_a_retryable_error_for_completions_and_streams(stack: Stack, row: Row) -> None:
    status, error, _ = _error(stack, row, "failing")
    assert status == 500, error
    assert error["retryable"] is True
    with pytest.raises(ModelbusError) as caught:
        run(stream(stack.url, {"model": endpoint_name(row, "failing"), "messages": HELLO, "stream": True}))
    assert caught.value.http_status == 500
    assert caught.value.retryable is True


@pytest.mark.parametrize("row", PROVIDERS)
def test_an_upstream_429_is_a_retryable_rate_limit_with_the_upstreams_retry_hint(stack: Stack, row: Row) -> None:
    status, error, headers = _error(stack, row, "limited")
    assert status == 429, error
    assert error["type"] == "rate_limit_error"
    assert error["retryable"] is True
    assert headers.get(H.RETRY_AFTER) == row.retry_after  # the upstream's hint, and none made up


@pytest.mark.parametrize("row", PROVIDERS)
def test_an_upstream_gateway_timeout_is_a_retryable_504(stack: Stack, row: Row) -> None:
    status, error, _ = _error(stack, row, "gateway")
    assert status == 504, error
    assert error["type"] == "timeout_error"
    assert error["retryable"] is True


@pytest.mark.parametrize("row", PROVIDERS)
def test_an_upstream_slower_than_the_endpoint_timeout_is_a_retryable_504(stack: Stack, row: Row) -> None:
    status, error, _ = _error(stack, row, "slow")
    assert status == 504, error
    assert error["type"] == "timeout_error"
    assert error["retryable"] is True
