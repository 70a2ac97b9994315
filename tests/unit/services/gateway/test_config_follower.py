"""Which configuration record the gateway keeps, and the model list it builds from it."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import msgspec

from services.gateway.config_follower import ConfigFollower, model_ids
from shared.routing import Agent, Alias, Endpoint, RoutingConfig, Target


def routing(revision: int, *aliases: str) -> RoutingConfig:
    return RoutingConfig(
        revision=revision,
        endpoints={"mock": Endpoint(name="mock", provider="mock", default_model="m")},
        aliases={a: Alias(name=a, targets=[Target(endpoint="mock", model="m")]) for a in aliases},
    )


def deliver(follower: ConfigFollower, data: bytes) -> None:
    asyncio.run(follower._on_record(SimpleNamespace(data=data)))  # type: ignore[arg-type]


def record(config: RoutingConfig, time: str = "2025-01-01T00:00:00Z") -> bytes:
    return msgspec.json.encode({"revision": config.revision, "time": time, "actor": "test", "routing": config})


def follower() -> ConfigFollower:
    nc: Any = SimpleNamespace()
    return ConfigFollower(nc)


def ids(f: ConfigFollower) -> list[str]:
    return [m["id"] for m in json.loads(f.models)["data"]]


def test_before_any_record_the_model_list_is_empty_and_no_revision_is_known() -> None:
    f = follower()
    assert f.revision is None
    assert json.loads(f.models) == {"object": "list", "data": []}


def test_a_newer_record_replaces_the_list_and_an_older_one_does_not() -> None:
    f = follower()
    deliver(f, record(routing(2, "fast")))
    deliver(f, record(routing(3, "fast", "smart")))
    deliver(f, record(routing(1, "old")))
    assert f.revision == 3
    assert ids(f) == ["fast", "smart", "mock"]


def test_an_unreadable_record_is_ignored() -> None:
    f = follower()
    deliver(f, record(routing(2, "fast")))
    deliver(f, b'{"revision": "three"}')
    assert (f.revision, ids(f)) == (2, ["fast", "mock"])


def test_created_is_the_revision_s_time_and_zero_when_it_cannot_be_read() -> None:
    f = follower()
    deliver(f, record(routing(1, "fast"), time="2025-01-01T00:00:00Z"))
    assert json.loads(f.models)["data"][0]["created"] == 1735689600
    deliver(f, record(routing(2, "fast"), time="yesterday"))
    assert json.loads(f.models)["data"][0]["created"] == 0


def test_an_agent_named_like_an_alias_is_listed_once() -> None:
    config = RoutingConfig(
        revision=1,
        endpoints={},
        aliases={"coder": Alias(name="coder", targets=[Target(endpoint="e", model="m")])},
        agents={"coder": Agent(name="coder", model_ref="coder"), "a/reviewer": Agent(name="a/reviewer", model_ref="x")},
    )
    assert model_ids(config) == ["coder", "a/reviewer"]


def test_a_bound_key_s_list_is_its_agent_or_its_namespace_s_agents_built_once_per_revision() -> None:
    f = follower()
    agents = {n: Agent(name=n, model_ref="mock") for n in ("helper", "team/coder", "team/writer", "other/spy")}
    deliver(f, record(msgspec.structs.replace(routing(1, "fast"), agents=agents)))

    def listed(body: bytes) -> list[str]:
        return [m["id"] for m in json.loads(body)["data"]]

    assert f.models_for(None, None) is f.models
    assert listed(f.models_for("helper", None)) == ["helper"]
    assert listed(f.models_for(None, "team")) == ["team/coder", "team/writer"]
    assert listed(f.models_for("team/gone", None)) == []
    assert f.models_for(None, "team") is f.models_for(None, "team")  # cached, not rebuilt per request
    cached = f.models_for(None, "team")
    deliver(f, record(routing(2, "fast")))
    assert f.models_for(None, "team") is not cached and listed(f.models_for(None, "team")) == []
