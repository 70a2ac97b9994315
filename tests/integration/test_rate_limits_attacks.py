"""The rate limit bucket's permissions, attacked on a real nats-server with the rendered authorization.

Only ``router-state`` writes the counters (so no caller can reset or inflate its own or anyone's
count), ``admin`` may read them, nobody else may read, write, purge, delete or reconfigure the
bucket. Each refusal is the broker's (read from the error callback), and the counter is checked
afterwards.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.router.windows import BUCKET_CONFIG
from shared import identities
from shared.natsserver import EmbeddedNats
from shared.subjects import RATE_LIMITS_BUCKET
from tests.conftest import run
from tests.integration.test_broker_permissions import Broker, _attempt, _refused, _request

pytestmark = pytest.mark.timeout(120)

STREAM = f"KV_{RATE_LIMITS_BUCKET}"
KEY = "r.bGltaXQ.YWdlbnQ.1000"
WRITERS = {"router-state"}
READERS = {"router-state", "admin"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    passwords = {role: secrets.token_urlsafe(24) for role in identities.ROLES}
    server = EmbeddedNats(
        Path(tmp_path_factory.mktemp("rate-perms")), extra_config=identities.render_authorization(passwords)
    )
    url = server.start()
    b = Broker(url, passwords)
    run(_count_once(b))
    try:
        yield b
    finally:
        server.stop()


async def _count_once(b: Broker) -> None:
    """The bucket as a router creates it, with one counter in it."""
    nc = await b.connect("router-state")
    try:
        kv = await nc.jetstream().create_key_value(config=BUCKET_CONFIG)
        await kv.put(KEY, b"3 120")
    finally:
        await nc.close()


async def _counter(b: Broker) -> bytes | None:
    nc = await b.connect("router-state")
    try:
        entry = await (await nc.jetstream().key_value(RATE_LIMITS_BUCKET)).get(KEY)
        return entry.value
    finally:
        await nc.close()


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r not in WRITERS])
def test_no_identity_but_the_routers_state_writes_a_counter(broker: Broker, role: str) -> None:
    subject = f"$KV.{RATE_LIMITS_BUCKET}.{KEY}"

    async def reset(nc: Client) -> None:
        await nc.publish(subject, b"0 0")

    errors = run(_attempt(broker, role, reset))
    assert _refused(errors, subject), errors
    assert run(_counter(broker)) == b"3 120"


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r not in WRITERS])
def test_no_identity_but_the_routers_state_creates_purges_deletes_or_reconfigures_the_bucket(
    broker: Broker, role: str
) -> None:
    loosened = json.dumps({"name": STREAM, "subjects": [">"], "max_age": 0}).encode()
    for op, body in (
        ("CREATE", loosened),
        ("UPDATE", loosened),
        ("PURGE", b""),
        ("DELETE", b""),
        ("MSG.DELETE", b'{"seq": 1}'),
    ):
        subject = f"$JS.API.STREAM.{op}.{STREAM}"
        if role == "config-state" and op == "UPDATE":
            continue  # config-state may bring the bucket to MODELBUS_JS_REPLICAS (see shared.identities)
        errors = run(_attempt(broker, role, _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)
    assert run(_counter(broker)) == b"3 120"


@pytest.mark.parametrize("role", [r for r in identities.ROLES if r not in READERS])
def test_no_identity_but_routers_and_admin_reads_the_counters(broker: Broker, role: str) -> None:
    for subject, body in (
        (f"$JS.API.DIRECT.GET.{STREAM}.$KV.{RATE_LIMITS_BUCKET}.{KEY}", b""),
        (f"$JS.API.STREAM.MSG.GET.{STREAM}", b'{"seq": 1}'),
    ):
        errors = run(_attempt(broker, role, _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)


def test_admin_reads_a_counter(broker: Broker) -> None:
    async def read() -> bytes | None:
        nc = await broker.connect("admin")
        try:
            entry = await (await nc.jetstream().key_value(RATE_LIMITS_BUCKET)).get(KEY)
            return entry.value
        finally:
            await nc.close()

    assert run(read()) == b"3 120"
