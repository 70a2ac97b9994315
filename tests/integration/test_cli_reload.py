"""Application identities come and go without a restart: nats-server reloads, on a bare server.

The supervisor of `modelbus up` owns its nats-server; here the test owns one
(an :class:`EmbeddedNats` with every role and a log file) and runs the
supervisor's registry watcher against it, as `modelbus up` does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from services.cli.registry import applied, registry_state, render_authorization, watch_clients
from shared import identities
from shared.natsserver import EmbeddedNats, NatsServerError
from shared.subjects import CHAT_COMPLETIONS
from tests.conftest import run


class Bare:
    def __init__(self, server: EmbeddedNats, home: Path, passwords: dict[str, str]) -> None:
        self.server, self.home, self.passwords = server, home, passwords


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Bare]:
    passwords = identities.load_or_create(tmp_path)
    server = EmbeddedNats(
        tmp_path / "nats", log_file=tmp_path / "nats-server.log", extra_config=render_authorization(passwords, b"")
    )
    server.start()
    try:
        yield Bare(server, tmp_path, passwords)
    finally:
        server.stop()


def _login(path: Path) -> dict[str, Any]:
    info = json.loads(path.read_text())
    return {"user": info["user"], "password": info["password"], "inbox_prefix": info["inbox_prefix"]}


async def _connect(url: str, login: dict[str, Any], errors: list[str] | None = None, **kw: Any) -> Client:
    async def error_cb(err: Exception) -> None:
        if errors is not None:
            errors.append(str(err))

    return await nats.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=error_cb, **login, **kw)


async def _until(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_a_new_application_connects_once_the_supervisor_applied_it(bare: Bare) -> None:
    async def scenario() -> None:
        stamp, _ = registry_state(bare.home)
        watcher = asyncio.create_task(watch_clients(bare.server, bare.home, bare.passwords, stamp))
        try:
            creds = identities.create_client(bare.home, "billing", bare.server.url)
            assert await _until(lambda: applied(bare.home)), "the watcher never acknowledged the new registry"
            nc = await _connect(bare.server.url, _login(creds))
            await nc.publish(CHAT_COMPLETIONS, b"{}")
            await nc.flush(timeout=2)
            await nc.close()
        finally:
            watcher.cancel()

    run(scenario())


def test_a_revoked_application_is_disconnected_and_refused(bare: Bare) -> None:
    async def scenario() -> None:
        creds = identities.create_client(bare.home, "billing", bare.server.url)
        login = _login(creds)
        bare.server.reload(render_authorization(bare.passwords, registry_state(bare.home)[1]))
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        live = await _connect(bare.server.url, login, closed_cb=on_closed)
        identities.delete_client(bare.home, "billing")
        bare.server.reload(render_authorization(bare.passwords, registry_state(bare.home)[1]))
        await asyncio.wait_for(closed.wait(), 5)  # the server closes a removed user's connection itself
        assert live.is_closed
        with pytest.raises(Exception, match=r"(?i)authorization violation"):
            await _connect(bare.server.url, login)

    run(scenario())


@pytest.mark.parametrize("subject", ["_INBOX_client.>", "_INBOX_client.other.>", "_INBOX_client.default.>", ">"])
def test_an_application_cannot_subscribe_to_another_applications_inbox(bare: Bare, subject: str) -> None:
    async def scenario() -> list[str]:
        identities.create_client(bare.home, "other", bare.server.url)
        creds = identities.create_client(bare.home, "billing", bare.server.url)
        bare.server.reload(render_authorization(bare.passwords, registry_state(bare.home)[1]))
        errors: list[str] = []
        nc = await _connect(bare.server.url, _login(creds), errors)
        try:
            await nc.subscribe(subject)
            await nc.subscribe("_INBOX_client.billing.mine")  # its own inbox: allowed
            await nc.flush(timeout=2)
            await _until(lambda: bool(errors), 2)
        finally:
            await nc.close()
        return errors

    errors = run(scenario())
    assert len(errors) == 1 and "permissions violation for subscription" in errors[0].lower(), errors


def test_a_configuration_the_server_refuses_is_reported_and_the_old_one_stays(bare: Bare) -> None:
    with pytest.raises(NatsServerError, match="refused the new configuration"):
        bare.server.reload("authorization { users = [ { user: x, password: \n")

    async def still_serving() -> None:
        nc = await _connect(bare.server.url, {"user": "client", "password": bare.passwords["client"]})
        await nc.close()

    run(still_serving())


def test_the_server_configuration_holds_hashes_and_is_private(bare: Bare) -> None:
    identities.create_client(bare.home, "billing", bare.server.url)
    bare.server.reload(render_authorization(bare.passwords, registry_state(bare.home)[1]))
    text = bare.server.config_file.read_text()
    assert all(password not in text for password in bare.passwords.values())
    assert json.loads((bare.home / "clients" / "billing.json").read_text())["password"] not in text
    assert bare.server.config_file.stat().st_mode & 0o777 == 0o600
    for path in [bare.home / "nats", *(bare.home / "nats").rglob("*"), bare.home / "nats-server.log"]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
