"""Attacks on a real provider worker: leaking keys through upstream errors, and misdirected answers.

A real ``python -m services.providers`` process serves a real nats-server
without identities (so the broker lets everything through and the worker's
own checks are all that stands), in front of :mod:`tests.fakes.quoting`, an
upstream whose errors quote a prefix, a suffix, a middle fragment, base64 and
URL-encoded forms of the key it was sent. The test plays the router: it sends
``ProviderCall`` messages, with the endpoint's key from a stand-in secrets
service or a BYO key in the call, and reads everything that comes back.

* **Scrubbing.** For each provider format (OpenAI, Azure OpenAI, Anthropic),
  each error path (400, 429, 500, a 200 whose body is an error, an error event
  mid-stream) and each credential source, no 8-character window of the key,
  nor of its URL-encoded or base64 forms, appears anywhere in what the caller
  gets, headers included, while the upstream's own words survive.
* **Reply subjects.** A call whose reply subject is ``$JS.API.STREAM.PURGE.X``
  makes no upstream call and purges nothing; a ``deliver_to`` naming another
  router's inbox or a KV key is ignored (the answer goes to the reply subject)
  and that KV key is never written.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import headers as H
from shared.envelopes import Credential, ProviderCall, provider_call_encoder
from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats, die_with_parent
from shared.routing import Endpoint, routing_encoder
from shared.subjects import SECRETS_GET, provider_subject
from tests.conftest import ROOT, run, stop_process, wait_for_line
from tests.fakes.quoting import MESSAGE_HEAD, QUOTING_MODELS, FakeQuotingUpstream

# Keys with characters that URL-encoding and JSON change, long enough to have many windows.
ENDPOINT_KEY = f"sk-endpoint/{secrets.token_hex(12)}+Qz=="
BYO_KEY = f"byo-token/{secrets.token_hex(12)}+Wx=="
HELLO = [{"role": "user", "content": "hello attacker"}]
TIMEOUT_S = 10.0
PROVIDERS = ("openai", "azure-openai", "anthropic")
IDENTITY_ENV = ("NATS_USER", "NATS_PASSWORD", "MODELBUS_INBOX_PREFIX")


# ---------------------------------------------------------------- what a leak looks like


def _windows(text: str, size: int = 8) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def needles(key: str) -> set[str]:
    """Every 8-character window of the key, of its URL-encoded form, and of its base64 and
    base64url forms at the three alignments (only the characters made of key bytes alone)."""
    raw = key.encode()
    found = _windows(key) | _windows(quote(key, safe=""))
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw + b"\0\0").decode()
        stable = encoded[4 * ((shift + 2) // 3) : 4 * ((shift + len(raw)) // 3)]
        found |= _windows(stable) | _windows(stable.replace("+", "-").replace("/", "_"))
    return found


def leaks(key: str, replies: list[Msg]) -> list[str]:
    """The needles of ``key`` found in the replies' subjects, headers and bodies."""
    blob = "\n".join(f"{m.subject}\n{m.headers or {}}\n{m.data.decode('utf-8', 'replace')}" for m in replies)
    return sorted(n for n in needles(key) if n in blob)


# ---------------------------------------------------------------- processes


class Worker:
    """A running provider worker and everything it printed."""

    def __init__(self, proc: subprocess.Popen[str], output: list[str]) -> None:
        self.proc = proc
        self.output = output

    def wait_for_output(self, needle: str, timeout_s: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.output):
                if needle in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"the worker never printed {needle!r}:\n" + "".join(self.output[-40:]))


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeQuotingUpstream]:
    fake = FakeQuotingUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def worker(nats_server: EmbeddedNats) -> Iterator[Worker]:
    env = {k: v for k, v in os.environ.items() if k not in IDENTITY_ENV}
    env.update(NATS_URL=nats_server.url, PYTHONUNBUFFERED="1", MODELBUS_LOG_LEVEL="INFO")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.providers", "--types", ",".join(PROVIDERS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    try:
        wait_for_line(proc, lambda line: line.startswith(READY_MARKER), 30, output)
        yield Worker(proc, output)
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- playing the router


def endpoint(provider: str, upstream: FakeQuotingUpstream, *, byo: bool) -> bytes:
    base = upstream.base_url if provider == "azure-openai" else f"{upstream.base_url}/v1"
    spec = Endpoint(
        name=f"fake-{provider}-{'byo' if byo else 'secret'}",
        provider=provider,
        base_url=base,
        auth_ref=None if byo else "env:FAKE_UPSTREAM_KEY",
        options={"api_version": "2024-10-21"} if provider == "azure-openai" else {},
        allow_private=True,
        timeout_ms=int(TIMEOUT_S * 1000),
    )
    return routing_encoder.encode(spec)


def provider_call(
    provider: str, upstream: FakeQuotingUpstream, model: str, *, byo: bool, stream: bool = False, **extra: Any
) -> bytes:
    request: dict[str, Any] = {"model": "default", "messages": HELLO}
    if stream:
        request["stream"] = True
    return provider_call_encoder.encode(
        ProviderCall(
            endpoint=msgspec.Raw(endpoint(provider, upstream, byo=byo)),
            model=model,
            request=msgspec.Raw(msgspec.json.encode(request)),
            credential=BYO_KEY if byo else None,
            **extra,
        )
    )


async def connect(url: str) -> Client:
    """The test's connection, with a stand-in secrets service that hands out the endpoint key."""
    nc = await nats.connect(url, max_reconnect_attempts=0)

    async def secrets_get(msg: Msg) -> None:
        await nc.publish(msg.reply, msgspec.json.encode(Credential(value=ENDPOINT_KEY)), headers={H.STATUS: "200"})

    await nc.subscribe(SECRETS_GET, cb=secrets_get)
    await nc.flush()
    return nc


NOTICES = (H.HEARTBEAT, H.COMMITTED, H.KEEPALIVE)
"""Worker-to-router signs of life: not answers, skipped (their headers are still checked for leaks)."""


async def call(nc: Client, subject: str, body: bytes, inbox: str | None = None) -> list[Msg]:
    """Publish one call with ``inbox`` (default: a fresh one) as its reply; every message back, up to the
    final one. A call may name the same inbox as ``deliver_to``: then the client's and the router's
    messages arrive together, and the first final one ends the call."""
    inbox = inbox or nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, body, reply=inbox)
    replies: list[Msg] = []
    while True:
        msg = await sub.next_msg(timeout=TIMEOUT_S)
        replies.append(msg)
        headers = msg.headers or {}
        if any(name in headers for name in NOTICES):
            continue
        if headers.get(H.STREAM) == H.STREAM_END or H.SEQ not in headers:
            await sub.unsubscribe()
            return replies


# ---------------------------------------------------------------- scrubbing


@pytest.mark.parametrize("byo", [False, True], ids=["endpoint-secret", "byo-credential"])
@pytest.mark.parametrize("model", QUOTING_MODELS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_errors_quoting_fragments_and_encodings_of_the_key_reach_the_caller_without_them(
    worker: Worker, upstream: FakeQuotingUpstream, nats_server: EmbeddedNats, provider: str, model: str, byo: bool
) -> None:
    key = BYO_KEY if byo else ENDPOINT_KEY

    async def attack() -> list[Msg]:
        nc = await connect(nats_server.url)
        try:
            inbox = nc.new_inbox()  # the router's and the client's at once: everything the worker sends
            stream = model == "quote-stream"
            body = provider_call(provider, upstream, model, byo=byo, stream=stream, deliver_to=inbox)
            return await call(nc, provider_subject(provider), body, inbox)
        finally:
            await nc.close()

    replies = run(attack())
    sent = [r for r in upstream.requests if r.model == model or r.path.endswith(f"/{model}/chat/completions")]
    assert sent and sent[-1].key == key, "the upstream never got the key: the attack did not happen"
    final = replies[-1]
    assert (final.headers or {}).get(H.STATUS) != "200", final
    assert MESSAGE_HEAD in final.data.decode(), final.data  # the upstream's own words, minus the key
    assert not leaks(key, replies), f"key fragments reached the caller: {leaks(key, replies)}"
    assert "[redacted]" in final.data.decode()
    if model == "quote-stream":
        assert len(replies) >= 2  # content came first: the error really was mid-stream


# ---------------------------------------------------------------- reply subjects


def test_a_call_whose_reply_subject_is_a_jetstream_api_subject_gets_no_upstream_call_and_purges_nothing(
    worker: Worker, upstream: FakeQuotingUpstream, nats_server: EmbeddedNats
) -> None:
    async def attack() -> tuple[int, int]:
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="VICTIM", subjects=["victim.>"])
            for i in range(3):
                await js.publish("victim.data", f"record {i}".encode())
            before = len(upstream.requests)
            body = provider_call("openai", upstream, "ok-model", byo=True)
            await nc.publish(provider_subject("openai"), body, reply="$JS.API.STREAM.PURGE.VICTIM")
            await nc.flush()
            worker.wait_for_output("$JS.API.STREAM.PURGE.VICTIM")  # the worker's refusal warning
            # A call sent after the attack is answered, so the attack has been handled in full.
            after = await call(nc, provider_subject("openai"), provider_call("openai", upstream, "ok-model", byo=True))
            assert (after[-1].headers or {}).get(H.STATUS) == "200"
            info = await js.stream_info("VICTIM")
            return len(upstream.requests) - before, info.state.messages
        finally:
            await nc.close()

    upstream_calls, left = run(attack())
    assert upstream_calls == 1, "only the legitimate call may reach the upstream"
    assert left == 3, "the stream was purged by the worker's answer"


@pytest.mark.parametrize("deliver_to", ["_INBOX_router.elsewhere", "$KV.victim.planted"])
def test_deliver_to_another_routers_inbox_or_a_kv_key_is_ignored_and_the_answer_goes_to_the_reply_subject(
    worker: Worker, upstream: FakeQuotingUpstream, nats_server: EmbeddedNats, deliver_to: str
) -> None:
    async def attack() -> tuple[list[Msg], list[Msg], bool]:
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            kv = await js.create_key_value(bucket="victim")
            spy: list[Msg] = []

            async def seen(msg: Msg) -> None:
                spy.append(msg)

            await nc.subscribe(deliver_to, cb=seen)
            await nc.flush()
            body = provider_call("openai", upstream, "ok-model", byo=True, deliver_to=deliver_to)
            replies = await call(nc, provider_subject("openai"), body)
            # A delivery would have gone out before the reply, on the same connection: one
            # round trip more and it has surely arrived.
            await nc.flush()
            try:
                await kv.get("planted")
                planted = True
            except nats.js.errors.KeyNotFoundError:
                planted = False
            return replies, spy, planted
        finally:
            await nc.close()

    replies, spy, planted = run(attack())
    final = replies[-1]
    assert (final.headers or {}).get(H.STATUS) == "200"
    assert (final.headers or {}).get(H.DELIVERED) is None
    assert b"all good" in final.data, "the completion must come back on the reply subject"
    assert not spy, f"the completion was published to {deliver_to}"
    assert not planted, "the completion was written into the KV bucket"
    worker.wait_for_output("ignored deliver_to")


def test_deliver_to_a_requesters_inbox_is_still_delivered_directly(
    worker: Worker, upstream: FakeQuotingUpstream, nats_server: EmbeddedNats
) -> None:
    async def deliver() -> tuple[list[Msg], Msg]:
        nc = await connect(nats_server.url)
        try:
            client_inbox = nc.new_inbox()  # ``_INBOX.``: a requester's inbox without identities
            sub = await nc.subscribe(client_inbox)
            body = provider_call("openai", upstream, "ok-model", byo=True, deliver_to=client_inbox)
            replies = await call(nc, provider_subject("openai"), body)
            delivered = await sub.next_msg(timeout=TIMEOUT_S)
            return replies, delivered
        finally:
            await nc.close()

    replies, delivered = run(deliver())
    assert (replies[-1].headers or {}).get(H.DELIVERED) == "1"
    assert b"all good" in delivered.data


def test_the_worker_logs_no_fragment_of_either_key(worker: Worker) -> None:
    log = "".join(worker.output)
    for key in (ENDPOINT_KEY, BYO_KEY):
        found = sorted(n for n in needles(key) if n in log)
        assert not found, f"the worker's log holds fragments of a key: {found}"
