"""Broker-enforced identities: `modelbus up` in its default secure mode.

Every refusal is asserted through the NATS error callback (a permissions
violation reported by the broker), not inferred from a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client

from shared import identities
from shared.client import ModelbusClient
from shared.envelopes import Credential, CredentialRequest
from shared.subjects import CHAT_COMPLETIONS, CONFIG_APPLY, CONFIG_LOG, CONFIG_STREAM, SECRETS_GET
from tests.conftest import ROOT, run
from tests.integration.secure_stack import SecureStack, start_secure_stack

SECRET = "sk-secure-mode-test-7f1e"


class Secure(SecureStack):
    """The shared secure stack plus the client credentials file its ready line names."""

    @property
    def creds(self) -> Path:
        return Path(re.search(r"creds=(\S+)", self.ready).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    with start_secure_stack(tmp_path_factory.mktemp("secure-home"), env={"SECURE_TEST_KEY": SECRET}) as stack:
        yield Secure(stack.proc, stack.url, stack.home, stack.ready, stack.output)


async def _violations(url: str, login: dict[str, Any], action: Any) -> list[str]:
    """Run ``action(nc)`` and return the errors the broker reported to the error callback."""
    errors: list[str] = []

    async def error_cb(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(url, error_cb=error_cb, max_reconnect_attempts=0, **login)
    try:
        await action(nc)
        await nc.flush(timeout=2)
        for _ in range(40):  # the violation arrives asynchronously; wait for it, bounded
            if errors:
                break
            await asyncio.sleep(0.025)
    finally:
        await nc.close()
    return errors


async def _ask_secret(nc: Client) -> bytes | None:
    try:
        reply = await nc.request(
            SECRETS_GET, msgspec.json.encode(CredentialRequest(ref="env:SECURE_TEST_KEY")), timeout=1
        )
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None
    data: bytes = reply.data
    return data


def test_the_ready_line_points_to_private_client_credentials(secure: Secure) -> None:
    info = json.loads(secure.creds.read_text())
    assert info["user"] == "client" and info["inbox_prefix"] == "_INBOX_client.default"
    assert secure.creds.stat().st_mode & 0o777 == 0o600
    assert (secure.home / identities.IDENTITIES_FILE).stat().st_mode & 0o777 == 0o600


def test_the_client_identity_from_its_credentials_file_gets_completions(secure: Secure) -> None:
    info = json.loads(secure.creds.read_text())

    async def ask() -> int:
        client = await ModelbusClient.connect(
            info["url"], user=info["user"], password=info["password"], inbox_prefix=info["inbox_prefix"]
        )
        try:
            reply = await client.request_raw({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
        finally:
            await client.close()
        return reply.status

    assert run(ask()) == 200


def test_the_provider_identity_gets_a_secret(secure: Secure) -> None:
    async def ask() -> bytes | None:
        nc = await nats.connect(secure.url, **secure.login("providers"))
        try:
            return await _ask_secret(nc)
        finally:
            await nc.close()

    data = run(ask())
    assert data is not None
    assert msgspec.json.decode(data, type=Credential).value == SECRET


@pytest.mark.parametrize(
    "role", ["router", "router-state", "client", "config", "config-state", "secrets-state", "admin"]
)
def test_other_identities_are_refused_the_secrets_subject_by_the_broker(secure: Secure, role: str) -> None:
    got: list[bytes | None] = []

    async def action(nc: Client) -> None:
        got.append(await _ask_secret(nc))

    errors = run(_violations(secure.url, secure.login(role), action))
    assert got == [None]
    assert any("permissions violation" in e.lower() and SECRETS_GET in e for e in errors), errors


@pytest.mark.parametrize(
    "subject", [">", "_INBOX_router.>", "_INBOX_providers.>", "_INBOX_client.>", "modelbus.v1.secrets.get"]
)
def test_a_client_cannot_subscribe_beyond_its_own_inbox(secure: Secure, subject: str) -> None:
    async def action(nc: Client) -> None:
        await nc.subscribe(subject)

    errors = run(_violations(secure.url, secure.login("client"), action))
    assert any("permissions violation" in e.lower() and "subscription" in e.lower() for e in errors), errors


def test_a_client_cannot_use_admin_subjects(secure: Secure) -> None:
    async def action(nc: Client) -> None:
        await nc.publish(CONFIG_APPLY, b"{}")

    errors = run(_violations(secure.url, secure.login("client"), action))
    assert any("permissions violation" in e.lower() and CONFIG_APPLY in e for e in errors), errors


def test_the_router_reads_configuration_but_cannot_write_it(secure: Secure) -> None:
    # One publish per connection: _violations returns at the first refusal it sees.
    for role in ("router", "router-state"):
        for subject in (CONFIG_LOG, f"$JS.API.STREAM.PURGE.{CONFIG_STREAM}"):

            async def write(nc: Client, subject: str = subject) -> None:
                await nc.publish(subject, b"{}")

            errors = run(_violations(secure.url, secure.login(role), write))
            assert any(subject.lower() in e.lower() for e in errors), (role, subject, errors)

    async def read() -> int:
        nc = await nats.connect(secure.url, **secure.login("router-state"))
        try:
            info = await nc.jetstream().stream_info(CONFIG_STREAM)
        finally:
            await nc.close()
        return int(info.state.last_seq)

    assert run(read()) >= 1


def test_the_admin_identity_applies_configuration(secure: Secure) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(secure.home), "get", "aliases"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
    )
    assert result.returncode == 0, result.stderr
    assert "fast" in result.stdout


def test_a_connection_without_credentials_is_refused(secure: Secure) -> None:
    async def connect() -> None:
        nc = await nats.connect(secure.url, max_reconnect_attempts=0, connect_timeout=2, allow_reconnect=False)
        await nc.close()

    with pytest.raises(Exception, match=r"(?i)authorization"):
        run(connect())


def test_a_completion_publish_is_all_a_client_may_send(secure: Secure) -> None:
    async def action(nc: Client) -> None:
        await nc.publish(CHAT_COMPLETIONS, b"{}")  # allowed (it gets an error reply, not a violation)
        await nc.publish("modelbus.v1.provider.openai.chat", b"{}")  # refused

    errors = run(_violations(secure.url, secure.login("client"), action))
    assert errors and all("modelbus.v1.provider.openai.chat" in e for e in errors), errors
