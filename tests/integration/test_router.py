"""Router behaviour over real processes and two routers: strategies, fallback, retries,
Retry-After, deadlines, shared breakers, policy, budgets, sensitivity, filters, BYO,
streaming failover and the health view."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import headers as H
from shared.admin import ApplyRequest, ApplyResult, RouterList, WaitRequest
from shared.client import ModelbusClient, Reply
from shared.natsserver import EmbeddedNats
from shared.subjects import CHAT_COMPLETIONS, CONFIG_APPLY, CONFIG_ROUTERS, CONFIG_WAIT
from tests.conftest import Stack, run, start_stack, stop_process
from tests.integration.test_config_service import _admin

CONFIG = Path(__file__).with_name("configs") / "router.yaml"
HELLO = [{"role": "user", "content": "hello bus"}]


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(nats_server.url, CONFIG, tmp_path_factory.mktemp("home"), extra_args=["--routers", "2"])
    try:
        yield s
    finally:
        stop_process(s.proc)


async def _many(
    url: str,
    n: int,
    model: str | None,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    sequential: bool = False,
) -> list[Reply]:
    client = await ModelbusClient.connect(url)
    request = body or {"messages": HELLO}
    if model:
        request = {**request, "model": model}
    try:
        if sequential:
            return [await client.request_raw(request, headers=headers, timeout=30) for _ in range(n)]
        return list(await asyncio.gather(*(client.request_raw(request, headers=headers, timeout=30) for _ in range(n))))
    finally:
        await client.close()


def ask(url: str, model: str | None, headers: dict[str, str] | None = None, **body: Any) -> Reply:
    return run(_many(url, 1, model, headers, {"messages": HELLO, **body} if body else None))[0]


def error(reply: Reply) -> dict[str, Any]:
    return json.loads(reply.body)["error"]  # type: ignore[no-any-return]


async def _stream_raw(url: str, request: dict[str, Any]) -> list[tuple[dict[str, str], bytes]]:
    client = await ModelbusClient.connect(url)
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish(CHAT_COMPLETIONS, json.dumps(request).encode(), reply=inbox)
    out: list[tuple[dict[str, str], bytes]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=20)
            out.append((dict(msg.headers or {}), msg.data))
            if (msg.headers or {}).get(H.STREAM) == H.STREAM_END:
                return out
    finally:
        await client.close()


# ---------------------------------------------------------------- strategies


def test_weighted_alias_splits_traffic_in_proportion_to_weights(stack: Stack) -> None:
    replies = run(_many(stack.url, 400, "weighted"))
    counts = Counter(r.headers[H.ENDPOINT] for r in replies)
    share_b = counts["ok-b"] / 400
    assert 0.66 <= share_b <= 0.84, counts  # expected 0.75; 4 standard deviations for n=400 is about 0.087


def test_round_robin_alias_rotates_between_targets(stack: Stack) -> None:
    replies = run(_many(stack.url, 60, "rr", sequential=True))
    counts = Counter(r.headers[H.ENDPOINT] for r in replies)
    assert 20 <= counts["ok-a"] <= 40 and counts["ok-a"] + counts["ok-b"] == 60, counts


# ---------------------------------------------------------------- fallback and retries


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retryable_status_falls_back_to_the_next_target(stack: Stack, status: int) -> None:
    reply = ask(stack.url, f"status-{status}")
    assert reply.status == 200, reply.body
    assert reply.headers[H.ENDPOINT] == "ok-a"
    assert reply.headers[H.ATTEMPTS] == "2"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_non_retryable_status_fails_at_once_without_fallback(stack: Stack, status: int) -> None:
    reply = ask(stack.url, f"status-{status}")
    assert reply.status == status
    assert reply.headers[H.ATTEMPTS] == "1"
    assert error(reply)["retryable"] is False


def test_retry_after_of_the_second_failed_attempt_is_honoured(stack: Stack) -> None:
    started = time.monotonic()
    reply = ask(stack.url, "flaky-retry")
    elapsed = time.monotonic() - started
    assert reply.status == 200, reply.body
    assert reply.headers[H.ATTEMPTS] == "3"
    assert elapsed >= 0.2 + 1.2  # the first hint, then the second (larger) one


def test_the_deadline_covers_every_attempt_and_is_a_408_naming_what_was_tried(stack: Stack) -> None:
    started = time.monotonic()
    reply = ask(stack.url, "slow", {H.TIMEOUT_MS: "400"})
    assert reply.status == 408
    assert "slow/slow" in error(reply)["message"]
    assert time.monotonic() - started < 2.0


def test_a_retry_after_longer_than_the_deadline_ends_with_a_408_not_a_late_answer(stack: Stack) -> None:
    started = time.monotonic()
    reply = ask(stack.url, "hinted", {H.TIMEOUT_MS: "1500"})
    assert reply.status == 408
    assert "hinted-down/h" in error(reply)["message"]
    assert time.monotonic() - started < 1.5


# ---------------------------------------------------------------- shared breakers


def test_a_breaker_opened_by_one_router_is_honoured_by_both(stack: Stack) -> None:
    replies = run(_many(stack.url, 8, "breaker", sequential=True))  # 3 failures open it on some router
    assert all(r.status == 200 for r in replies)
    later = run(_many(stack.url, 30, "breaker"))
    assert {r.headers[H.ATTEMPTS] for r in later} == {"1"}  # breaker-down is skipped, not tried
    assert {r.headers[H.ENDPOINT] for r in later} == {"ok-b"}
    assert len({r.headers[H.ROUTER] for r in later}) == 2  # on both routers
    cooling = ask(stack.url, "breaker-only")
    assert cooling.status == 503
    assert error(cooling)["code"] == "all_targets_cooling_down"
    assert 1 <= int(cooling.headers[H.RETRY_AFTER]) <= 2
    routers = run(_admin(stack.url, CONFIG_ROUTERS, None, RouterList)).items
    for router in routers:
        assert ("breaker-down", "bd") in {(b.endpoint, b.model) for b in router.breakers}
        assert any(t.endpoint == "ok-b" and t.successes > 0 for t in router.targets)


# ---------------------------------------------------------------- policy and budgets


def test_policy_forbids_a_fallback_hop_to_a_disallowed_model(stack: Stack) -> None:
    reply = ask(stack.url, None, {H.AGENT: "guarded"})
    assert reply.status == 503  # pdown's failure; the disallowed ok-b/b is never tried
    assert H.ENDPOINT not in reply.headers
    assert "mock failure 503" in error(reply)["message"]


def test_an_agent_whose_every_target_is_disallowed_is_denied_with_403(stack: Stack) -> None:
    reply = ask(stack.url, None, {H.AGENT: "forbidden"})
    assert reply.status == 403
    assert error(reply)["code"] == "model_not_allowed"
    assert "no-b" in error(reply)["message"]


def test_a_blocked_tool_is_denied(stack: Stack) -> None:
    tools = [{"type": "function", "function": {"name": "rm_rf"}}]
    reply = ask(stack.url, None, {H.AGENT: "budgeted"}, tools=tools)
    assert reply.status == 403
    assert "rm_rf" in error(reply)["message"]


def test_the_token_budget_of_a_run_is_shared_by_both_routers_and_the_smallest_limit_wins(stack: Stack) -> None:
    headers = {H.AGENT: "budgeted", H.RUN_ID: "budget-run-1"}
    replies = run(_many(stack.url, 20, None, headers, sequential=True))
    ok = [r for r in replies if r.status == 200]
    denied = [r for r in replies if r.status == 429]
    assert ok and denied
    assert replies.index(denied[0]) == len(ok)  # once denied, denied from then on
    assert error(denied[0])["code"] == "budget_exceeded" and error(denied[0])["retryable"] is False
    used = (
        sum(sum(int(p) for p in r.headers.get(H.USAGE, "0 0").split()) for r in ok)
        if ok[0].headers.get(H.USAGE)
        else 6 * len(ok)
    )
    assert used <= 60
    assert len({r.headers[H.ROUTER] for r in ok}) == 2
    assert "small-budget" in error(denied[0])["message"]
    assert ask(stack.url, None, {H.AGENT: "budgeted", H.RUN_ID: "another-run"}).status == 200


# ---------------------------------------------------------------- sensitivity and filters


def test_a_confidential_request_goes_only_to_a_local_target(stack: Stack) -> None:
    replies = run(_many(stack.url, 10, "mixed", {H.SENSITIVITY: "confidential"}))
    assert {r.headers[H.ENDPOINT] for r in replies} == {"local-ok"}


def test_a_confidential_request_with_no_local_target_is_a_403_saying_why(stack: Stack) -> None:
    reply = ask(stack.url, "remote-only", {H.SENSITIVITY: "confidential"})
    assert reply.status == 403
    assert error(reply)["code"] == "no_local_target"


def test_a_confidential_request_never_falls_back_to_a_remote_target(stack: Stack) -> None:
    reply = ask(stack.url, "conf-fallback", {H.SENSITIVITY: "confidential"})
    assert reply.status == 503
    assert "local target failed" in error(reply)["message"]


def test_a_request_with_an_image_needs_a_vision_target(stack: Stack) -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    reply = ask(stack.url, "vision", messages=[{"role": "user", "content": content}])
    assert reply.status == 200, reply.body
    assert reply.headers[H.ENDPOINT] == "ok-b"


def test_a_request_no_target_can_serve_is_a_400_naming_the_requirement(stack: Stack) -> None:
    long_text = "word " * 400
    reply = ask(stack.url, "text-only", messages=[{"role": "user", "content": long_text}])
    assert reply.status == 400
    assert "context window" in error(reply)["message"]


# ---------------------------------------------------------------- native bodies (Modelbus-Format)

ANTHROPIC_HELLO: dict[str, Any] = {"max_tokens": 20, "messages": [{"role": "user", "content": "hello bus"}]}


def test_a_format_modelbus_does_not_read_is_a_400_naming_the_header(stack: Stack) -> None:
    reply = ask(stack.url, "weighted", {H.FORMAT: "gemini"})
    assert reply.status == 400
    assert error(reply)["param"] == H.FORMAT


def test_an_anthropic_body_to_a_target_of_another_api_is_translated_and_answered_in_the_contract(
    stack: Stack,
) -> None:
    (reply,) = run(_many(stack.url, 1, "vision", {H.FORMAT: "anthropic"}, ANTHROPIC_HELLO))
    assert reply.status == 200, reply.body
    assert H.FORMAT not in reply.headers  # the internal answer: the gateway turns it into a message
    assert "hello bus" in json.loads(reply.body)["choices"][0]["message"]["content"]


def test_an_anthropic_body_with_an_image_is_routed_to_a_vision_target(stack: Stack) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = {**ANTHROPIC_HELLO, "messages": [{"role": "user", "content": [{"type": "text", "text": "what"}, image]}]}
    (reply,) = run(_many(stack.url, 1, "vision", {H.FORMAT: "anthropic"}, body))
    assert reply.status == 200, reply.body
    assert reply.headers[H.ENDPOINT] == "ok-b"


def test_an_anthropic_body_missing_max_tokens_is_a_400_naming_it(stack: Stack) -> None:
    (reply,) = run(_many(stack.url, 1, "vision", {H.FORMAT: "anthropic"}, {"messages": HELLO}))
    assert reply.status == 400
    assert error(reply)["param"] == "max_tokens"


def test_a_count_on_a_route_with_no_counting_target_is_a_400_count_unsupported(stack: Stack) -> None:
    headers = {H.FORMAT: "anthropic", H.OPERATION: H.COUNT_TOKENS}
    (reply,) = run(_many(stack.url, 1, "vision", headers, {"messages": HELLO}))
    assert reply.status == 400
    assert error(reply)["code"] == "count_unsupported"


@pytest.mark.parametrize(
    ("headers", "param"),
    [({H.FORMAT: "anthropic", H.OPERATION: "embed"}, H.OPERATION), ({H.OPERATION: H.COUNT_TOKENS}, H.FORMAT)],
)
def test_an_operation_modelbus_does_not_serve_is_a_400_naming_the_header(
    stack: Stack, headers: dict[str, str], param: str
) -> None:
    (reply,) = run(_many(stack.url, 1, "vision", headers, {"messages": HELLO}))
    assert reply.status == 400
    assert error(reply)["param"] == param


# ---------------------------------------------------------------- BYO


def test_byo_env_rejects_keys_outside_the_allowlist_without_echoing_values(stack: Stack) -> None:
    for key in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "SOMETHING_ELSE"):
        env = {"ANTHROPIC_BASE_URL": "https://byo.example.com/v1", "ANTHROPIC_DEFAULT_MODEL": "m", key: "sk-leak-me"}
        reply = ask(stack.url, None, {H.ENV: json.dumps(env)})
        assert reply.status == 400, key
        assert key in error(reply)["message"]
        assert "sk-leak-me" not in reply.body.decode()


def test_byo_env_routes_one_request_to_an_ephemeral_endpoint_and_never_echoes_the_token(stack: Stack) -> None:
    env = {
        "ANTHROPIC_BASE_URL": "https://byo.example.invalid/v1",
        "ANTHROPIC_AUTH_TOKEN": "tok-byo-98765",
        "ANTHROPIC_DEFAULT_MODEL": "m",
        "API_TIMEOUT_MS": "3000",
    }
    reply = ask(stack.url, None, {H.ENV: json.dumps(env)})
    assert reply.status == 503  # the ephemeral endpoint was tried; there is no internet here
    assert "byo:byo.example.invalid" in error(reply)["message"]
    assert "tok-byo-98765" not in reply.body.decode()
    assert "tok-byo-98765" not in stack.log()


def test_byo_to_a_private_address_is_refused(stack: Stack) -> None:
    env = {"ANTHROPIC_BASE_URL": "http://127.0.0.1:11434/v1", "ANTHROPIC_DEFAULT_MODEL": "m"}
    reply = ask(stack.url, None, {H.ENV: json.dumps(env)})
    assert reply.status == 400
    assert error(reply)["code"] == "byo_private_address"


# ---------------------------------------------------------------- streaming failover


def test_a_stream_that_fails_before_any_content_fails_over_cleanly(stack: Stack) -> None:
    messages = run(_stream_raw(stack.url, {"model": "stream-failover", "stream": True, "messages": HELLO}))
    end_headers, _ = messages[-1]
    assert end_headers[H.STATUS] == "200"
    assert end_headers[H.ENDPOINT] == "ok-a"
    assert end_headers[H.ATTEMPTS] == "2"
    assert [int(h[H.SEQ]) for h, _ in messages] == list(range(len(messages)))


def test_a_stream_that_fails_after_content_ends_with_an_error_and_no_failover(stack: Stack) -> None:
    messages = run(_stream_raw(stack.url, {"model": "stream-breaks", "stream": True, "messages": HELLO}))
    *chunks, (end_headers, body) = messages
    assert len(chunks) == 2
    assert end_headers[H.STATUS] == "502"
    assert H.ENDPOINT not in end_headers
    assert json.loads(body)["error"]["type"] == "api_error"


def test_a_stream_that_stalls_after_content_ends_with_a_timeout_error(stack: Stack) -> None:
    started = time.monotonic()
    messages = run(_stream_raw(stack.url, {"model": "stream-stalls", "stream": True, "messages": HELLO}))
    *chunks, (end_headers, _) = messages
    assert len(chunks) == 1
    assert end_headers[H.STATUS] == "504"
    assert time.monotonic() - started < 3.0  # the idle timeout (1 s), not the mock's 4 s gap


# ---------------------------------------------------------------- operator switch (runs last: changes defaults)


def test_an_operator_can_disable_byo(stack: Stack) -> None:
    def set_byo(enabled: bool) -> None:
        doc = {
            "apiVersion": "modelbus.dev/v1",
            "kind": "RoutingDefaults",
            "metadata": {"name": "defaults"},
            "spec": {
                "max_retries": 2,
                "retry_delay_ms": 50,
                "breaker_failures": 3,
                "breaker_window_s": 30,
                "breaker_cooldown_s": 2,
                "stream_idle_timeout_ms": 1000,
                "byo_enabled": enabled,
            },
        }
        result = run(
            _admin(stack.url, CONFIG_APPLY, ApplyRequest(documents=json.dumps(doc), actor="test"), ApplyResult)
        )
        run(_admin(stack.url, CONFIG_WAIT, WaitRequest(revision=result.revision), RouterList))

    set_byo(False)
    try:
        env = {"ANTHROPIC_BASE_URL": "https://byo.example.com/v1", "ANTHROPIC_DEFAULT_MODEL": "m"}
        reply = ask(stack.url, None, {H.ENV: json.dumps(env)})
        assert reply.status == 403
        assert error(reply)["code"] == "byo_disabled"
    finally:
        set_byo(True)
