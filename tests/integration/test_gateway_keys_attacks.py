"""The gateway key store under attack: every identity tries to read, write or wipe it.

First on a real nats-server with exactly the ``authorization`` block ``modelbus
up`` renders (the bucket made by its owner, ``config-state``, holding one key's
record), then on a whole secure ``modelbus up``. The rules attacked:

* only ``config-state`` writes the bucket (a ``gateway`` that could would let a
  compromised gateway mint its own key; anyone else could too);
* ``gateway`` reads and watches it, and may not write, delete or purge it;
* ``router``, ``router-state``, ``providers``, ``secrets``, ``secrets-state``,
  ``client`` (and ``config``, ``admin``, which go through the admin RPC) cannot
  read it at all: not its stream info, not a consumer, not a single message;
* nobody deletes or purges its stream.

Each refusal is the broker's, read from the error callback (as in
``test_broker_permissions.py``), and the bucket is checked unchanged afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType

from shared import identities
from shared.gateway_keys import StoredKey, stored_key_encoder
from shared.natsserver import EmbeddedNats
from shared.subjects import GATEWAY_KEYS_BUCKET
from tests.conftest import ROOT, run
from tests.integration.secure_stack import start_secure_stack

STREAM = f"KV_{GATEWAY_KEYS_BUCKET}"
RECORD = StoredKey(name="victim", sha256=hashlib.sha256(b"mb-victim").hexdigest(), created="2026-01-01T00:00:00Z")
NO_READERS = ["router", "router-state", "providers", "secrets", "secrets-state", "client", "config", "admin"]
NOT_WRITERS = [r for r in identities.ROLES if r != "config-state"]


class Broker:
    def __init__(self, url: str, passwords: dict[str, str]) -> None:
        self.url, self.passwords = url, passwords

    async def connect(self, role: str, errors: list[str] | None = None) -> Client:
        async def error_cb(err: Exception) -> None:
            if errors is not None:
                errors.append(str(err))

        login = {"user": role, "password": self.passwords[role], "inbox_prefix": identities.inbox_prefix(role)}
        return await nats.connect(self.url, error_cb=error_cb, max_reconnect_attempts=0, **login)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    passwords = {role: secrets.token_urlsafe(24) for role in identities.ROLES}
    server = EmbeddedNats(
        Path(tmp_path_factory.mktemp("key-store-perms")), extra_config=identities.render_authorization(passwords)
    )
    url = server.start()
    b = Broker(url, passwords)
    run(_create_bucket(b))
    try:
        yield b
    finally:
        server.stop()


async def _create_bucket(b: Broker) -> None:
    nc = await b.connect("config-state")  # the owner, as the config service makes it
    kv = await nc.jetstream().create_key_value(
        config=KeyValueConfig(bucket=GATEWAY_KEYS_BUCKET, storage=StorageType.FILE, history=1)
    )
    await kv.put("victim", stored_key_encoder.encode(RECORD))
    await nc.close()


async def _attempt(b: Broker, role: str, action: Callable[[Client], Awaitable[Any]]) -> list[str]:
    """Run ``action`` as ``role``; the broker's permission errors, waited for with a deadline."""
    return await _attempt_with(lambda errors: b.connect(role, errors), action)


async def _attempt_with(
    connect: Callable[[list[str]], Awaitable[Client]], action: Callable[[Client], Awaitable[Any]]
) -> list[str]:
    errors: list[str] = []
    nc = await connect(errors)
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


def _request(subject: str, body: bytes = b"") -> Callable[[Client], Awaitable[Any]]:
    async def action(nc: Client) -> Any:
        await nc.publish(subject, body, reply=nc.new_inbox())

    return action


async def _state(b: Broker) -> tuple[int, int, bytes]:
    """``(messages, last sequence, the victim's value)``, read by the owner."""
    nc = await b.connect("config-state")
    try:
        info = await nc.jetstream().stream_info(STREAM)
        entry = await (await nc.jetstream().key_value(GATEWAY_KEYS_BUCKET)).get("victim")
    finally:
        await nc.close()
    return int(info.state.messages), int(info.state.last_seq), entry.value or b""


# ---------------------------------------------------------------- the gateway: read only


def test_the_gateway_identity_reads_and_watches_the_key_store(broker: Broker) -> None:
    """The control: what the other tests refuse to everyone else works for the gateway."""

    async def read() -> tuple[bytes, bytes]:
        nc = await broker.connect("gateway")
        try:
            kv = await nc.jetstream().key_value(GATEWAY_KEYS_BUCKET)
            entry = await kv.get("victim")
            watcher: Any = await kv.watchall()  # nats-py's watcher is untyped
            first = await watcher.updates(timeout=5)
            await watcher.stop()
            assert first is not None
            return entry.value or b"", first.value or b""
        finally:
            await nc.close()

    got, watched = run(read())
    assert got == watched == stored_key_encoder.encode(RECORD)


def test_the_gateway_identity_cannot_mint_change_or_revoke_a_key(broker: Broker) -> None:
    before = run(_state(broker))
    forged = stored_key_encoder.encode(
        StoredKey(name="minted", sha256=hashlib.sha256(b"mb-attacker").hexdigest(), created="2026-01-01T00:00:00Z")
    )
    for subject, body in (
        (f"$KV.{GATEWAY_KEYS_BUCKET}.minted", forged),
        (f"$KV.{GATEWAY_KEYS_BUCKET}.victim", forged),
        (f"$JS.API.STREAM.UPDATE.{STREAM}", json.dumps({"name": STREAM, "subjects": [">"]}).encode()),
        (f"$JS.API.STREAM.MSG.DELETE.{STREAM}", b'{"seq": 1}'),
        (f"$JS.API.STREAM.PURGE.{STREAM}", b""),
        (f"$JS.API.STREAM.DELETE.{STREAM}", b""),
    ):
        errors = run(_attempt(broker, "gateway", _request(subject, body)))
        assert _refused(errors, subject), (subject, errors)
    assert run(_state(broker)) == before


# ---------------------------------------------------------------- everyone else: nothing


@pytest.mark.parametrize("role", NO_READERS)
def test_no_other_service_or_client_identity_can_read_the_key_store(broker: Broker, role: str) -> None:
    consumer = json.dumps({"stream_name": STREAM, "config": {"ack_policy": "none", "deliver_subject": "x"}})
    for subject, body in (
        (f"$JS.API.STREAM.INFO.{STREAM}", b""),
        (f"$JS.API.CONSUMER.CREATE.{STREAM}", consumer.encode()),
        (f"$JS.API.DIRECT.GET.{STREAM}.$KV.{GATEWAY_KEYS_BUCKET}.victim", b""),
        (f"$JS.API.STREAM.MSG.GET.{STREAM}", f'{{"last_by_subj": "$KV.{GATEWAY_KEYS_BUCKET}.victim"}}'.encode()),
    ):
        errors = run(_attempt(broker, role, _request(subject, body)))
        assert _refused(errors, subject), (role, subject, errors)

    async def listen(nc: Client) -> None:
        await nc.subscribe(f"$KV.{GATEWAY_KEYS_BUCKET}.>")

    assert _refused(run(_attempt(broker, role, listen)), "subscription")


@pytest.mark.parametrize("role", NOT_WRITERS)
def test_only_the_config_state_identity_writes_the_key_store(broker: Broker, role: str) -> None:
    before = run(_state(broker))
    forged = stored_key_encoder.encode(RECORD)
    subject = f"$KV.{GATEWAY_KEYS_BUCKET}.forged-by-{role}"
    errors = run(_attempt(broker, role, _request(subject, forged)))
    assert _refused(errors, subject), errors
    assert run(_state(broker)) == before


@pytest.mark.parametrize("role", identities.ROLES)
def test_no_identity_can_delete_or_purge_the_key_store(broker: Broker, role: str) -> None:
    before = run(_state(broker))
    for op in ("DELETE", "PURGE"):
        subject = f"$JS.API.STREAM.{op}.{STREAM}"
        errors = run(_attempt(broker, role, _request(subject)))
        assert _refused(errors, subject), (subject, errors)
    assert run(_state(broker)) == before


# ---------------------------------------------------------------- a whole secure stack


def test_on_a_secure_stack_the_default_key_works_is_stored_as_a_hash_and_a_revoked_one_stays_revoked(
    tmp_path: Path,
) -> None:
    """``modelbus up`` stores its default key; a gateway-identity attacker cannot add one; ``delete key
    default`` revokes it at once and a restart does not bring it back."""
    home = tmp_path / "home"
    with start_secure_stack(home) as stack:
        info = json.loads((home / identities.CLIENT_FILE).read_text())
        key, url = info["api_key"], info["http_url"]
        assert key == (home / "gateway.key").read_text().strip()
        headers = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/v1/models", headers=headers, timeout=10).status_code == 200

        mint = _request(f"$KV.{GATEWAY_KEYS_BUCKET}.minted", stored_key_encoder.encode(RECORD))
        errors = run(_attempt_with(lambda errs: stack.connect("gateway", errs), mint))
        assert _refused(errors, f"$KV.{GATEWAY_KEYS_BUCKET}.minted"), errors

        done = _cli(home, "delete", "key", "default")
        assert done.returncode == 0, done.stderr
        revoked_at = time.monotonic()
        while httpx.get(f"{url}/v1/models", headers=headers, timeout=10).status_code != 401:
            assert time.monotonic() - revoked_at < 1.0
            time.sleep(0.01)
    log = "".join(stack.output)
    assert key not in log
    with start_secure_stack(home) as again:
        assert "the default API key was revoked" in "".join(again.output)
        info = json.loads((home / identities.CLIENT_FILE).read_text())
        assert "api_key" not in info
        headers = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{info['http_url']}/v1/models", headers=headers, timeout=10).status_code == 401


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELBUS_", "NATS_"))}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(home), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
