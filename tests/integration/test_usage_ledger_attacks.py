"""The usage ledger's permissions, attacked on a real nats-server with the rendered authorization.

Only ``router-state`` may append records, only ``admin`` may read them, only
``config-state`` may create or reconfigure the stream, and nobody may delete or
purge it or a message of it. Each refusal is the broker's (read from the error
callback), and the stream's content is checked afterwards.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.config.usage_stream import ensure_usage_stream, usage_stream_config
from shared import identities
from shared.natsserver import EmbeddedNats
from shared.subjects import USAGE_RECORDS, USAGE_STREAM
from shared.usage import UsageRecord, usage_record_decoder, usage_record_encoder
from tests.conftest import run
from tests.integration.test_broker_permissions import Broker, _attempt, _refused, _request

pytestmark = pytest.mark.timeout(120)

RECORD = usage_record_encoder.encode(UsageRecord(request_id="r-1", time_ms=1, router="rt", seq=1, status=200))


@pytest.fixture(scope="module")
def ledger_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    passwords = {role: secrets.token_urlsafe(24) for role in identities.ROLES}
    server = EmbeddedNats(
        Path(tmp_path_factory.mktemp("ledger-perms")), extra_config=identities.render_authorization(passwords)
    )
    url = server.start()
    b = Broker(url, passwords)
    run(_create_ledger(b))
    try:
        yield b
    finally:
        server.stop()


async def _create_ledger(b: Broker) -> None:
    """The stream as the config service creates it, and one record from a router."""
    nc = await b.connect("config-state")
    await ensure_usage_stream(nc, {})
    await nc.close()
    nc = await b.connect("router-state")
    await nc.publish(USAGE_RECORDS, RECORD)
    await nc.flush()
    await nc.close()
    assert await _messages(b) == 1


async def _messages(b: Broker) -> int:
    nc = await b.connect("admin")
    try:
        info = await nc.jetstream().stream_info(USAGE_STREAM)
    finally:
        await nc.close()
    return int(info.state.messages)


def test_the_stream_is_bounded_and_refuses_deletes_and_purges_by_its_own_settings(ledger_broker: Broker) -> None:
    config = usage_stream_config({})
    assert config.max_age and config.max_age > 0
    assert config.max_bytes and config.max_bytes > 0
    assert config.deny_delete and config.deny_purge


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "router-state"])
def test_only_the_routers_state_identity_appends_usage_records(ledger_broker: Broker, role: str) -> None:
    before = run(_messages(ledger_broker))

    async def forge(nc: Client) -> None:
        await nc.publish(USAGE_RECORDS, RECORD)

    errors = run(_attempt(ledger_broker, role, forge))
    assert _refused(errors, USAGE_RECORDS), errors
    assert run(_messages(ledger_broker)) == before


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "admin"])
def test_no_identity_but_admin_reads_the_usage_records(ledger_broker: Broker, role: str) -> None:
    consumer = json.dumps({"stream_name": USAGE_STREAM, "config": {"ack_policy": "none", "deliver_policy": "all"}})
    for subject, body in (
        (f"$JS.API.CONSUMER.CREATE.{USAGE_STREAM}", consumer.encode()),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{USAGE_STREAM}.loot", consumer.encode()),
        (f"$JS.API.STREAM.MSG.GET.{USAGE_STREAM}", b'{"seq": 1}'),
        (f"$JS.API.DIRECT.GET.{USAGE_STREAM}", b'{"seq": 1}'),
    ):
        errors = run(_attempt(ledger_broker, role, _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)


def test_admin_reads_the_usage_records_with_an_ordered_consumer(ledger_broker: Broker) -> None:
    async def read() -> UsageRecord:
        nc = await ledger_broker.connect("admin")
        try:
            sub = await nc.jetstream().subscribe(
                USAGE_RECORDS,
                stream=USAGE_STREAM,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            msg = await sub.next_msg(timeout=5)
            await sub.unsubscribe()
            return usage_record_decoder.decode(msg.data)
        finally:
            await nc.close()

    assert run(read()).request_id == "r-1"


@pytest.mark.parametrize("role", identities.ROLES)
def test_no_identity_can_delete_or_purge_the_usage_ledger_or_a_record_of_it(ledger_broker: Broker, role: str) -> None:
    before = run(_messages(ledger_broker))
    for op, body in (("DELETE", b""), ("PURGE", b""), ("MSG.DELETE", b'{"seq": 1}')):
        subject = f"$JS.API.STREAM.{op}.{USAGE_STREAM}"
        errors = run(_attempt(ledger_broker, role, _request(subject, body)))
        assert _refused(errors, subject), (role, subject, errors)
    assert run(_messages(ledger_broker)) == before


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "config-state"])
def test_only_the_config_state_identity_creates_or_reconfigures_the_usage_ledger(
    ledger_broker: Broker, role: str
) -> None:
    loosened = json.dumps({"name": USAGE_STREAM, "subjects": [">"], "max_age": 0, "max_bytes": -1}).encode()
    for op in ("CREATE", "UPDATE"):
        subject = f"$JS.API.STREAM.{op}.{USAGE_STREAM}"
        errors = run(_attempt(ledger_broker, role, _request(subject, loosened)))
        assert _refused(errors, subject), (subject, errors)


def test_even_the_config_state_identity_cannot_turn_deletes_back_on(ledger_broker: Broker) -> None:
    """It may change the retention; the server itself refuses lifting ``deny_delete``/``deny_purge``."""

    async def loosen() -> str:
        nc = await ledger_broker.connect("config-state")
        try:
            js = nc.jetstream()
            config = (await js.stream_info(USAGE_STREAM)).config
            config.deny_delete = False
            config.deny_purge = False
            try:
                await js.update_stream(config)
            except Exception as exc:
                return str(exc)
            return "updated"
        finally:
            await nc.close()

    assert run(loosen()) != "updated"
    assert run(_messages(ledger_broker)) >= 1
