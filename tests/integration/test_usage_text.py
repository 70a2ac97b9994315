"""Opt-in text records on real processes: secrets, config, a router and a provider worker (the
mock, whose endpoint has a credential), against a private nats-server without identities (so
the test's own connection may read the stream; the permissions are attacked in
test_usage_text_attacks.py).

An agent with ``record_text`` stores exactly one record per request, plain and streamed, with
the prompt and the completion; an agent without it stores nothing, and neither does a client
that sends ``Modelbus-Record-Text`` itself; ``modelbus usage --text`` prints a record; the
provider's key never reaches the stream's files.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import headers as H
from shared.client import ModelbusClient, Reply
from shared.errors import ModelbusError
from shared.natsserver import EmbeddedNats
from shared.subjects import USAGE_TEXT, USAGE_TEXT_STREAM
from shared.usage_text import TextRecord, decode_text_records
from tests.conftest import ROOT, run
from tests.integration.procs import Services, services

pytestmark = pytest.mark.timeout(120)

CONFIG = Path(__file__).with_name("configs") / "usage_text.yaml"
KEY_VAR = "USAGE_TEXT_TEST_KEY"
PROVIDER_KEY = "sk-usage-text-" + secrets.token_hex(16)


class Stack:
    def __init__(self, s: Services, store: Path) -> None:
        self.s, self.url, self.store = s, s.nats_url, store


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    os.environ[KEY_VAR] = PROVIDER_KEY  # the secrets service resolves env: references from its own environment
    try:
        with services(nats_server.url, tmp_path_factory.mktemp("text-home"), CONFIG) as s:
            yield Stack(s, nats_server.data_dir / "jetstream")
    finally:
        os.environ.pop(KEY_VAR, None)


async def _all_records(url: str) -> list[TextRecord]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(USAGE_TEXT_STREAM)).state.last_seq
        if not last:
            return []
        sub = await js.subscribe(
            USAGE_TEXT,
            stream=USAGE_TEXT_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        out: list[TextRecord] = []
        while True:
            msg = await sub.next_msg(timeout=5)
            out.extend(decode_text_records(msg.data))
            if msg.metadata.sequence.stream >= last:
                break
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def records(url: str, wanted: set[str] = frozenset(), timeout_s: float = 10.0) -> list[TextRecord]:  # type: ignore[assignment]
    """Every text record, once those of ``wanted`` request ids are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = run(_all_records(url))
        if wanted <= {r.request_id for r in found}:
            return found
        assert time.monotonic() < deadline, f"no text record for {sorted(wanted - {r.request_id for r in found})}"
        time.sleep(0.05)


async def _ask(url: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
    client = await ModelbusClient.connect(url)
    try:
        return await client.request_raw(body, headers=headers, timeout=30)
    finally:
        await client.close()


async def _stream(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, ModelbusError | None]:
    client = await ModelbusClient.connect(url)
    text = ""
    try:
        async for chunk in client.stream({**body, "stream": True}, headers=headers, timeout=30):
            text += "".join(c.delta.content or "" for c in chunk.choices)
    except ModelbusError as err:
        return text, err
    finally:
        await client.close()
    return text, None


def _rid(tag: str) -> str:
    return f"text-{tag}-{uuid.uuid4().hex}"


def _chat(prompt: str) -> dict[str, Any]:
    return {"model": "ignored-by-agents", "messages": [{"role": "user", "content": prompt}]}


def test_the_text_stream_exists_and_is_empty_before_any_opted_in_request(stack: Stack) -> None:
    assert records(stack.url) == []


def test_an_opted_in_agent_stores_one_record_per_request_with_the_prompt_and_the_completion(stack: Stack) -> None:
    plain_id, stream_id = _rid("plain"), _rid("stream")
    plain_body = _chat("remember the plain prompt")
    reply = run(_ask(stack.url, plain_body, {H.AGENT: "recorder", H.RUN_ID: "run-7", H.REQUEST_ID: plain_id}))
    assert reply.status == 200, reply.body
    streamed, err = run(
        _stream(stack.url, _chat("remember the streamed prompt"), {H.AGENT: "recorder", H.REQUEST_ID: stream_id})
    )
    assert err is None and streamed == "mock:keyed-model says: remember the streamed prompt"

    found = records(stack.url, {plain_id, stream_id})
    (plain,) = [r for r in found if r.request_id == plain_id]
    (stream,) = [r for r in found if r.request_id == stream_id]
    assert (plain.agent, plain.run_id, plain.endpoint, plain.provider, plain.model, plain.status, plain.stream) == (
        "recorder",
        "run-7",
        "keyed",
        "mock",
        "keyed-model",
        200,
        False,
    )
    assert json.loads(bytes(plain.request)) == plain_body  # the request as the client sent it
    assert bytes(plain.completion) == reply.body  # the answer as the client got it
    assert plain.completion_text is None and plain.truncated == []
    assert stream.stream and stream.status == 200 and stream.agent == "recorder" and stream.run_id is None
    assert json.loads(bytes(stream.request))["messages"][0]["content"] == "remember the streamed prompt"
    assert stream.completion_text == streamed and bytes(stream.completion) == b"null"


def test_an_agent_without_the_opt_in_stores_nothing_even_when_the_client_sends_the_header(stack: Stack) -> None:
    quiet = [_rid("quiet"), _rid("quiet-stream"), _rid("forged-agent"), _rid("forged-alias")]
    forged = {H.RECORD_TEXT: "1"}
    assert run(_ask(stack.url, _chat("q1"), {H.AGENT: "team/quiet", H.REQUEST_ID: quiet[0]})).status == 200
    assert run(_stream(stack.url, _chat("q2"), {H.AGENT: "team/quiet", H.REQUEST_ID: quiet[1]}))[1] is None
    assert run(_ask(stack.url, _chat("q3"), {**forged, H.AGENT: "team/quiet", H.REQUEST_ID: quiet[2]})).status == 200
    assert run(_ask(stack.url, {**_chat("q4"), "model": "keyed"}, {**forged, H.REQUEST_ID: quiet[3]})).status == 200
    # One worker publishes its records in order: once a later opted-in request's record is stored,
    # any record of the requests above would be too.
    barrier = _rid("barrier")
    assert run(_ask(stack.url, _chat("barrier"), {H.AGENT: "recorder", H.REQUEST_ID: barrier})).status == 200
    stored = {r.request_id for r in records(stack.url, {barrier})}
    assert not stored & set(quiet)
    assert all(r.startswith(("text-plain-", "text-stream-", "text-barrier-")) for r in stored), stored


def test_a_stream_that_fails_after_its_first_content_stores_its_text_and_the_error(stack: Stack) -> None:
    rid = _rid("breaks")
    text, err = run(_stream(stack.url, _chat("one two three four"), {H.AGENT: "breaking-recorder", H.REQUEST_ID: rid}))
    assert err is not None and text
    (record,) = [r for r in records(stack.url, {rid}) if r.request_id == rid]
    assert record.status == 503 and record.completion_text == text
    assert json.loads(bytes(record.completion))["error"]


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": stack.url, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(stack.s.home / "cli"), "usage", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_modelbus_usage_text_prints_the_stored_prompt_and_completion(stack: Stack) -> None:
    rid = _rid("cli")
    reply = run(_ask(stack.url, _chat("print me back please"), {H.AGENT: "recorder", H.REQUEST_ID: rid}))
    assert reply.status == 200
    records(stack.url, {rid})
    shown = _cli(stack, "--text", rid)
    assert shown.returncode == 0, shown.stderr
    assert f"request {rid}" in shown.stdout and "agent recorder" in shown.stdout
    assert "print me back please" in shown.stdout and "mock:keyed-model says: print me back please" in shown.stdout
    as_json = _cli(stack, "--text", rid, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    (record,) = json.loads(as_json.stdout)
    assert record["request"] == _chat("print me back please")
    assert record["completion"]["choices"][0]["message"]["content"] == "mock:keyed-model says: print me back please"
    missing = _cli(stack, "--text", "no-such-request")
    assert missing.returncode == 1 and "no text record" in missing.stderr


def test_the_provider_key_never_reaches_the_text_streams_files(stack: Stack) -> None:
    rid = _rid("secret")
    marker = f"prompt-marker-{uuid.uuid4().hex}"
    assert run(_ask(stack.url, _chat(marker), {H.AGENT: "recorder", H.REQUEST_ID: rid})).status == 200
    records(stack.url, {rid})
    deadline = time.monotonic() + 10

    def files() -> list[Path]:
        return [p for p in stack.store.rglob("*") if p.is_file() and USAGE_TEXT_STREAM in str(p)]

    while not any(marker.encode() in p.read_bytes() for p in files()):  # the prompt is on disk ...
        assert time.monotonic() < deadline, "the record never reached the stream's files"
        time.sleep(0.05)
    assert not any(PROVIDER_KEY.encode() in p.read_bytes() for p in files())  # ... and the key is not
    assert "secrets" in stack.s.procs  # the key was fetched from the secrets service, as in production


def test_requests_as_the_opted_in_agent_in_flight_together_each_store_exactly_one_record(stack: Stack) -> None:
    ids = [_rid("many") for _ in range(12)]

    async def many() -> list[Reply]:
        client = await ModelbusClient.connect(stack.url)
        try:
            return list(
                await asyncio.gather(
                    *(
                        client.request_raw(_chat(f"n{i}"), headers={H.AGENT: "recorder", H.REQUEST_ID: rid}, timeout=30)
                        for i, rid in enumerate(ids)
                    )
                )
            )
        finally:
            await client.close()

    assert all(r.status == 200 for r in run(many()))
    found = [r.request_id for r in records(stack.url, set(ids)) if r.request_id in ids]
    assert sorted(found) == sorted(ids)
