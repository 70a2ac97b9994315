"""The text records' permissions, attacked on a real nats-server with the rendered authorization.

Prompts and completions are the most sensitive thing modelbus stores. Only ``providers`` may
append text records, only ``admin`` may read them, only ``config-state`` may create or
reconfigure the stream, and nobody may delete or purge it or a record of it. Each refusal is
the broker's (read from the error callback), and the stream's content is checked afterwards.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.config.usage_text_stream import ensure_usage_text_stream, usage_text_stream_config
from shared import identities
from shared.natsserver import EmbeddedNats
from shared.subjects import USAGE_TEXT, USAGE_TEXT_STREAM
from shared.usage_text import TextRecord, decode_text_records, join_text_records, text_record_encoder
from tests.conftest import run
from tests.integration.test_broker_permissions import Broker, _attempt, _refused, _request

pytestmark = pytest.mark.timeout(120)

RECORD = join_text_records(
    [text_record_encoder.encode(TextRecord(request_id="t-1", time_ms=1, status=200, request=msgspec.Raw(b"{}")))]
)
SUBJECT = USAGE_TEXT


@pytest.fixture(scope="module")
def text_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    passwords = {role: secrets.token_urlsafe(24) for role in identities.ROLES}
    server = EmbeddedNats(
        Path(tmp_path_factory.mktemp("text-perms")), extra_config=identities.render_authorization(passwords)
    )
    url = server.start()
    b = Broker(url, passwords)
    run(_create_stream(b))
    try:
        yield b
    finally:
        server.stop()


async def _create_stream(b: Broker) -> None:
    """The stream as the config service creates it, and one record from a provider worker."""
    nc = await b.connect("config-state")
    await ensure_usage_text_stream(nc, {})
    await nc.close()
    nc = await b.connect("providers")
    await nc.publish(SUBJECT, RECORD)
    await nc.flush()
    await nc.close()
    assert await _messages(b) == 1


async def _messages(b: Broker) -> int:
    nc = await b.connect("admin")
    try:
        info = await nc.jetstream().stream_info(USAGE_TEXT_STREAM)
    finally:
        await nc.close()
    return int(info.state.messages)


def test_the_text_stream_is_bounded_shorter_than_the_ledger_and_refuses_deletes_by_its_own_settings() -> None:
    config = usage_text_stream_config({})
    assert config.max_age == 30 * 86400
    assert config.max_bytes and config.max_bytes > 0
    assert config.deny_delete and config.deny_purge
    assert config.subjects == [USAGE_TEXT]


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "providers"])
def test_only_the_provider_identity_appends_text_records(text_broker: Broker, role: str) -> None:
    before = run(_messages(text_broker))

    async def forge(nc: Client) -> None:
        await nc.publish(SUBJECT, RECORD)

    errors = run(_attempt(text_broker, role, forge))
    assert _refused(errors, SUBJECT), errors
    assert run(_messages(text_broker)) == before


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "admin"])
def test_no_identity_but_admin_reads_the_text_records(text_broker: Broker, role: str) -> None:
    consumer = json.dumps({"stream_name": USAGE_TEXT_STREAM, "config": {"ack_policy": "none", "deliver_policy": "all"}})
    filtered = json.dumps(
        {"stream_name": USAGE_TEXT_STREAM, "config": {"ack_policy": "none", "filter_subject": SUBJECT}}
    )
    for subject, body in (
        (f"$JS.API.CONSUMER.CREATE.{USAGE_TEXT_STREAM}", consumer.encode()),
        (f"$JS.API.CONSUMER.CREATE.{USAGE_TEXT_STREAM}.loot.{SUBJECT}", filtered.encode()),
        (f"$JS.API.DIRECT.GET.{USAGE_TEXT_STREAM}.{SUBJECT}", b""),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{USAGE_TEXT_STREAM}.loot", consumer.encode()),
        (f"$JS.API.STREAM.MSG.GET.{USAGE_TEXT_STREAM}", b'{"seq": 1}'),
        (f"$JS.API.DIRECT.GET.{USAGE_TEXT_STREAM}", b'{"seq": 1}'),
    ):
        errors = run(_attempt(text_broker, role, _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)


def test_no_identity_can_subscribe_to_text_records_as_they_are_published(text_broker: Broker) -> None:
    """Not even the provider or admin: a core subscription would read every prompt live."""
    for role in identities.ROLES:

        async def listen(nc: Client) -> None:
            await nc.subscribe(USAGE_TEXT)

        errors = run(_attempt(text_broker, role, listen))
        assert _refused(errors, USAGE_TEXT), (role, errors)


def test_admin_reads_the_text_records_of_one_request_with_an_ordered_consumer(text_broker: Broker) -> None:
    async def read() -> TextRecord:
        nc = await text_broker.connect("admin")
        try:
            sub = await nc.jetstream().subscribe(
                SUBJECT,
                stream=USAGE_TEXT_STREAM,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            msg = await sub.next_msg(timeout=5)
            await sub.unsubscribe()
            (record,) = decode_text_records(msg.data)
            return record
        finally:
            await nc.close()

    assert run(read()).request_id == "t-1"


@pytest.mark.parametrize("role", identities.ROLES)
def test_no_identity_can_delete_or_purge_the_text_stream_or_a_record_of_it(text_broker: Broker, role: str) -> None:
    before = run(_messages(text_broker))
    for op, body in (("DELETE", b""), ("PURGE", b""), ("MSG.DELETE", b'{"seq": 1}')):
        subject = f"$JS.API.STREAM.{op}.{USAGE_TEXT_STREAM}"
        errors = run(_attempt(text_broker, role, _request(subject, body)))
        assert _refused(errors, subject), (role, subject, errors)
    assert run(_messages(text_broker)) == before


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r != "config-state"])
def test_only_the_config_state_identity_creates_or_reconfigures_the_text_stream(text_broker: Broker, role: str) -> None:
    loosened = json.dumps({"name": USAGE_TEXT_STREAM, "subjects": [">"], "max_age": 0, "max_bytes": -1}).encode()
    for op in ("CREATE", "UPDATE"):
        subject = f"$JS.API.STREAM.{op}.{USAGE_TEXT_STREAM}"
        errors = run(_attempt(text_broker, role, _request(subject, loosened)))
        assert _refused(errors, subject), (subject, errors)
