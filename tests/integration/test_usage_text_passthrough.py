"""Text records of native passthrough requests: a client's own Messages or Chat Completions body,
through the HTTP gateway to llm-katan as an agent with ``record_text``. The record keeps the body
as the client sent it and, for a stream, the text of the upstream's own relayed events."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.natsserver import EmbeddedNats
from shared.subjects import USAGE_TEXT, USAGE_TEXT_STREAM
from shared.usage_text import TextRecord, decode_text_records
from tests.conftest import run, start_katan, stop_process
from tests.integration.procs import services, start_gateway, write_gateway_keys

pytestmark = pytest.mark.timeout(120)

KEY = "mb-test-text-passthrough-0123456789abcdef"
UPSTREAM_KEY_VAR = "TEXT_PASSTHROUGH_UPSTREAM_KEY"


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def _endpoint(name: str, provider: str, base_url: str) -> str:
    spec = {
        "provider": provider,
        "base_url": base_url,
        "default_model": "echo",
        "allowPrivate": True,
        "auth": {"secretRef": f"env:{UPSTREAM_KEY_VAR}"},
        "timeout_ms": 10_000,
    }
    return _doc("ModelEndpoint", name, spec)


@pytest.fixture(scope="module")
def url(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("text-passthrough")
    katan = start_katan(home)
    config = home / "config.yaml"
    config.write_text(
        "\n---\n".join(
            [
                _endpoint("claude", "anthropic", f"{katan.base_url}/v1"),
                _endpoint("gpt", "openai", f"{katan.base_url}/v1"),
                _doc("Agent", "claude-scribe", {"model_ref": "claude", "record_text": True}),
                _doc("Agent", "gpt-scribe", {"model_ref": "gpt", "record_text": True}),
            ]
        )
    )
    keys = home / "gateway-keys.json"
    write_gateway_keys(keys, {"default": KEY})
    os.environ[UPSTREAM_KEY_VAR] = "sk-katan-text"
    try:
        with services(nats_server.url, home / "home", config) as s:
            yield start_gateway(s, keys)
    finally:
        os.environ.pop(UPSTREAM_KEY_VAR, None)
        stop_process(katan.proc)


def _record(nats_url: str, request_id: str, timeout_s: float = 10.0) -> TextRecord:
    async def read() -> list[TextRecord]:
        nc = await nats.connect(nats_url)
        out: list[TextRecord] = []
        try:
            js = nc.jetstream()
            sub = await js.subscribe(
                USAGE_TEXT,
                stream=USAGE_TEXT_STREAM,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            try:
                while True:
                    msg = await sub.next_msg(timeout=0.5)
                    out.extend(r for r in decode_text_records(msg.data) if r.request_id == request_id)
            except nats.errors.TimeoutError:
                return out
            finally:
                await sub.unsubscribe()
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout_s
    while not (found := run(read())):
        assert time.monotonic() < deadline, f"no text record for {request_id}"
    (record,) = found
    return record


def _headers(agent: str, request_id: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {KEY}",
        "anthropic-version": "2023-06-01",
        "x-modelbus-agent": agent,
        "x-request-id": request_id,
    }


def test_a_passthrough_messages_stream_records_the_clients_body_and_the_relayed_events_text(
    url: str, nats_server: EmbeddedNats
) -> None:
    body = json.dumps(
        {"model": "x", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "relay me"}]}
    ).encode()
    with httpx.stream(
        "POST", f"{url}/v1/messages", content=body, headers=_headers("claude-scribe", "tp-stream"), timeout=20
    ) as answer:
        assert answer.status_code == 200
        wire = b"".join(answer.iter_bytes())
    datas = [json.loads(line[6:]) for line in wire.split(b"\n") if line.startswith(b"data: ")]
    text = "".join(d["delta"].get("text", "") for d in datas if d["type"] == "content_block_delta")
    assert "relay me" in text
    record = _record(nats_server.url, "tp-stream")
    assert record.format == "anthropic" and record.stream and record.agent == "claude-scribe"
    assert json.loads(bytes(record.request)) == json.loads(body)
    assert record.completion_text == text


def test_a_passthrough_chat_completion_records_the_upstreams_answer_as_the_client_got_it(
    url: str, nats_server: EmbeddedNats
) -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "answer me"}], "a_future_param": 1}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=_headers("gpt-scribe", "tp-plain"), timeout=20)
    assert answer.status_code == 200, answer.text
    record = _record(nats_server.url, "tp-plain")
    assert record.format == "openai" and not record.stream
    assert json.loads(bytes(record.request)) == body
    assert json.loads(bytes(record.completion)) == answer.json()
