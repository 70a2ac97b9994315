"""The gateway's ASGI app without NATS: routing, keys, health, the model list, and the errors
it answers before a request would reach NATS, each in its API's own shape."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import nats.errors
import pytest

from services.gateway.app import Gateway
from services.gateway.config_follower import ConfigFollower
from services.gateway.core import Core
from services.gateway.keys import KeyRing
from services.gateway.upstream import Upstream
from shared.routing import Agent, Alias, Endpoint, RoutingConfig, Target

KEY = "mb-unit-app-key-0123456789"


class FakeNats:
    """Only what the app reads before it would publish."""

    def __init__(self) -> None:
        self.is_connected = True
        self.published: list[Any] = []

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        """Records the request, then fails as nats-py does on a closed connection (no router here)."""
        self.published.append((args, kwargs))
        raise nats.errors.ConnectionClosedError


class Answer:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        start = messages[0]
        self.status: int = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in messages[1:])

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def fake_nats() -> FakeNats:
    return FakeNats()


@pytest.fixture
def app(tmp_path: Path, fake_nats: FakeNats) -> Gateway:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "default", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}))
    nc: Any = fake_nats
    core = Core(upstream=Upstream(nc), follower=ConfigFollower(nc), keys=KeyRing(str(keys)), max_body=1000)
    return Gateway(core)


def call(app: Gateway, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    return Answer(sent)


def install(app: Gateway, routing: RoutingConfig) -> None:
    record = {"revision": routing.revision, "time": "2025-06-01T12:00:00+00:00", "routing": routing}
    asyncio.run(app.core.follower._on_record(SimpleNamespace(data=msgspec.json.encode(record))))  # type: ignore[arg-type]


ROUTING = RoutingConfig(
    revision=3,
    endpoints={
        "mock": Endpoint(name="mock", provider="mock", default_model="m"),
        "bare": Endpoint(name="bare", provider="mock"),
    },
    aliases={"fast": Alias(name="fast", targets=[Target(endpoint="mock", model="m")])},
    agents={"coder": Agent(name="coder", model_ref="fast")},
)


def test_healthz_answers_without_a_key(app: Gateway) -> None:
    answer = call(app, "GET", "/healthz")
    assert (answer.status, answer.json()) == (200, {"status": "ok"})


def test_readyz_is_503_until_a_configuration_is_known_then_200_with_its_revision(app: Gateway) -> None:
    answer = call(app, "GET", "/readyz")
    assert answer.status == 503
    assert answer.json()["reason"] == "no routing configuration known yet"
    install(app, ROUTING)
    answer = call(app, "GET", "/readyz")
    assert (answer.status, answer.json()) == (200, {"status": "ready", "revision": 3})


def test_readyz_is_503_while_nats_is_not_connected(app: Gateway, fake_nats: FakeNats) -> None:
    install(app, ROUTING)
    fake_nats.is_connected = False
    answer = call(app, "GET", "/readyz")
    assert (answer.status, answer.json()["reason"]) == (503, "not connected to NATS")


def test_the_model_list_is_openai_s_shape_with_aliases_endpoints_with_a_default_model_and_agents(app: Gateway) -> None:
    install(app, ROUTING)
    answer = call(app, "GET", "/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert answer.status == 200
    body = answer.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fast", "mock", "coder"]  # "bare" has no default model
    assert body["data"][0] == {"id": "fast", "object": "model", "created": 1748779200, "owned_by": "modelbus"}


def test_the_model_list_takes_an_anthropic_key_header_and_refuses_no_key(app: Gateway) -> None:
    assert call(app, "GET", "/v1/models", headers={"x-api-key": KEY}).status == 200
    answer = call(app, "GET", "/v1/models")
    assert answer.status == 401
    assert answer.json()["error"]["type"] == "authentication_error"


def test_a_wrong_key_is_refused_before_the_body_is_read_or_anything_is_sent(app: Gateway, fake_nats: FakeNats) -> None:
    answer = call(app, "POST", "/v1/chat/completions", b"{}", {"authorization": "Bearer mb-nope"})
    assert answer.status == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert "mb-nope" not in answer.body.decode()
    answer = call(app, "POST", "/v1/messages", b"{}", {"authorization": "Basic abc"})
    assert (answer.status, answer.json()["error"]["type"]) == (401, "authentication_error")
    assert answer.json()["type"] == "error"
    assert fake_nats.published == []


def test_an_openai_key_goes_in_authorization_not_x_api_key(app: Gateway) -> None:
    answer = call(app, "POST", "/v1/chat/completions", b"{}", {"x-api-key": KEY})
    assert (answer.status, answer.json()["error"]["code"]) == (401, "missing_api_key")


def test_a_declared_body_over_the_limit_is_a_413_in_each_api_s_shape(app: Gateway) -> None:
    big = {"content-length": "1001"}
    answer = call(app, "POST", "/v1/chat/completions", b"", {"authorization": f"Bearer {KEY}", **big})
    assert (answer.status, answer.json()["error"]["code"]) == (413, "payload_too_large")
    answer = call(app, "POST", "/v1/messages", b"", {"x-api-key": KEY, **big})
    assert (answer.status, answer.json()["error"]["type"]) == (413, "request_too_large")


def test_a_bad_timeout_header_is_a_400_naming_it_and_nothing_is_sent(app: Gateway, fake_nats: FakeNats) -> None:
    body = b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {"authorization": f"Bearer {KEY}", "x-modelbus-timeout-ms": "soon"}
    answer = call(app, "POST", "/v1/chat/completions", body, headers)
    assert (answer.status, answer.json()["error"]["param"]) == (400, "x-modelbus-timeout-ms")
    assert fake_nats.published == []


def test_a_request_is_published_with_its_body_as_it_came_and_the_nats_headers(
    app: Gateway, fake_nats: FakeNats
) -> None:
    install(app, ROUTING)
    body = b'{"model": "fast",  "messages": [{"role": "user", "content": "hi"}]}'
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": "req-1", "x-modelbus-timeout-ms": "50"}
    answer = call(app, "POST", "/v1/chat/completions", body, headers)
    ((args, kwargs),) = fake_nats.published
    assert args == ("llm.v1.chat.completions", body)
    assert kwargs["headers"]["Modelbus-Request-Id"] == "req-1"
    assert kwargs["headers"]["Modelbus-Timeout-Ms"] == "50"
    assert KEY not in repr(kwargs)
    # The connection is closed: a 503 the client may retry, in OpenAI's shape.
    assert (answer.status, answer.json()["error"]["code"]) == (503, "gateway_disconnected")
    assert (answer.headers["x-should-retry"], answer.headers["x-request-id"]) == ("true", "req-1")


def test_count_tokens_asks_the_routers_for_a_count_with_the_body_as_it_came(app: Gateway, fake_nats: FakeNats) -> None:
    body = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "abcdefgh"}], "new": 1}).encode()
    answer = call(app, "POST", "/v1/messages/count_tokens", body, {"x-api-key": KEY})
    ((args, kwargs),) = fake_nats.published
    assert args == ("llm.v1.chat.completions", body)
    assert kwargs["headers"]["Modelbus-Operation"] == "count_tokens"
    assert kwargs["headers"]["Modelbus-Format"] == "anthropic"
    assert (answer.status, answer.json()["error"]["type"]) == (503, "overloaded_error")  # this fake has no router
    assert answer.headers["request-id"] == answer.headers["x-request-id"]


def test_an_unknown_path_is_a_404_and_a_wrong_method_a_405_in_the_path_s_api_shape(app: Gateway) -> None:
    answer = call(app, "GET", "/v2/anything")
    assert (answer.status, answer.json()["error"]["code"]) == (404, "unknown_url")
    answer = call(app, "POST", "/v1/messages/batches")
    assert (answer.status, answer.json()["error"]["type"]) == (404, "not_found_error")
    answer = call(app, "GET", "/v1/messages")
    assert (answer.status, answer.json()["type"]) == (405, "error")
    answer = call(app, "DELETE", "/v1/models")
    assert (answer.status, answer.json()["error"]["code"]) == (405, "method_not_allowed")


def test_a_trailing_slash_reaches_the_same_endpoint(app: Gateway) -> None:
    assert call(app, "GET", "/healthz/").status == 200
