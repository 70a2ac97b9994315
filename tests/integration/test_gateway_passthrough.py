"""Fidelity at the HTTP edge: a client's own body reaches an upstream of its API as it came.

A stack with the gateway in front of llm-katan, through a recording proxy
(:mod:`tests.fakes.recorder`), so each test sees the bytes the upstream got:

- a Messages request to an ``anthropic`` endpoint, and a Chat Completions
  request to an ``openai`` one, arrive with every top-level member byte for
  byte (``cache_control``, thinking blocks with signatures, ``metadata``,
  fields no code here knows), only ``model`` set; the answer comes back as the
  upstream sent it;
- to an upstream of the other API the request is translated, and what cannot
  be carried is a 400 naming the field;
- a failover from an ``anthropic`` target to an ``openai`` one still answers
  in the client's format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest

from shared.natsserver import EmbeddedNats
from tests.conftest import free_port, start_katan, stop_process
from tests.fakes.anthropic_count import AnthropicCounter, fake_count
from tests.fakes.recorder import Recorder
from tests.integration.procs import services, start_gateway, write_gateway_keys

KEY = "mb-test-passthrough-key-0123456789abcdef"
UPSTREAM_KEY_VAR = "PASSTHROUGH_TEST_UPSTREAM_KEY"
_members = msgspec.json.Decoder(dict[str, msgspec.Raw])

# A Messages body with what translation would lose: cache_control, an earlier turn's thinking
# block with its signature, metadata, top_k, and a field no one has defined yet.
MESSAGES: dict[str, Any] = {
    "model": "claude-alias",
    "max_tokens": 64,
    "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "first question"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "let me think", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
                {"type": "text", "text": "first answer"},
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "hello claude", "cache_control": {"type": "ephemeral"}}]},
    ],
    "metadata": {"user_id": "u-42"},
    "top_k": 5,
    "a_future_field": {"nested": [1, 2.50, "three"], "flag": True},
}
CHAT: dict[str, Any] = {
    "model": "gpt-alias",
    "messages": [{"role": "user", "content": "hello gpt"}],
    "max_tokens": 32,
    "a_future_param": {"keep": "me", "n": 1.0},
}


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def _endpoint(name: str, provider: str, base_url: str) -> str:
    spec = {
        "provider": provider,
        "base_url": base_url,
        "default_model": "echo",
        "allowPrivate": True,
        "auth": {"secretRef": f"env:{UPSTREAM_KEY_VAR}"},  # llm-katan wants a key, any key
    }
    return _doc("ModelEndpoint", name, {**spec, "timeout_ms": 10_000})


def _alias(name: str, *endpoints: str) -> str:
    return _doc("ModelAlias", name, {"strategy": "failover", "targets": [{"endpoint": e} for e in endpoints]})


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    katan = start_katan(tmp_path_factory.mktemp("katan-passthrough"))
    try:
        with Recorder(katan.base_url) as rec:
            yield rec
    finally:
        stop_process(katan.proc)


@pytest.fixture(scope="module")
def counter() -> Iterator[AnthropicCounter]:
    with AnthropicCounter() as fake:
        yield fake


@pytest.fixture(scope="module")
def url(
    nats_server: EmbeddedNats, recorder: Recorder, counter: AnthropicCounter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    home = tmp_path_factory.mktemp("gateway-passthrough")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: a connection refused, retryable
    config = home / "config.yaml"
    config.write_text(
        "\n---\n".join(
            [
                _endpoint("claude", "anthropic", f"{recorder.base_url}/v1"),
                _endpoint("claude-dead", "anthropic", dead),
                _endpoint("gpt", "openai", f"{recorder.base_url}/v1"),
                _endpoint("claude-counting", "anthropic", counter.base_url),
                _alias("counting", "gpt", "claude-counting"),
                _alias("claude-alias", "claude"),
                _alias("gpt-alias", "gpt"),
                _alias("claude-then-gpt", "claude-dead", "gpt"),
                _doc("RoutingDefaults", "defaults", {"max_retries": 0, "breaker_failures": 1000}),
            ]
        )
    )
    keys = home / "gateway-keys.json"
    write_gateway_keys(keys, {"default": KEY})
    os.environ[UPSTREAM_KEY_VAR] = "sk-katan-passthrough"  # read by the secrets service it starts
    try:
        with services(nats_server.url, home / "home", config) as s:
            yield start_gateway(s, keys)
    finally:
        os.environ.pop(UPSTREAM_KEY_VAR, None)


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    return httpx.post(f"{url}{path}", content=json.dumps(body).encode(), headers=headers, timeout=20)


def _stream(url: str, path: str, body: bytes) -> tuple[httpx.Headers, bytes]:
    """A streamed answer's headers and every byte of it (the status must be 200)."""
    headers = {"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{url}{path}", content=body, headers=headers, timeout=20) as answer:
        assert answer.status_code == 200
        return answer.headers, b"".join(answer.iter_bytes())


def _sent(recorder: Recorder, path: str, since: int) -> bytes:
    bodies = recorder.bodies(path)[since:]
    assert len(bodies) == 1, f"expected one upstream request on {path}, got {len(bodies)}"
    return bodies[0]


def _same_but_model(client: bytes, upstream: bytes, model: str) -> None:
    """Every top-level member of the client's body reached the upstream byte for byte, in order;
    only ``model`` was set."""
    theirs, ours = _members.decode(upstream), _members.decode(client)
    assert list(theirs) == list(ours)
    assert json.loads(bytes(theirs["model"])) == model
    for name, raw in ours.items():
        if name != "model":
            assert bytes(theirs[name]) == bytes(raw), name


# ---------------------------------------------------------------- anthropic -> anthropic


def test_a_messages_request_reaches_an_anthropic_upstream_as_the_client_sent_it(url: str, recorder: Recorder) -> None:
    before = len(recorder.bodies("/messages"))
    body = json.dumps(MESSAGES).encode()
    answer = httpx.post(
        f"{url}/v1/messages",
        content=body,
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        timeout=20,
    )
    assert answer.status_code == 200, answer.text
    _same_but_model(body, _sent(recorder, "/messages", before), "echo")
    message = answer.json()
    assert message["type"] == "message" and "hello claude" in message["content"][0]["text"]
    assert answer.headers["x-modelbus-endpoint"] == "claude"


def test_a_streamed_messages_request_relays_anthropic_s_own_events(url: str, recorder: Recorder) -> None:
    before = len(recorder.bodies("/messages"))
    body = json.dumps({**MESSAGES, "stream": True}).encode()
    response_headers, wire = _stream(url, "/v1/messages", body)
    assert response_headers["x-modelbus-endpoint"] == "claude"
    _same_but_model(body, _sent(recorder, "/messages", before), "echo")
    names = [line.split(b": ", 1)[1] for line in wire.split(b"\n") if line.startswith(b"event: ")]
    assert names[0] == b"message_start" and names[-1] == b"message_stop"
    assert b"content_block_delta" in names and b"message_delta" in names
    datas = [json.loads(line[6:]) for line in wire.split(b"\n") if line.startswith(b"data: ")]
    text = "".join(d["delta"].get("text", "") for d in datas if d["type"] == "content_block_delta")
    assert "hello claude" in text


# ---------------------------------------------------------------- openai -> openai


def test_a_chat_request_with_an_unknown_field_reaches_an_openai_upstream_as_the_client_sent_it(
    url: str, recorder: Recorder
) -> None:
    before = len(recorder.bodies("/chat/completions"))
    body = json.dumps(CHAT).encode()
    answer = httpx.post(
        f"{url}/v1/chat/completions", content=body, headers={"authorization": f"Bearer {KEY}"}, timeout=20
    )
    assert answer.status_code == 200, answer.text
    _same_but_model(body, _sent(recorder, "/chat/completions", before), "echo")
    assert "hello gpt" in answer.json()["choices"][0]["message"]["content"]


def test_a_chat_stream_asks_the_upstream_for_usage_but_gives_the_client_none_it_did_not_ask_for(
    url: str, recorder: Recorder
) -> None:
    before = len(recorder.bodies("/chat/completions"))
    body = {**CHAT, "stream": True}
    _, wire = _stream(url, "/v1/chat/completions", json.dumps(body).encode())
    events = [line[6:].decode() for line in wire.split(b"\n") if line.startswith(b"data: ")]
    sent = json.loads(_sent(recorder, "/chat/completions", before))
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["a_future_param"] == CHAT["a_future_param"]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c.get("usage") is None for c in chunks)
    assert "hello gpt" in "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_a_chat_stream_that_asks_for_usage_gets_the_usage_chunk_before_done(url: str) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    _, wire = _stream(url, "/v1/chat/completions", json.dumps(body).encode())
    events = [line[6:].decode() for line in wire.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    assert all(json.loads(e).get("usage") is None for e in events[:-2])


# ---------------------------------------------------------------- across APIs


def test_a_messages_request_to_an_openai_upstream_is_translated_and_answered_as_a_message(
    url: str, recorder: Recorder
) -> None:
    before = len(recorder.bodies("/chat/completions"))
    body = {"model": "gpt-alias", "max_tokens": 40, "messages": [{"role": "user", "content": "translate me"}]}
    answer = _post(url, "/v1/messages", body)
    assert answer.status_code == 200, answer.text
    sent = json.loads(_sent(recorder, "/chat/completions", before))
    assert sent["messages"] == [{"role": "user", "content": "translate me"}] and sent["max_tokens"] == 40
    message = answer.json()
    assert message["type"] == "message" and "translate me" in message["content"][0]["text"]


def test_a_field_translation_cannot_carry_is_a_400_naming_it(url: str) -> None:
    body = {"model": "gpt-alias", "max_tokens": 40, "top_k": 3, "messages": [{"role": "user", "content": "x"}]}
    answer = _post(url, "/v1/messages", body)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "top_k" in answer.json()["error"]["message"]
    chat = _post(url, "/v1/chat/completions", {**CHAT, "model": "claude-alias"})
    assert chat.status_code == 400
    assert chat.json()["error"]["param"] == "a_future_param"


def test_a_failover_from_an_anthropic_target_to_an_openai_one_still_answers_a_message(url: str) -> None:
    body = {"model": "claude-then-gpt", "max_tokens": 40, "messages": [{"role": "user", "content": "fall over"}]}
    answer = _post(url, "/v1/messages", body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelbus-endpoint"] == "gpt"
    assert answer.headers["x-modelbus-attempts"] == "2"
    assert answer.json()["type"] == "message" and "fall over" in answer.json()["content"][0]["text"]


def test_a_streamed_failover_across_apis_still_follows_anthropic_s_event_sequence(url: str) -> None:
    body = {
        "model": "claude-then-gpt",
        "max_tokens": 40,
        "stream": True,
        "messages": [{"role": "user", "content": "fo"}],
    }
    _, wire = _stream(url, "/v1/messages", json.dumps(body).encode())
    names = [line.split(b": ", 1)[1] for line in wire.split(b"\n") if line.startswith(b"event: ")]
    assert names[0] == b"message_start" and names[-1] == b"message_stop"


# ---------------------------------------------------------------- count_tokens


def test_count_tokens_is_the_provider_s_own_count_from_a_target_that_counts(
    url: str, counter: AnthropicCounter
) -> None:
    body = {
        "model": "counting",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "count me", "cache_control": {"type": "ephemeral"}}]}
        ],
        "system": "be brief",
    }
    answer = _post(url, "/v1/messages/count_tokens", body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelbus-token-count"] == "provider"
    assert answer.headers["x-modelbus-endpoint"] == "claude-counting"
    assert answer.json() == {"input_tokens": fake_count(body)}
    sent = _members.decode(counter.bodies[-1])
    assert json.loads(bytes(sent["model"])) == "echo"  # the gpt target cannot count: skipped, not tried
    assert bytes(sent["messages"]) == json.dumps(body["messages"]).encode()


def test_count_tokens_is_modelbus_s_estimate_where_no_target_counts(url: str) -> None:
    body = {"model": "gpt-alias", "messages": [{"role": "user", "content": "count me"}]}
    answer = _post(url, "/v1/messages/count_tokens", body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelbus-token-count"] == "estimate"
    assert answer.json()["input_tokens"] > 0


def test_count_tokens_for_an_unknown_model_is_a_not_found_error(url: str) -> None:
    answer = _post(url, "/v1/messages/count_tokens", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "not_found_error"


def test_an_upstream_refusal_of_a_count_comes_back_as_its_error(url: str) -> None:
    body = {"model": "counting", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    answer = _post(url, "/v1/messages/count_tokens", body)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- the official SDKs on the passthrough path


def test_the_anthropic_sdk_reads_anthropic_s_own_message_and_events(url: str) -> None:
    with anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=20) as sdk:
        message = sdk.messages.create(
            model="claude-alias", max_tokens=30, messages=[{"role": "user", "content": "sdk"}]
        )
        assert message.content[0].type == "text" and "sdk" in message.content[0].text
        with sdk.messages.stream(
            model="claude-alias", max_tokens=30, messages=[{"role": "user", "content": "sdk stream"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert "sdk stream" in text
    assert final.usage.output_tokens > 0 and final.stop_reason is not None


def test_the_openai_sdk_reads_the_upstream_s_own_completion_and_chunks(url: str) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=20) as sdk:
        completion = sdk.chat.completions.create(model="gpt-alias", messages=[{"role": "user", "content": "sdk"}])
        assert "sdk" in (completion.choices[0].message.content or "")
        chunks = list(
            sdk.chat.completions.create(
                model="gpt-alias",
                messages=[{"role": "user", "content": "sdk stream"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert "sdk stream" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
