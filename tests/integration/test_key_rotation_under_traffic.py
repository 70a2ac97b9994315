"""Rotating or deleting a stored key takes effect under live traffic, with no restart.

llm-katan (``--validate-keys``) accepts only ``NEWKEY``. The endpoint's key is
the stored secret ``rot/openai``, first set to ``OLDKEY`` with ``modelbus
create secret``. A few clients send requests in a loop, so both provider
workers hold ``OLDKEY`` in their caches (TTL 300 s) and every answer is the
upstream's 401. Setting ``NEWKEY`` under the same name makes the secrets
service announce the change on ``modelbus.v1.secrets.changed``; the workers
drop the cached value and the next request fetches the new one. Deleting the
secret is announced the same way and turns requests into ``502
credential_unavailable`` naming the reference.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg

from shared import headers as H
from shared.client import ModelbusClient
from shared.envelopes import SecretDelete
from shared.natsserver import EmbeddedNats
from shared.subjects import SECRETS_CHANGED, SECRETS_DELETE
from tests.conftest import ROOT, Katan, Stack, run, start_katan, start_stack, stop_process

OLDKEY = f"sk-rotation-old-{secrets.token_hex(8)}"
NEWKEY = f"sk-rotation-new-{secrets.token_hex(8)}"
SECRET_NAME = "rot/openai"
REF = f"secret:{SECRET_NAME}"
CLIENTS = 4
SWITCH_DEADLINE_S = 10.0
AFTER_SWITCH = 40
"""Requests that must start and finish after the switch before the check is done."""
HELLO = [{"role": "user", "content": "hello rotation"}]


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it: when it started and ended, and the status."""

    started: float
    ended: float
    status: int
    code: str | None
    message: str


@dataclass
class Traffic:
    """Clients sending requests in a loop until told to stop, keeping every answer."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    changes: list[tuple[float, str]] = field(default_factory=list)
    """(when, op) of every ``modelbus.v1.secrets.changed`` event for the secret, as this test saw it."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _watcher: ModelbusClient | None = None

    async def start(self) -> None:
        self._watcher = await ModelbusClient.connect(self.url)
        await self._watcher.nc.subscribe(SECRETS_CHANGED, cb=self._on_change)
        await self._watcher.nc.flush()
        for _ in range(CLIENTS):
            client = await ModelbusClient.connect(self.url)
            self._tasks.append(asyncio.create_task(self._loop(client)))

    async def _on_change(self, msg: Msg) -> None:
        change = json.loads(msg.data)
        if change["name"] == SECRET_NAME:
            self.changes.append((time.monotonic(), change["op"]))

    async def _loop(self, client: ModelbusClient) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                reply = await client.request_raw({"messages": HELLO}, timeout=10)
                error = {} if reply.status == 200 else json.loads(reply.body)["error"]
                self.answers.append(
                    Answer(started, time.monotonic(), reply.status, error.get("code"), error.get("message", ""))
                )
        finally:
            await client.close()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._watcher is not None:
            await self._watcher.close()

    def changed(self, op: str, after: float) -> float:
        """When the first ``op`` event at or after ``after`` arrived."""
        return min(t for t, o in self.changes if o == op and t >= after)

    async def wait_for(self, done: Callable[[list[Answer]], bool], what: str, timeout_s: float) -> None:
        """Poll the answers until ``done`` holds; fail naming ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done(self.answers):
            if time.monotonic() > deadline:
                statuses = [a.status for a in self.answers[-20:]]
                pytest.fail(f"{what} did not happen within {timeout_s}s; last statuses: {statuses}")
            for task in self._tasks:
                if task.done():
                    task.result()  # a client that crashed fails the test with its own error
            await asyncio.sleep(0.01)


def _endpoint(katan: Katan) -> str:
    docs = [
        {
            "kind": "ModelEndpoint",
            "metadata": {"name": "rot"},
            "spec": {
                "provider": "openai-compatible",
                "base_url": f"{katan.base_url}/v1",
                "default_model": "echo",
                "auth": {"secretRef": REF},
                "allowPrivate": True,
            },
        },
        {"kind": "ModelAlias", "metadata": {"name": "default"}, "spec": {"targets": [{"endpoint": "rot"}]}},
        # A missing credential is a retryable 502, so after a few of them the breaker would
        # answer instead (503 all_targets_cooling_down); keep it shut so every request after
        # the deletion reaches a provider worker and shows what it got.
        {"kind": "RoutingDefaults", "metadata": {"name": "defaults"}, "spec": {"breaker_failures": 1000}},
    ]
    return "\n---\n".join(json.dumps({"apiVersion": "modelbus.dev/v1", **d}) for d in docs)


@dataclass(frozen=True)
class Setup:
    stack: Stack
    home: Path


@pytest.fixture(scope="module")
def setup(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("rotation")
    katan = start_katan(tmp, "--validate-keys", "--api-keys", f"openai={NEWKEY}")
    config = tmp / "config.yaml"
    config.write_text(_endpoint(katan))
    env = {"MODELBUS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    # Two provider workers: each holds its own cache, and both must drop it.
    stack = start_stack(nats_server.url, config, tmp / "home", env=env, extra_args=["--provider-workers", "2"])
    try:
        yield Setup(stack, tmp / "home")
    finally:
        stop_process(stack.proc)
        stop_process(katan.proc)


async def create_secret(setup: Setup, value: str) -> float:
    """``modelbus create secret rot/openai`` while traffic runs.

    Returns when the CLI printed that the secret is stored, which it does as
    soon as the put is acknowledged (the process takes a while longer to exit).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "--data-dir",
        str(setup.home),
        "create",
        "secret",
        SECRET_NAME,
        "--from-literal",
        f"value={value}",
        cwd=ROOT,
        env={**os.environ, "NATS_URL": setup.stack.url, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    stored_at = None
    async with asyncio.timeout(60):
        async for line in proc.stdout:
            output += line
            if stored_at is None and line.startswith(f"secret {SECRET_NAME} stored".encode()):
                stored_at = time.monotonic()
        await proc.wait()
    assert proc.returncode == 0 and stored_at is not None, output.decode()
    return stored_at


async def delete_secret(setup: Setup) -> float:
    """Delete the stored secret on the admin subject; returns when the deletion was acknowledged."""
    client = await ModelbusClient.connect(setup.stack.url)
    try:
        body = msgspec.json.encode(SecretDelete(name=SECRET_NAME, actor="rotation-test"))
        reply = await client.nc.request(SECRETS_DELETE, body, timeout=10)
    finally:
        await client.close()
    assert (reply.headers or {}).get(H.STATUS) == "200", reply.data
    return time.monotonic()


def _statuses(answers: list[Answer]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for a in answers:
        counts[a.status] = counts.get(a.status, 0) + 1
    return counts


def test_a_key_rotated_under_traffic_is_used_by_the_next_requests_without_a_restart(setup: Setup) -> None:
    async def scenario() -> None:
        await create_secret(setup, OLDKEY)
        traffic = Traffic(setup.stack.url)
        await traffic.start()
        try:
            await traffic.wait_for(lambda got: len(got) >= 3 * CLIENTS, "traffic with the old key", 10)
            warm = list(traffic.answers)
            assert {a.status for a in warm} == {401}, _statuses(warm)  # the upstream rejects OLDKEY

            put_started = time.monotonic()
            put_returned = await create_secret(setup, NEWKEY)
            await traffic.wait_for(
                lambda got: any(a.status == 200 for a in got),
                "a request succeeding with the new key",
                SWITCH_DEADLINE_S,
            )
            first_ok = min(a.ended for a in traffic.answers if a.status == 200)
            await traffic.wait_for(
                lambda got: sum(a.started > first_ok for a in got) >= AFTER_SWITCH,
                f"{AFTER_SWITCH} requests after the switch",
                SWITCH_DEADLINE_S,
            )
        finally:
            await traffic.stop()
        answers = traffic.answers
        announced = traffic.changed("set", put_started)

        # Before the put every request carried the old key and got the upstream's 401; after
        # the first success only the new key is sent; requests in flight at the switch may end either way.
        assert {a.status for a in answers} <= {200, 401}, _statuses(answers)
        before = [a for a in answers if a.ended < put_started]
        assert before and {a.status for a in before} == {401}
        after = [a for a in answers if a.started > first_ok]
        assert len(after) >= AFTER_SWITCH
        assert {a.status for a in after} == {200}, _statuses(after)
        in_flight = [a for a in answers if a.started <= first_ok and a.ended >= announced]
        late = sum(a.status == 401 for a in answers if a.started > put_returned)
        print(
            f"\nkey rotation: {len(answers)} requests from {CLIENTS} clients ({_statuses(answers)}); "
            f"first 200 {1000 * (first_ok - put_returned):+.1f} ms after the put returned "
            f"({1000 * (first_ok - announced):+.1f} ms after the change event); "
            f"{len(in_flight)} in flight at the switch, {late} started after the put returned and still got 401"
        )

    run(scenario())


def test_deleting_the_key_under_traffic_fails_requests_naming_the_reference(setup: Setup) -> None:
    async def scenario() -> None:
        await create_secret(setup, NEWKEY)  # whatever the previous test left, start from a working key
        traffic = Traffic(setup.stack.url)
        await traffic.start()
        try:
            await traffic.wait_for(
                lambda got: sum(a.status == 200 for a in got) >= 2 * CLIENTS, "traffic with the new key", 10
            )
            deleted = await delete_secret(setup)
            await traffic.wait_for(
                lambda got: any(a.status == 502 for a in got), "a request failing for want of the key", 10
            )
            first_failure = min(a.ended for a in traffic.answers if a.status == 502)
            await traffic.wait_for(
                lambda got: sum(a.started > first_failure for a in got) >= AFTER_SWITCH,
                f"{AFTER_SWITCH} requests after the deletion",
                10,
            )
        finally:
            await traffic.stop()

        after = [a for a in traffic.answers if a.started > first_failure]
        assert {(a.status, a.code) for a in after} == {(502, "credential_unavailable")}, _statuses(after)
        assert all(REF in a.message for a in after), after[0].message
        assert all(NEWKEY not in a.message for a in traffic.answers)
        announced = traffic.changed("delete", deleted - 10)
        print(
            f"\nkey deletion: {len(traffic.answers)} requests ({_statuses(traffic.answers)}); first 502 "
            f"{1000 * (first_failure - deleted):+.1f} ms after the delete returned, "
            f"{1000 * (first_failure - announced):+.1f} ms after the change event: {after[0].message}"
        )

    run(scenario())
