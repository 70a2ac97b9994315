"""The gateway's copy of the JetStream key store, and what a key's grant allows, without NATS.

A fake connection plays JetStream: stream info (last sequence, message count,
creation time) and an ordered consumer whose deliveries the test makes. What is
checked is the fail-closed rule of :mod:`services.gateway.keys` and the
binding rules of :mod:`services.gateway.core`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.js.errors import NotFoundError

from services.gateway.config_follower import ConfigFollower
from services.gateway.core import Core, agent_for
from services.gateway.keys import SUBJECT_PREFIX, TRUST_FOR_S, Grant, KeyRing, StoreKeys
from shared import headers as H
from shared.errors import AuthenticationError, ModelbusError, NoRouteAvailable, PolicyDenied
from shared.gateway_keys import StoredKey, stored_key_encoder

KEY = "mb-unit-store-key-0123456789"
FILE_KEY = "mb-unit-file-key-0123456789"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSub:
    def __init__(self, cb: Callable[[Any], Awaitable[None]]) -> None:
        self.cb = cb
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


class FakeJetStream:
    def __init__(self) -> None:
        self.entries: list[tuple[str, bytes | None]] = []
        """Every message of the stream, in order (``None``: a delete marker)."""
        self.missing = False
        self.created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self.subs: list[FakeSub] = []

    def put(self, name: str, value: bytes | None) -> int:
        self.entries.append((name, value))
        return len(self.entries)

    async def stream_info(self, name: str) -> Any:
        if self.missing:
            raise NotFoundError
        last = {n: (seq, v) for seq, (n, v) in enumerate(self.entries, 1)}
        state = SimpleNamespace(last_seq=len(self.entries), messages=len(last))
        return SimpleNamespace(created=self.created, state=state)

    async def subscribe(self, subject: str, **kwargs: Any) -> FakeSub:
        sub = FakeSub(kwargs["cb"])
        self.subs.append(sub)
        last = sorted((seq, n, v) for n, (seq, v) in {n: (s, v) for s, (n, v) in enumerate(self.entries, 1)}.items())
        for i, (seq, name, value) in enumerate(last):
            await sub.cb(message(name, value, seq, pending=len(last) - i - 1))
        return sub

    async def deliver(self, name: str, value: bytes | None) -> None:
        """A live change: stored, then delivered to the newest consumer."""
        seq = self.put(name, value)
        await self.subs[-1].cb(message(name, value, seq, pending=0))


def message(name: str, value: bytes | None, seq: int, pending: int) -> Any:
    headers = {"KV-Operation": "DEL"} if value is None else None
    metadata = SimpleNamespace(sequence=SimpleNamespace(stream=seq), num_pending=pending)
    return SimpleNamespace(subject=f"{SUBJECT_PREFIX}{name}", data=value or b"", headers=headers, metadata=metadata)


class FakeNats:
    def __init__(self) -> None:
        self.is_connected = True
        self.stats = {"reconnects": 0}
        self.js = FakeJetStream()

    def jetstream(self) -> FakeJetStream:
        return self.js


def record(name: str, key: str, **fields: Any) -> bytes:
    return stored_key_encoder.encode(StoredKey(name=name, sha256=sha(key), created="2026-01-01T00:00:00Z", **fields))


@pytest.fixture
def nc() -> FakeNats:
    return FakeNats()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def store_of(nc: FakeNats, clock: Clock) -> StoreKeys:
    return StoreKeys(cast(Any, nc), monotonic=clock)


def core_of(store: StoreKeys | None, keys: KeyRing | None = None) -> Core:
    nc: Any = SimpleNamespace(is_connected=True)
    return Core(upstream=cast(Any, None), follower=ConfigFollower(nc), keys=keys, max_body=1000, store=store)


def code_of(action: Callable[[], Any]) -> tuple[type[ModelbusError], str | None]:
    try:
        action()
    except ModelbusError as err:
        return type(err), err.code
    raise AssertionError("no error")


# ---------------------------------------------------------------- the fail-closed rule


def test_before_the_store_is_loaded_every_key_is_a_503_unless_the_key_file_knows_it(
    nc: FakeNats, clock: Clock, tmp_path: Path
) -> None:
    store = store_of(nc, clock)
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "file", "sha256": sha(FILE_KEY)}]}))
    core = core_of(store, KeyRing(str(path)))
    assert not store.trusted
    assert code_of(lambda: core.authorize(KEY, "h")) == (NoRouteAvailable, "key_store_unavailable")
    assert core.authorize(FILE_KEY, "h") == Grant(key="file")


def test_a_loaded_store_grants_its_keys_with_their_binding_and_refuses_others_as_invalid(
    nc: FakeNats, clock: Clock
) -> None:
    nc.js.put("bot", record("bot", KEY, agent="helper"))
    nc.js.put("old", record("old", "mb-old"))
    nc.js.put("old", None)
    store = store_of(nc, clock)
    asyncio.run(store._step())
    assert store.trusted and store.names == ["bot"]
    core = core_of(store)
    assert core.authorize(KEY, "h") == Grant(key="bot", agent="helper")
    assert code_of(lambda: core.authorize("mb-old", "h")) == (AuthenticationError, "invalid_api_key")
    assert code_of(lambda: core.authorize(None, "h")) == (AuthenticationError, "missing_api_key")


def test_a_live_delete_is_refused_at_once_and_a_live_create_works_at_once(nc: FakeNats, clock: Clock) -> None:
    nc.js.put("bot", record("bot", KEY))
    store = store_of(nc, clock)
    core = core_of(store)

    async def scenario() -> None:
        await store._step()
        before = store.grants
        await nc.js.deliver("bot", None)
        assert before is not store.grants  # swapped whole, never changed in place
        assert code_of(lambda: core.authorize(KEY, "h")) == (AuthenticationError, "invalid_api_key")
        await nc.js.deliver("new", record("new", "mb-new"))
        assert core.authorize("mb-new", "h").key == "new"

    asyncio.run(scenario())


def test_after_a_reconnect_no_store_key_is_trusted_until_the_store_is_loaded_again(nc: FakeNats, clock: Clock) -> None:
    nc.js.put("bot", record("bot", KEY))
    store = store_of(nc, clock)
    core = core_of(store)
    asyncio.run(store._step())
    nc.stats["reconnects"] += 1
    assert code_of(lambda: core.authorize(KEY, "h")) == (NoRouteAvailable, "key_store_unavailable")
    asyncio.run(store._step())
    assert store.trusted and len(nc.js.subs) == 2 and nc.js.subs[0].unsubscribed
    nc.is_connected = False
    assert not store.trusted


def test_a_watch_that_stays_behind_the_stream_for_two_checks_is_dropped_and_loaded_again(
    nc: FakeNats, clock: Clock
) -> None:
    nc.js.put("bot", record("bot", KEY))
    store = store_of(nc, clock)

    async def scenario() -> None:
        await store._step()
        nc.js.put("bot", None)  # stored, but the watch never delivers it
        await store._step()
        assert store.trusted  # one check behind: the change may be on its way
        await store._step()
        assert not store.trusted  # still behind: the watch is broken
        await store._step()
        assert store.trusted and KEY not in [k for k in store.grants] and store.names == []

    asyncio.run(scenario())


def test_the_copy_is_trusted_only_for_a_while_after_the_last_good_check(nc: FakeNats, clock: Clock) -> None:
    store = store_of(nc, clock)
    asyncio.run(store._step())
    assert store.trusted
    clock.now += TRUST_FOR_S + 0.01
    assert not store.trusted
    asyncio.run(store._step())
    assert store.trusted


def test_a_bucket_that_does_not_exist_holds_no_key_and_one_that_vanishes_revokes_all(
    nc: FakeNats, clock: Clock
) -> None:
    nc.js.missing = True
    store = store_of(nc, clock)
    core = core_of(store)
    asyncio.run(store._step())
    assert store.trusted
    assert code_of(lambda: core.authorize(KEY, "h")) == (AuthenticationError, "invalid_api_key")
    nc.js.missing = False
    nc.js.put("bot", record("bot", KEY))
    asyncio.run(store._step())
    assert core.authorize(KEY, "h").key == "bot"
    nc.js.missing = True
    asyncio.run(store._step())
    assert code_of(lambda: core.authorize(KEY, "h")) == (AuthenticationError, "invalid_api_key")


def test_a_store_made_anew_is_loaded_again(nc: FakeNats, clock: Clock) -> None:
    nc.js.put("bot", record("bot", KEY))
    store = store_of(nc, clock)
    asyncio.run(store._step())
    nc.js.entries = [("other", record("other", "mb-other"))]
    nc.js.created = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    asyncio.run(store._step())
    asyncio.run(store._step())
    assert store.names == ["other"]


def test_an_expired_or_unreadable_key_is_refused_with_its_own_code(nc: FakeNats, clock: Clock) -> None:
    nc.js.put("gone", record("gone", KEY, expires="2020-01-01T00:00:00Z"))
    nc.js.put("odd", record("odd", "mb-odd", expires="not a time"))
    nc.js.put("junk", b"{not json")
    store = store_of(nc, clock)
    core = core_of(store)
    asyncio.run(store._step())
    assert code_of(lambda: core.authorize(KEY, "h")) == (AuthenticationError, "expired_api_key")
    assert code_of(lambda: core.authorize("mb-odd", "h")) == (AuthenticationError, "expired_api_key")
    assert store.names == ["gone", "odd"]


# ---------------------------------------------------------------- what a grant allows


def test_an_agent_key_routes_as_its_agent_and_may_name_no_other() -> None:
    grant = Grant(key="k", agent="team/coder")
    assert agent_for(grant, None) == "team/coder"
    assert agent_for(grant, "team/coder") == "team/coder"
    with pytest.raises(PolicyDenied, match="routes as agent 'team/coder'") as caught:
        agent_for(grant, "helper")
    assert caught.value.code == "agent_not_allowed" and caught.value.http_status == 403


def test_a_namespace_key_must_name_an_agent_of_its_namespace() -> None:
    grant = Grant(key="k", namespace="team")
    assert agent_for(grant, "coder") == "team/coder"
    assert agent_for(grant, "team/writer") == "team/writer"
    for asked, code in (("other/spy", "agent_not_allowed"), ("teams/x", "agent_not_allowed"), (None, "agent_required")):
        with pytest.raises(PolicyDenied) as caught:
            agent_for(grant, asked)
        assert caught.value.code == code


def test_the_nats_headers_carry_the_grant_s_agent_and_an_unbound_key_s_header_as_sent() -> None:
    core = core_of(None)
    bound, _ = core.nats_headers({}, "rid", Grant(key="k", agent="helper"))
    assert bound[H.AGENT] == "helper"
    free, _ = core.nats_headers({b"x-modelbus-agent": b"anyone"}, "rid", Grant(key="k"))
    assert free[H.AGENT] == "anyone"
    with pytest.raises(PolicyDenied):
        core.nats_headers({b"x-modelbus-agent": b"anyone"}, "rid", Grant(key="k", agent="helper"))
