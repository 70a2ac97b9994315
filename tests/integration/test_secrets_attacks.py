"""Attacks on the secrets service in secure mode: a compromised worker, a rogue requester, a bucket writer.

The main attacks run twice: against a whole secure ``modelbus up`` (the last
section), and, for everything else, against exactly what ``modelbus up``
builds for the secrets service: a real nats-server with the ``authorization`` block of
:func:`shared.identities.render_authorization` (bcrypt hashes, allow-lists),
and the real ``python -m services.secrets`` started with
:func:`shared.identities.connection_env` for ``secrets`` (serving) and
``secrets-state`` (KV and events). Each test connects as the identity an
attacker would hold, attacks, and asserts the service or the broker refuses:

* a compromised provider worker (``providers``, the only identity that may ask
  for credentials) asks for the service's own credentials through ``env:``;
* a requester that names a reply subject which is not an inbox
  (``$KV.modelbus_secrets.<key>``, ``modelbus.v1.secrets.changed``);
* anyone holding ``secrets-state`` (or a copy of the bucket) writes an older
  sealed record back.

Refusals by the broker are asserted through the NATS error callback, not
inferred from timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets as random_tokens
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from services.secrets.store import BUCKET_CONFIG, KEYCHECK_KEY, kv_key
from shared import headers as H
from shared import identities
from shared.envelopes import SecretList
from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats, die_with_parent
from shared.subjects import SECRETS_BUCKET, SECRETS_CHANGED, SECRETS_GET, SECRETS_LIST, SECRETS_PUT
from tests.conftest import ROOT, run, wait_for_line
from tests.unit.services.secrets.legacy_records import legacy_keycheck, legacy_secret

MASTER_KEY = os.urandom(32)
VAULT_TOKEN = "hvs.vault-token-of-the-secrets-service-5f1e"
OTLP_HEADERS = "authorization=Bearer otlp-token-of-the-secrets-service-77ad"
WORKER_KEY = "sk-worker-key-that-may-be-handed-out-0123"
STREAM = f"KV_{SECRETS_BUCKET}"


# ---------------------------------------------------------------- the secure boundary


class Boundary:
    """A nats-server with modelbus's identities, and how to log in as each of them."""

    def __init__(self, url: str, passwords: dict[str, str]) -> None:
        self.url = url
        self.passwords = passwords

    def login(self, role: str) -> dict[str, Any]:
        return {"user": role, "password": self.passwords[role], "inbox_prefix": identities.inbox_prefix(role)}


@contextlib.contextmanager
def secure_boundary(tmp: Path) -> Iterator[Boundary]:
    """A nats-server with the authorization block ``modelbus up`` renders, random passwords per role."""
    passwords = {role: random_tokens.token_urlsafe(24) for role in identities.ROLES}
    server = EmbeddedNats(tmp, log_file=None, extra_config=identities.render_authorization(passwords))
    server.start()
    try:
        yield Boundary(server.url, passwords)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def boundary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boundary]:
    with secure_boundary(tmp_path_factory.mktemp("secure-nats")) as started:
        yield started


class Service:
    """A running secrets service and everything it printed."""

    def __init__(self, proc: subprocess.Popen[str], output: list[str]) -> None:
        self.proc, self.output = proc, output

    def log(self) -> str:
        return "".join(self.output)

    def wait_for_log(self, text: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in the secrets service's log:\n{self.log()[-4000:]}")
            time.sleep(0.02)


def start_service(boundary: Boundary, master_key: bytes = MASTER_KEY) -> Service:
    """The secrets service as ``modelbus up`` starts it in secure mode, with credentials of its own in its env."""
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MODELBUS_", "VAULT_", "OTEL_", "ORLOJ_"))
    }
    env = {
        **inherited,
        "NATS_URL": boundary.url,
        "PYTHONUNBUFFERED": "1",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_HEADERS": OTLP_HEADERS,
        "MODELBUS_MASTER_KEY": base64.b64encode(master_key).decode(),
        "VAULT_TOKEN": VAULT_TOKEN,  # no VAULT_ADDR: Vault stays off, but the token sits in the environment
        "WORKER_API_KEY": WORKER_KEY,
        **identities.connection_env("secrets", boundary.passwords),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.secrets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    wait_for_line(proc, lambda line: READY_MARKER in line, 30, output)
    return Service(proc, output)


def stop_service(service: Service) -> None:
    service.proc.terminate()
    try:
        service.proc.wait(15)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait(5)


@pytest.fixture(scope="module")
def service(boundary: Boundary) -> Iterator[Service]:
    running = start_service(boundary)
    try:
        yield running
    finally:
        stop_service(running)


class Isolated:
    """A boundary and a secrets service of their own: the only member of the queue group, whose reply guard
    has refused nothing yet (it warns on the first refusal and rate-limits later ones)."""

    def __init__(self, boundary: Boundary, service: Service) -> None:
        self.boundary, self.service = boundary, service


@pytest.fixture
def fresh_boundary(tmp_path: Path) -> Iterator[Boundary]:
    """A nats-server with modelbus's identities and an empty secrets bucket, for this test alone."""
    with secure_boundary(tmp_path / "nats") as started:
        yield started


@pytest.fixture
def isolated(fresh_boundary: Boundary) -> Iterator[Isolated]:
    running = start_service(fresh_boundary)
    try:
        yield Isolated(fresh_boundary, running)
    finally:
        stop_service(running)


async def _connect(boundary: Boundary, role: str, errors: list[str] | None = None) -> Client:
    async def error_cb(err: Exception) -> None:
        if errors is not None:
            errors.append(str(err))

    return await nats.connect(boundary.url, error_cb=error_cb, max_reconnect_attempts=0, **boundary.login(role))


async def _request(boundary: Boundary, role: str, subject: str, body: dict[str, Any]) -> tuple[int, bytes]:
    nc = await _connect(boundary, role)
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=10)
    finally:
        await nc.close()
    return int((msg.headers or {})[H.STATUS]), msg.data


def ask(boundary: Boundary, role: str, subject: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """One request as ``role``: the reply's status and raw body."""
    return run(_request(boundary, role, subject, body))


def put(boundary: Boundary, name: str, value: str) -> None:
    status, body = ask(boundary, "config", SECRETS_PUT, {"name": name, "value": value, "actor": "attack-tests"})
    assert status == 200, body


async def _violations(boundary: Boundary, role: str, action: Callable[[Client], Awaitable[None]]) -> list[str]:
    """Run ``action`` as ``role``; the errors the broker reported to the error callback."""
    errors: list[str] = []
    reported = asyncio.Event()

    async def error_cb(err: Exception) -> None:
        errors.append(str(err))
        reported.set()

    nc = await nats.connect(boundary.url, error_cb=error_cb, max_reconnect_attempts=0, **boundary.login(role))
    try:
        await action(nc)
        await nc.flush(timeout=2)
        with contextlib.suppress(TimeoutError):  # the violation arrives asynchronously
            await asyncio.wait_for(reported.wait(), 2)
        await nc.flush(timeout=2)  # and any further ones of the same action
    finally:
        await nc.close()
    return errors


# ---------------------------------------------------------------- a compromised worker and env:


@pytest.mark.parametrize(
    ("variable", "value_of"),
    [
        ("NATS_PASSWORD", lambda b: b.passwords["secrets"]),
        ("MODELBUS_STATE_PASSWORD", lambda b: b.passwords["secrets-state"]),
        ("MODELBUS_MASTER_KEY", lambda b: base64.b64encode(MASTER_KEY).decode()),
        ("VAULT_TOKEN", lambda b: VAULT_TOKEN),
        ("OTEL_EXPORTER_OTLP_HEADERS", lambda b: OTLP_HEADERS),
    ],
)
def test_a_compromised_worker_asking_for_the_services_own_credentials_is_refused_and_gets_no_value(
    boundary: Boundary, service: Service, variable: str, value_of: Callable[[Boundary], str]
) -> None:
    status, body = ask(boundary, "providers", SECRETS_GET, {"ref": f"env:{variable}"})
    assert status == 403, body
    error = json.loads(body)["error"]
    assert error["code"] == "secret_ref_refused"
    assert f"env:{variable}" in error["message"] and "never handed out" in error["message"]
    value = value_of(boundary)
    assert value.encode() not in body and value[-4:].encode() not in body
    assert value not in service.log()


def test_a_worker_still_gets_the_variables_that_are_meant_for_it(boundary: Boundary, service: Service) -> None:
    status, body = ask(boundary, "providers", SECRETS_GET, {"ref": "env:WORKER_API_KEY"})
    assert status == 200, body
    assert json.loads(body)["value"] == WORKER_KEY


# ---------------------------------------------------------------- reply subjects that are not inboxes


async def _request_with_reply(boundary: Boundary, role: str, subject: str, body: dict[str, Any], reply: str) -> None:
    nc = await _connect(boundary, role)
    try:
        await nc.publish(subject, json.dumps(body).encode(), reply=reply)
        await nc.flush(timeout=2)
    finally:
        await nc.close()


async def _stream_last_seq(boundary: Boundary) -> int:
    nc = await _connect(boundary, "secrets-state")
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.last_seq)
    finally:
        await nc.close()


def test_a_credential_request_with_a_kv_key_as_reply_subject_is_dropped_with_a_warning_and_writes_nothing(
    isolated: Isolated,
) -> None:
    boundary, fresh_service = isolated.boundary, isolated.service
    victim = f"$KV.{SECRETS_BUCKET}.{KEYCHECK_KEY}"
    before = run(_stream_last_seq(boundary))
    run(_request_with_reply(boundary, "providers", SECRETS_GET, {"ref": "env:WORKER_API_KEY"}, victim))
    fresh_service.wait_for_log(f"refused a request on {SECRETS_GET} with reply subject {victim!r}")
    assert run(_stream_last_seq(boundary)) == before  # nothing landed in the bucket
    assert WORKER_KEY not in fresh_service.log()


def test_a_credential_request_with_the_changed_subject_as_reply_is_dropped_and_nothing_is_announced(
    isolated: Isolated,
) -> None:
    boundary, fresh_service = isolated.boundary, isolated.service

    async def attack() -> list[bytes]:
        seen: list[bytes] = []
        listener = await _connect(boundary, "providers")  # workers listen to secrets.changed

        async def on_change(msg: Any) -> None:
            seen.append(msg.data)

        await listener.subscribe(SECRETS_CHANGED, cb=on_change)
        await listener.flush()
        try:
            await _request_with_reply(
                boundary, "providers", SECRETS_GET, {"ref": "env:WORKER_API_KEY"}, SECRETS_CHANGED
            )
            await asyncio.to_thread(fresh_service.wait_for_log, f"reply subject {SECRETS_CHANGED!r}")
            await listener.flush()  # anything published before the refusal was logged has arrived by now
        finally:
            await listener.close()
        return seen

    assert run(attack()) == []


def test_a_put_with_a_reply_subject_that_is_no_inbox_stores_nothing(isolated: Isolated) -> None:
    boundary, fresh_service = isolated.boundary, isolated.service
    reply = f"$KV.{SECRETS_BUCKET}.victim"
    body = {"name": "planted-by-reply-trick", "value": "sk-planted-0123456789", "actor": "attacker"}
    run(_request_with_reply(boundary, "config", SECRETS_PUT, body, reply))
    fresh_service.wait_for_log(f"refused a request on {SECRETS_PUT} with reply subject {reply!r}")
    status, listing = ask(boundary, "admin", SECRETS_LIST, {})
    assert status == 200
    assert "planted-by-reply-trick" not in {i.name for i in msgspec.json.decode(listing, type=SecretList).items}


def test_the_serving_identity_may_not_write_the_bucket_or_announce_changes(boundary: Boundary) -> None:
    async def forge(nc: Client) -> None:
        await nc.publish(f"$KV.{SECRETS_BUCKET}.{kv_key('x')}", b"{}")
        await nc.publish(SECRETS_CHANGED, b'{"name": "x", "op": "delete"}')

    errors = run(_violations(boundary, "secrets", forge))
    assert any(f"$kv.{SECRETS_BUCKET}" in e.lower() for e in errors), errors
    assert any(SECRETS_CHANGED in e for e in errors), errors


# ---------------------------------------------------------------- rolled-back records


async def _read_raw(boundary: Boundary, key: str) -> bytes:
    """As ``secrets-state``: the sealed record a key of the secrets bucket holds now (an attacker saves it)."""
    nc = await _connect(boundary, "secrets-state")
    try:
        return (await (await nc.jetstream().key_value(SECRETS_BUCKET)).get(key)).value or b""
    finally:
        await nc.close()


async def _put_raw(boundary: Boundary, key: str, value: bytes, *, create_bucket: bool = False) -> None:
    """As ``secrets-state``: write raw bytes to a key of the secrets bucket."""
    nc = await _connect(boundary, "secrets-state")
    try:
        js = nc.jetstream()
        kv = await (js.create_key_value(config=BUCKET_CONFIG) if create_bucket else js.key_value(SECRETS_BUCKET))
        await kv.put(key, value)
    finally:
        await nc.close()


def roll_back(boundary: Boundary, name: str, old: str, new: str) -> None:
    """Store ``old``, save its sealed record, store ``new``, then write the saved record back."""
    put(boundary, name, old)
    saved = run(_read_raw(boundary, kv_key(name)))
    put(boundary, name, new)
    run(_put_raw(boundary, kv_key(name), saved))


def test_an_older_record_written_back_by_a_bucket_writer_is_detected_and_neither_value_is_served(
    boundary: Boundary, service: Service
) -> None:
    old, new = "sk-revoked-value-0123456789", "sk-current-value-0123456789"
    roll_back(boundary, "rolled-back", old, new)
    status, body = ask(boundary, "providers", SECRETS_GET, {"ref": "secret:rolled-back"})
    assert status >= 500, body
    error = json.loads(body)["error"]
    assert "record for rolled-back was rolled back or replayed" in error["message"]
    assert error["code"] == "secret_replayed"
    for value in (old, new):
        assert value.encode() not in body and value not in service.log()
    status, listing = ask(boundary, "admin", SECRETS_LIST, {})
    (info,) = [i for i in msgspec.json.decode(listing, type=SecretList).items if i.name == "rolled-back"]
    assert (info.key_present, info.key_last4) == (False, None)
    put(boundary, "rolled-back", new)  # the owner stores it again: served again
    status, body = ask(boundary, "providers", SECRETS_GET, {"ref": "secret:rolled-back"})
    assert (status, json.loads(body)["value"]) == (200, new)


def test_the_state_identity_cannot_delete_the_newest_revision_to_expose_an_older_one(boundary: Boundary) -> None:
    async def delete_newest(nc: Client) -> None:
        await nc.publish(f"$JS.API.STREAM.MSG.DELETE.{STREAM}", b'{"seq": 1}')
        await nc.publish(f"$JS.API.STREAM.PURGE.{STREAM}", b"{}")

    errors = run(_violations(boundary, "secrets-state", delete_newest))
    assert any("stream.msg.delete" in e.lower() for e in errors), errors


def test_a_store_in_the_old_format_is_read_once_and_an_old_record_written_back_after_the_upgrade_is_refused(
    fresh_boundary: Boundary,
) -> None:
    boundary = fresh_boundary
    saved = legacy_secret(MASTER_KEY, "legacy-key", "sk-format-1-value-0123456789")
    run(_put_raw(boundary, KEYCHECK_KEY, legacy_keycheck(MASTER_KEY), create_bucket=True))  # as an older modelbus
    run(_put_raw(boundary, kv_key("legacy-key"), saved))
    service = start_service(boundary)
    try:
        status, body = ask(boundary, "providers", SECRETS_GET, {"ref": "secret:legacy-key"})
        assert (status, json.loads(body)["value"]) == (200, "sk-format-1-value-0123456789")
        put(boundary, "legacy-key", "sk-format-2-value-0123456789")  # the next write migrates it
        run(_put_raw(boundary, kv_key("legacy-key"), saved))  # the saved old-format record, written back
        status, body = ask(boundary, "providers", SECRETS_GET, {"ref": "secret:legacy-key"})
        assert status >= 500 and b"record for legacy-key was rolled back or replayed" in body, body
        assert b"sk-format-1-value" not in body and b"sk-format-2-value" not in body
    finally:
        stop_service(service)


# ---------------------------------------------------------------- the admin listing


def test_the_admin_identity_gets_the_listing_with_metadata_and_never_a_value(
    boundary: Boundary, service: Service
) -> None:
    put(boundary, "listed-key", "sk-listed-value-0123456789")
    status, body = ask(boundary, "admin", SECRETS_LIST, {})
    assert status == 200, body
    items = {i.name: i for i in msgspec.json.decode(body, type=SecretList).items}
    listed = items["listed-key"]
    assert (listed.key_present, listed.key_last4, listed.source) == (True, "6789", "store")
    assert listed.updated_at is not None
    assert b"sk-listed-value" not in body


# ---------------------------------------------------------------- the same attacks on a whole `modelbus up`


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boundary]:
    """A secure ``modelbus up`` (its own nats-server, identities, every service); logins from its data dir."""
    home = tmp_path_factory.mktemp("secure-stack")
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env |= {"PYTHONUNBUFFERED": "1", "MODELBUS_ADMIN_HTTP": "off", "WORKER_API_KEY": WORKER_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "--data-dir", str(home), "up", "--nats-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    ready = wait_for_line(proc, lambda line: line.startswith("ready "), 90, output)
    url = ready.split("nats=", 1)[1].split()[0]
    passwords = json.loads((home / identities.IDENTITIES_FILE).read_text())
    try:
        yield Boundary(url, passwords)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("variable", ["NATS_PASSWORD", "MODELBUS_STATE_PASSWORD", "MODELBUS_MASTER_KEY_FILE"])
def test_on_modelbus_up_a_compromised_worker_gets_none_of_the_secrets_services_own_credentials(
    stack: Boundary, variable: str
) -> None:
    status, body = ask(stack, "providers", SECRETS_GET, {"ref": f"env:{variable}"})
    assert status == 403, body
    assert json.loads(body)["error"]["code"] == "secret_ref_refused"
    for role in ("secrets", "secrets-state"):
        assert stack.passwords[role].encode() not in body
    assert ask(stack, "providers", SECRETS_GET, {"ref": "env:WORKER_API_KEY"}) == (
        200,
        msgspec.json.encode({"value": WORKER_KEY, "ttl_s": 300.0}),
    )


def test_on_modelbus_up_an_older_record_written_back_is_detected(stack: Boundary) -> None:
    roll_back(stack, "stack-rolled-back", "sk-stack-old-value-0123456789", "sk-stack-new-value-0123456789")
    status, body = ask(stack, "providers", SECRETS_GET, {"ref": "secret:stack-rolled-back"})
    assert status >= 500 and b"record for stack-rolled-back was rolled back or replayed" in body, body
    assert b"sk-stack-" not in body
