"""The permission table of shared.identities, attacked on a real nats-server.

The server runs with exactly the ``authorization`` block ``modelbus up``
renders (bcrypt hashes, every role). The streams and buckets are created by
their owners, then every identity tries what an attacker holding it would:
copy the secrets bucket, delete or purge the config, audit and secrets
streams, forge config revisions and audit entries, read other inboxes. Each
refusal is the broker's, read from the error callback, and the state is
checked afterwards.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType, StreamConfig

from shared import identities
from shared.natsserver import EmbeddedNats
from shared.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECT,
    AUDIT_VERIFY,
    BREAKERS_BUCKET,
    BUDGETS_BUCKET,
    CHAT_COMPLETIONS,
    CONFIG_APPLY,
    CONFIG_DELETE,
    CONFIG_EVENTS,
    CONFIG_GET,
    CONFIG_LOG,
    CONFIG_ROLLBACK,
    CONFIG_STREAM,
    PROVIDER_PREFIX,
    ROUTER_QUEUE,
    ROUTER_REVISIONS,
    ROUTER_STATUS,
    RUNS_BUCKET,
    SECRETS_BUCKET,
    SECRETS_CHANGED,
    SECRETS_DELETE,
    SECRETS_DESCRIBE,
    SECRETS_GET,
    SECRETS_LIST,
    SECRETS_PUT,
    provider_outcome_subject,
    provider_subject,
)
from tests.conftest import run

SECRETS_KV = f"KV_{SECRETS_BUCKET}"
OWNER = {
    SECRETS_KV: "secrets-state",
    CONFIG_STREAM: "config-state",
    AUDIT_STREAM: "config-state",
    f"KV_{RUNS_BUCKET}": "config-state",
    f"KV_{BUDGETS_BUCKET}": "router-state",
}


class Broker:
    def __init__(self, url: str, passwords: dict[str, str]) -> None:
        self.url, self.passwords = url, passwords

    def login(self, role: str) -> dict[str, Any]:
        return {"user": role, "password": self.passwords[role], "inbox_prefix": identities.inbox_prefix(role)}

    async def connect(self, role: str, errors: list[str] | None = None) -> Client:
        async def error_cb(err: Exception) -> None:
            if errors is not None:
                errors.append(str(err))

        return await nats.connect(self.url, error_cb=error_cb, max_reconnect_attempts=0, **self.login(role))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    passwords = {role: secrets.token_urlsafe(24) for role in identities.ROLES}
    server = EmbeddedNats(
        Path(tmp_path_factory.mktemp("broker-perms")), extra_config=identities.render_authorization(passwords)
    )
    url = server.start()
    b = Broker(url, passwords)
    run(_create_state(b))
    try:
        yield b
    finally:
        server.stop()


async def _create_state(b: Broker) -> None:
    """Each stream and bucket created by the identity that owns it, with one entry each."""
    nc = await b.connect("secrets-state")
    kv = await nc.jetstream().create_key_value(
        config=KeyValueConfig(bucket=SECRETS_BUCKET, storage=StorageType.FILE, history=1)
    )
    await kv.put("openai", b"sealed-record")
    await nc.close()
    nc = await b.connect("config-state")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=CONFIG_STREAM, subjects=[CONFIG_LOG]))
    await js.add_stream(StreamConfig(name=AUDIT_STREAM, subjects=[AUDIT_SUBJECT]))
    await js.publish(CONFIG_LOG, b'{"revision": 1}')
    await js.publish(AUDIT_SUBJECT, b'{"entry": 1}')
    runs = await js.create_key_value(config=KeyValueConfig(bucket=RUNS_BUCKET, storage=StorageType.FILE))
    await runs.put("run-1", b"1")
    await nc.close()
    nc = await b.connect("router-state")
    budgets = await nc.jetstream().create_key_value(
        config=KeyValueConfig(bucket=BUDGETS_BUCKET, storage=StorageType.FILE)
    )
    await budgets.put("policy.run-1", b"900")
    await nc.close()


async def _attempt(b: Broker, role: str, action: Callable[[Client], Awaitable[Any]]) -> list[str]:
    """Run ``action`` as ``role``; the broker's permission errors, waited for with a deadline."""
    errors: list[str] = []
    nc = await b.connect(role, errors)
    try:
        try:
            await action(nc)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            pass  # a refused request looks like a timeout to the requester
        await nc.flush(timeout=2)
        for _ in range(80):
            if any("permissions violation" in e.lower() for e in errors):
                break
            await asyncio.sleep(0.025)
    finally:
        await nc.close()
    return errors


def _refused(errors: list[str], subject: str) -> bool:
    return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors)


async def _stream_state(b: Broker, stream: str) -> tuple[int, int]:
    """``(messages, last sequence)`` of a stream, read by its owner."""
    nc = await b.connect(OWNER.get(stream, "config-state"))
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    return int(info.state.messages), int(info.state.last_seq)


def _request(subject: str, body: bytes = b"") -> Callable[[Client], Awaitable[Any]]:
    """A JetStream API call as a publish with a reply inbox: a refused one is reported
    by the broker at once, so there is no need to wait out a request timeout."""

    async def action(nc: Client) -> Any:
        await nc.publish(subject, body, reply=nc.new_inbox())

    return action


ATTACKERS = [r for r in identities.ROLES if r != "secrets-state"]


@pytest.mark.parametrize("role", ATTACKERS)
def test_no_identity_but_its_owner_can_copy_the_secrets_bucket_into_a_stream_of_its_own(
    broker: Broker, role: str
) -> None:
    config = json.dumps({"name": "LOOT", "sources": [{"name": SECRETS_KV}], "storage": "memory"}).encode()
    errors = run(_attempt(broker, role, _request("$JS.API.STREAM.CREATE.LOOT", config)))
    assert _refused(errors, "$JS.API.STREAM.CREATE.LOOT"), errors


@pytest.mark.parametrize("role", ATTACKERS)
def test_no_identity_but_its_owner_can_read_the_secrets_bucket(broker: Broker, role: str) -> None:
    durable = json.dumps({"stream_name": SECRETS_KV, "config": {"durable_name": "loot", "ack_policy": "none"}})
    attempts = [
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{SECRETS_KV}.loot", durable.encode()),
        (f"$JS.API.CONSUMER.CREATE.{SECRETS_KV}", durable.encode()),
        (f"$JS.API.DIRECT.GET.{SECRETS_KV}.$KV.{SECRETS_BUCKET}.openai", b""),
        (f"$JS.API.STREAM.MSG.GET.{SECRETS_KV}", b'{"last_by_subj": "$KV.modelbus_secrets.openai"}'),
    ]
    for subject, body in attempts:
        errors = run(_attempt(broker, role, _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)


@pytest.mark.parametrize("role", identities.ROLES)
@pytest.mark.parametrize("stream", [CONFIG_STREAM, AUDIT_STREAM, SECRETS_KV])
def test_no_identity_can_delete_or_purge_the_config_audit_or_secrets_streams(
    broker: Broker, role: str, stream: str
) -> None:
    before = run(_stream_state(broker, stream))
    for op, body in (("DELETE", b""), ("PURGE", b""), ("MSG.DELETE", b'{"seq": 1}')):
        subject = f"$JS.API.STREAM.{op}.{stream}"
        errors = run(_attempt(broker, role, _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)
    assert run(_stream_state(broker, stream)) == before


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "config-state"])
def test_only_the_config_state_identity_appends_revisions_and_audit_entries(broker: Broker, role: str) -> None:
    before = run(_stream_state(broker, CONFIG_STREAM)), run(_stream_state(broker, AUDIT_STREAM))

    async def forge(nc: Client) -> None:
        await nc.publish(CONFIG_LOG, b'{"revision": 99, "forged": true}')
        await nc.publish(AUDIT_SUBJECT, b'{"forged": true}')

    errors = run(_attempt(broker, role, forge))
    assert _refused(errors, CONFIG_LOG), errors
    assert (run(_stream_state(broker, CONFIG_STREAM)), run(_stream_state(broker, AUDIT_STREAM))) == before


SERVING = ["router", "config", "secrets", "providers", "client", "admin"]


@pytest.mark.parametrize("role", SERVING)
def test_identities_that_answer_requests_can_publish_no_jetstream_or_kv_subject(broker: Broker, role: str) -> None:
    """A reply subject is the requester's choice: whatever an answering identity may
    publish to, a requester can make it publish to. So none of them has JetStream rights."""
    for subject in (
        f"$JS.API.STREAM.PURGE.KV_{BUDGETS_BUCKET}",
        f"$JS.API.STREAM.DELETE.KV_{RUNS_BUCKET}",
        f"$KV.{BUDGETS_BUCKET}.policy.run-1",
        "$JS.API.INFO",
    ):

        async def publish(nc: Client, subject: str = subject) -> None:
            await nc.publish(subject, b"")

        errors = run(_attempt(broker, role, publish))
        assert _refused(errors, subject), (subject, errors)


@pytest.mark.parametrize("role", identities.ROLES)
def test_every_identity_reads_only_its_own_inbox(broker: Broker, role: str) -> None:
    own = identities.inbox_prefix(role)
    others = [">", "_INBOX.>", "_INBOX_client.>", "_INBOX_client.someone-else.>"]
    others += [f"{identities.inbox_prefix(r)}.>" for r in identities.ROLES if r != role]
    for subject in others:
        if subject.startswith(own + "."):
            continue

        async def subscribe(nc: Client, subject: str = subject) -> None:
            await nc.subscribe(subject)

        errors = run(_attempt(broker, role, subscribe))
        assert _refused(errors, "subscription"), (subject, errors)


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "router"])
def test_only_routers_may_ask_workers_what_became_of_an_attempt(broker: Broker, role: str) -> None:
    """A worker answers an outcome question with the attempt's last message (a completion, when
    fenced) to the asker's reply subject; only routers, which hold those attempts, may ask."""
    subject = provider_outcome_subject("openai")

    async def ask(nc: Client) -> None:
        await nc.publish(subject, b"_INBOX_router.x.1", reply=nc.new_inbox())

    errors = run(_attempt(broker, role, ask))
    assert _refused(errors, subject), errors


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "providers"])
def test_only_provider_workers_may_hear_the_routers_outcome_questions(broker: Broker, role: str) -> None:
    async def listen(nc: Client) -> None:
        await nc.subscribe(provider_outcome_subject("openai"))

    errors = run(_attempt(broker, role, listen))
    assert _refused(errors, "subscription"), errors


def test_a_routers_outcome_question_reaches_the_provider_workers_and_their_answer_reaches_the_router(
    broker: Broker,
) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        worker = await broker.connect("providers")
        asked: list[bytes] = []

        async def answer(msg: Msg) -> None:
            asked.append(msg.data)
            await worker.publish(msg.reply, b"the outcome")

        await worker.subscribe(provider_outcome_subject("openai"), cb=answer)
        await worker.flush()
        router = await broker.connect("router")
        reply = await router.request(provider_outcome_subject("openai"), b"_INBOX_router.attempt.7", timeout=2)
        await router.close()
        await worker.close()
        return asked[0], reply.data

    assert run(scenario()) == (b"_INBOX_router.attempt.7", b"the outcome")


def test_the_router_state_identity_cannot_reconfigure_its_buckets(broker: Broker) -> None:
    """Updating a stream could add ``sources`` (a copy of the secrets bucket) or shrink its limits."""
    subject = f"$JS.API.STREAM.UPDATE.KV_{BUDGETS_BUCKET}"
    body = json.dumps({"name": f"KV_{BUDGETS_BUCKET}", "sources": [{"name": SECRETS_KV}]}).encode()
    errors = run(_attempt(broker, "router-state", _request(subject, body)))
    assert _refused(errors, subject), errors


def test_the_admin_identity_reads_the_budgets_bucket_and_cannot_write_or_purge_it(broker: Broker) -> None:
    """``modelbus get budgets`` reads the spend; an admin who could write it could erase a budget's spend."""

    async def read(nc: Client) -> bytes | None:
        kv = await nc.jetstream().key_value(BUDGETS_BUCKET)
        return (await kv.get("policy.run-1")).value

    async def read_as_admin() -> bytes | None:
        nc = await broker.connect("admin")
        try:
            return await read(nc)
        finally:
            await nc.close()

    assert run(read_as_admin()) == b"900"
    before = run(_stream_state(broker, f"KV_{BUDGETS_BUCKET}"))
    for subject in (f"$KV.{BUDGETS_BUCKET}.policy.run-1", f"$JS.API.STREAM.PURGE.KV_{BUDGETS_BUCKET}"):
        errors = run(_attempt(broker, "admin", _request(subject, b"0")))
        assert _refused(errors, subject), (subject, errors)
    assert run(_stream_state(broker, f"KV_{BUDGETS_BUCKET}")) == before


def test_the_rendered_configuration_holds_bcrypt_hashes_and_no_password(broker: Broker) -> None:
    rendered = identities.render_authorization(broker.passwords)
    for password in broker.passwords.values():
        assert password not in rendered
    users = json.loads(rendered.removeprefix("authorization "))["users"]
    assert {u["user"] for u in users} == set(identities.ROLES)
    assert all(u["password"].startswith("$2a$") for u in users)


# ---------------------------------------------------------------- the HTTP gateway's identity
#
# The gateway holds the key check of every HTTP client, so whoever breaks into it holds the
# `gateway` identity. It may send completion requests and read the routing configuration; the
# broker must refuse it everything else, above all anything a router or provider worker does.

KV_STREAMS = [f"KV_{bucket}" for bucket in (SECRETS_BUCKET, BUDGETS_BUCKET, BREAKERS_BUCKET, RUNS_BUCKET)]
GATEWAY_MAY_NOT_PUBLISH = [
    provider_subject("openai"),
    provider_subject("mock"),
    provider_outcome_subject("openai"),
    SECRETS_GET,
    SECRETS_PUT,
    SECRETS_DELETE,
    SECRETS_LIST,
    SECRETS_DESCRIBE,
    SECRETS_CHANGED,
    CONFIG_GET,
    CONFIG_APPLY,
    CONFIG_DELETE,
    CONFIG_ROLLBACK,
    CONFIG_LOG,
    CONFIG_EVENTS,
    AUDIT_SUBJECT,
    AUDIT_VERIFY,
    ROUTER_STATUS,
    ROUTER_REVISIONS,
    "$JS.API.INFO",
    f"$JS.API.STREAM.CREATE.{CONFIG_STREAM}",
    f"$JS.API.STREAM.UPDATE.{CONFIG_STREAM}",
    "$JS.API.STREAM.CREATE.LOOT",
    "$JS.API.STREAM.LIST",
    "$JS.API.CONSUMER.DURABLE.CREATE.MODELBUS_CONFIG.kept",
    *[f"$KV.{bucket}.key" for bucket in (SECRETS_BUCKET, BUDGETS_BUCKET, BREAKERS_BUCKET, RUNS_BUCKET)],
    *[f"$JS.API.STREAM.INFO.{kv}" for kv in KV_STREAMS],
    *[f"$JS.API.DIRECT.GET.{kv}" for kv in KV_STREAMS],
    *[f"$JS.API.CONSUMER.CREATE.{kv}" for kv in KV_STREAMS],
    f"$JS.API.STREAM.INFO.{AUDIT_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{AUDIT_STREAM}",
]
GATEWAY_MAY_NOT_SUBSCRIBE = [
    (CHAT_COMPLETIONS, None),
    (CHAT_COMPLETIONS, ROUTER_QUEUE),  # joining the routers' queue group would steal their requests
    ("llm.v1.>", None),
    (provider_subject("openai"), None),
    (f"{PROVIDER_PREFIX}.*.chat", None),
    (provider_outcome_subject("openai"), None),
    (SECRETS_GET, None),
    (SECRETS_CHANGED, None),
    (CONFIG_LOG, None),
    (CONFIG_EVENTS, None),
    (ROUTER_STATUS, None),
    (ROUTER_REVISIONS, None),
    ("_INBOX_router.>", None),
    ("_INBOX_client.default.>", None),
    ("$JS.API.>", None),
]


@pytest.mark.parametrize("subject", GATEWAY_MAY_NOT_PUBLISH)
def test_the_gateway_identity_may_not_publish_beyond_requests_and_config_reads(broker: Broker, subject: str) -> None:
    errors = run(_attempt(broker, "gateway", _request(subject, b"{}")))
    assert _refused(errors, subject), (subject, errors)


@pytest.mark.parametrize("stream", [CONFIG_STREAM, AUDIT_STREAM, *KV_STREAMS])
def test_the_gateway_identity_cannot_delete_or_purge_any_stream(broker: Broker, stream: str) -> None:
    existing = stream in OWNER  # the breakers bucket is not created here: its refusal is checked all the same
    before = run(_stream_state(broker, stream)) if existing else None
    for op, body in (("DELETE", b""), ("PURGE", b""), ("MSG.DELETE", b'{"seq": 1}')):
        subject = f"$JS.API.STREAM.{op}.{stream}"
        errors = run(_attempt(broker, "gateway", _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)
    if existing:
        assert run(_stream_state(broker, stream)) == before


@pytest.mark.parametrize(("subject", "queue"), GATEWAY_MAY_NOT_SUBSCRIBE)
def test_the_gateway_identity_hears_neither_router_traffic_nor_anyone_elses(
    broker: Broker, subject: str, queue: str | None
) -> None:
    async def subscribe(nc: Client) -> None:
        await nc.subscribe(subject, queue=queue or "")

    errors = run(_attempt(broker, "gateway", subscribe))
    assert _refused(errors, "subscription"), (subject, queue, errors)


def test_a_gateway_request_reaches_a_router_and_the_answers_reach_the_gateway(broker: Broker) -> None:
    """The positive side: a completion request from the gateway is heard by a router (queue group),
    which may answer on the gateway's inbox, and a provider worker may deliver there directly."""

    async def scenario() -> tuple[str, bytes, bytes, list[str]]:
        errors: list[str] = []
        router = await broker.connect("router", errors)
        worker = await broker.connect("providers", errors)
        asked: list[str] = []

        async def answer(msg: Msg) -> None:
            asked.append(msg.reply)
            await router.publish(msg.reply, b"from the router")
            await worker.publish(msg.reply, b"from the worker")

        await router.subscribe(CHAT_COMPLETIONS, queue=ROUTER_QUEUE, cb=answer)
        await router.flush()
        gateway = await broker.connect("gateway", errors)
        inbox = gateway.new_inbox()
        replies = await gateway.subscribe(inbox)
        await gateway.publish(CHAT_COMPLETIONS, b'{"model": "fast", "messages": []}', reply=inbox)
        first = await replies.next_msg(timeout=5)
        second = await replies.next_msg(timeout=5)
        for nc in (gateway, worker, router):
            await nc.close()
        return asked[0], first.data, second.data, errors

    reply, first, second, errors = run(scenario())
    assert reply.startswith("_INBOX_gateway.")
    assert sorted([first, second]) == [b"from the router", b"from the worker"]  # two connections: any order
    assert not [e for e in errors if "permissions violation" in e.lower()], errors


def test_the_gateway_identity_reads_the_routing_configuration_as_a_router_does(broker: Broker) -> None:
    """Stream info, one revision by sequence, and an ordered consumer from the newest record."""

    async def scenario() -> tuple[int, bytes, bytes, list[str]]:
        errors: list[str] = []
        nc = await broker.connect("gateway", errors)
        js = nc.jetstream()
        info = await js.stream_info(CONFIG_STREAM)
        revision = await js.get_msg(CONFIG_STREAM, seq=1)
        records: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_record(msg: Msg) -> None:
            await records.put(msg.data)

        sub = await js.subscribe(
            CONFIG_LOG, stream=CONFIG_STREAM, cb=on_record, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST
        )
        newest = await asyncio.wait_for(records.get(), 5)
        await sub.unsubscribe()
        await nc.close()
        return int(info.state.messages), revision.data or b"", newest, errors

    messages, revision, newest, errors = run(scenario())
    assert messages >= 1 and revision == b'{"revision": 1}' and newest.startswith(b'{"revision"')
    assert not [e for e in errors if "permissions violation" in e.lower()], errors
