"""The config service's HTTP admin API end to end, against real processes.

The stack boots with AuroraSOC settings for an ``openai`` backend that points
at llm-katan (a real OpenAI-compatible server that checks keys) with a key it
rejects, so a key set over HTTP is visibly the one that reaches the upstream.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from shared import headers as H
from shared.admin import RouterList, WaitRequest
from shared.client import ModelbusClient, Reply
from shared.envelopes import SecretList, SecretsDescribe
from shared.errors import error_from_wire
from shared.natsserver import EmbeddedNats, die_with_parent
from shared.subjects import CONFIG_WAIT, SECRETS_DESCRIBE
from tests.conftest import (
    ROOT,
    Katan,
    Stack,
    private_nats,
    run,
    start_katan,
    start_stack,
    stop_process,
    wait_for_line,
)

TOKEN = "admin-token-for-tests-5b2e0c"
RIGHT_KEY = "katan-right-key-7c1f9e4d"
WRONG_KEY = "env-wrong-key-0000aaaa"
LISTENING = re.compile(r"admin http listening on (http://127\.0\.0\.1:\d+)")
READY_ADMIN = re.compile(r"modelbus-service-ready modelbus\.config config admin=(http://127\.0\.0\.1:\d+)")
AUDIT_KEY = base64.b64encode(bytes(range(32))).decode()  # test only
HELLO = [{"role": "user", "content": "hello admin"}]


def native(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": metadata, "spec": spec}


def documents(*docs: dict[str, Any]) -> str:
    return "\n---\n".join(json.dumps(d) for d in docs)


class Admin:
    """An HTTP client for the admin API that keeps every reply, for the leak checks."""

    def __init__(self, base_url: str, token: str | None = TOKEN) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=30)
        self.replies: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        self.replies.append(f"{response.headers}\n{response.text}")
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture(scope="module")
def katan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Katan]:
    k = start_katan(tmp_path_factory.mktemp("katan"), "--validate-keys", "--api-keys", f"openai={RIGHT_KEY}")
    yield k
    stop_process(k.proc)


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, katan: Katan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "MODELBUS_ADMIN_HTTP": "127.0.0.1:0",
        "MODELBUS_ADMIN_TOKEN": TOKEN,
        "MODELBUS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        # AuroraSOC boot settings: the OpenAI-compatible backend, played by llm-katan, with a key it rejects.
        "LLM_BACKEND": "openai",
        "LLM_OPENAI_COMPATIBLE_BASE_URL": f"{katan.base_url}/v1",
        "LLM_OPENAI_COMPATIBLE_MODEL": "echo",
        "LLM_OPENAI_COMPATIBLE_API_KEY": WRONG_KEY,
    }
    s = start_stack(nats_server.url, None, tmp_path_factory.mktemp("home"), env=env)
    try:
        yield s
    finally:
        stop_process(s.proc)


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Admin]:
    found = LISTENING.search(stack.log())
    assert found, stack.log()
    client = Admin(found.group(1))
    yield client
    client.http.close()


async def _nats(url: str, subject: str, request: Any) -> tuple[int, bytes]:
    client = await ModelbusClient.connect(url)
    try:
        msg = await client.nc.request(subject, request if isinstance(request, bytes) else msgspec.json.encode(request))
    finally:
        await client.close()
    return int((msg.headers or {}).get(H.STATUS, "0")), msg.data


def wait_routers(url: str, revision: int) -> None:
    status, body = run(_nats(url, CONFIG_WAIT, WaitRequest(revision=revision, timeout_ms=10_000)))
    if status != 200:
        raise error_from_wire(status, body)
    assert all(r.revision >= revision for r in msgspec.json.decode(body, type=RouterList).items)


async def _complete(url: str, model: str) -> Reply:
    client = await ModelbusClient.connect(url)
    try:
        return await client.request_raw({"model": model, "messages": HELLO}, timeout=20)
    finally:
        await client.close()


def complete(url: str, model: str) -> Reply:
    return run(_complete(url, model))


def providers(admin: Admin) -> dict[str, Any]:
    reply = admin.get("/api/v1/system/llm/providers")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def provider(admin: Admin, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in providers(admin)["providers"] if p["name"] == name)
    return found


def error_of(reply: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = reply.json()["error"]
    assert set(body) == {"message", "type", "code", "param", "retryable"}
    return body


# ---------------------------------------------------------------- auth and plumbing


def test_healthz_answers_without_a_token(admin: Admin) -> None:
    reply = httpx.get(f"{admin.base_url}/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/api/v1/system/llm/providers", "/api/v1/resources", "/api/v1/audit/verify"])
def test_a_request_without_a_token_is_refused_with_401(admin: Admin, path: str) -> None:
    reply = httpx.get(f"{admin.base_url}{path}")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert error_of(reply)["type"] == "authentication_error"


def test_a_wrong_token_is_refused_with_401_and_changes_nothing(admin: Admin) -> None:
    wrong = Admin(admin.base_url, token="not-the-token")
    reply = wrong.put("/api/v1/system/llm/config", json={"provider": "mock"})
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "invalid_admin_token"
    assert TOKEN not in reply.text
    assert providers(admin)["active_backend"] == "openai"


def test_an_unknown_route_is_404_in_the_error_envelope(admin: Admin) -> None:
    reply = admin.get("/api/v1/nothing/here")
    assert reply.status_code == 404
    assert error_of(reply)["type"] == "not_found_error"


def test_a_wrong_method_is_405_in_the_error_envelope(admin: Admin) -> None:
    reply = admin.post("/api/v1/routers")
    assert reply.status_code == 405
    assert error_of(reply)["code"] == "method_not_allowed"


def test_malformed_json_is_a_400(admin: Admin) -> None:
    reply = admin.put("/api/v1/system/llm/config", content=b'{"provider": "mock"')
    assert reply.status_code == 400
    assert error_of(reply)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"provider": 5}, "provider"), ({}, "provider"), ({"provider": "mock", "modle": "x"}, "modle")],
)
def test_a_wrong_type_missing_or_unknown_field_is_a_400_naming_it(
    admin: Admin, body: dict[str, Any], field: str
) -> None:
    reply = admin.put("/api/v1/system/llm/config", json=body)
    assert reply.status_code == 400
    error = error_of(reply)
    assert error["param"] == field
    assert field in error["message"]


def test_a_body_over_4_mib_is_refused_with_413(admin: Admin) -> None:
    reply = admin.post("/api/v1/apply", content=b"#" * (4 * 1024 * 1024 + 1))
    assert reply.status_code == 413
    assert error_of(reply)["code"] == "payload_too_large"


def test_a_chunked_body_over_4_mib_is_refused_with_413(admin: Admin) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"#" * (1024 * 1024)

    reply = admin.post("/api/v1/apply", content=chunks())
    assert reply.status_code == 413


# ---------------------------------------------------------------- AuroraSOC provider API


def test_the_inventory_lists_endpoints_with_key_presence_and_never_a_value(admin: Admin, katan: Katan) -> None:
    inventory = providers(admin)
    assert inventory["active_backend"] == "openai"
    by_name = {p["name"]: p for p in inventory["providers"]}
    assert by_name["openai"] == {
        "name": "openai",
        "provider": "openai-compatible",
        "model": "echo",
        "base_url": f"{katan.base_url}/v1",
        "key_present": True,
        "key_last4": WRONG_KEY[-4:],
        "source": "env",
        "data_leaves_host": False,  # llm-katan is on loopback
        "active": True,
        "auth_ref": "env:LLM_OPENAI_COMPATIBLE_API_KEY",
    }
    assert by_name["mock"]["key_present"] is False
    assert by_name["mock"]["source"] is None
    assert by_name["mock"]["active"] is False
    assert WRONG_KEY not in json.dumps(inventory)


def test_a_key_put_over_http_is_stored_and_carried_upstream_but_never_shown(admin: Admin, stack: Stack) -> None:
    rejected = complete(stack.url, "openai")
    assert rejected.status == 401, rejected.body  # llm-katan refuses the environment's key

    reply = admin.put("/api/v1/system/llm/providers/openai/key", json={"api_key": RIGHT_KEY})
    assert reply.status_code == 200, reply.text
    key = reply.json()
    assert key["name"] == "openai"
    assert (key["key_present"], key["key_last4"], key["source"]) == (True, RIGHT_KEY[-4:], "store")
    assert key["auth_ref"] == "secret:llm-providers/openai"
    assert key["updated_at"]

    shown = provider(admin, "openai")
    assert (shown["key_present"], shown["key_last4"], shown["source"]) == (True, RIGHT_KEY[-4:], "store")

    wait_routers(stack.url, key["revision"])
    answered = complete(stack.url, "openai")
    assert answered.status == 200, answered.body
    assert answered.headers[H.ENDPOINT] == "openai"

    history = admin.get("/api/v1/history", params={"kind": "ModelEndpoint", "name": "openai", "limit": 1}).json()
    assert history["items"][0]["actor"] == "http:admin"
    assert all(RIGHT_KEY not in text for text in admin.replies)
    assert RIGHT_KEY not in stack.log()


def test_deleting_the_key_reverts_the_endpoint_to_the_environment_key(admin: Admin, stack: Stack) -> None:
    assert admin.put("/api/v1/system/llm/providers/openai/key", json={"api_key": RIGHT_KEY}).status_code == 200

    reply = admin.delete("/api/v1/system/llm/providers/openai/key")
    assert reply.status_code == 200, reply.text
    key = reply.json()
    assert key["auth_ref"] == "env:LLM_OPENAI_COMPATIBLE_API_KEY"
    assert (key["key_present"], key["key_last4"], key["source"]) == (True, WRONG_KEY[-4:], "env")
    endpoint = admin.get("/api/v1/resources/ModelEndpoint/openai").json()["items"][0]
    assert endpoint["spec"]["auth"] == {"secretRef": "env:LLM_OPENAI_COMPATIBLE_API_KEY"}

    wait_routers(stack.url, key["revision"])
    assert complete(stack.url, "openai").status == 401
    assert admin.delete("/api/v1/system/llm/providers/openai/key").status_code == 200  # idempotent
    assert all(RIGHT_KEY not in text for text in admin.replies)


def test_key_changes_are_in_the_audit_log_and_the_chain_verifies(admin: Admin) -> None:
    admin.put("/api/v1/system/llm/providers/mock/key", json={"api_key": "mock-key-long-enough"})
    admin.delete("/api/v1/system/llm/providers/mock/key")
    report = admin.get("/api/v1/audit/verify").json()
    assert report["ok"] is True, report
    assert report["entries"] >= 4


def test_a_key_for_an_unknown_provider_is_404_and_an_empty_key_is_400(admin: Admin) -> None:
    missing = admin.put("/api/v1/system/llm/providers/deepseek/key", json={"api_key": "sk-something-long"})
    assert missing.status_code == 404
    assert "'deepseek'" in error_of(missing)["message"]
    empty = admin.put("/api/v1/system/llm/providers/openai/key", json={"api_key": "  "})
    assert empty.status_code == 400
    assert error_of(empty)["param"] == "api_key"


def test_putting_config_switches_the_default_alias_and_orchestrator(admin: Admin, stack: Stack) -> None:
    reply = admin.put(
        "/api/v1/system/llm/config", json={"provider": "mock", "model": "mock-fast", "orchestrator_model": "mock-smart"}
    )
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert {(c["kind"], c["name"]) for c in result["changes"]} == {
        ("ModelAlias", "default"),
        ("ModelAlias", "orchestrator"),
        ("ModelEndpoint", "mock"),
    }
    inventory = providers(admin)
    assert inventory["active_backend"] == "mock"
    assert {p["name"]: p["model"] for p in inventory["providers"]}["mock"] == "mock-fast"

    wait_routers(stack.url, result["revision"])
    answered = complete(stack.url, "default")
    assert answered.status == 200, answered.body
    assert (answered.headers[H.ENDPOINT], answered.headers[H.MODEL]) == ("mock", "mock-fast")
    orchestrated = complete(stack.url, "orchestrator")
    assert orchestrated.headers[H.MODEL] == "mock-smart"

    back = admin.put("/api/v1/system/llm/config", json={"provider": "openai"})
    assert back.status_code == 200
    assert providers(admin)["active_backend"] == "openai"


def test_a_base_url_update_changes_the_endpoint(admin: Admin, katan: Katan) -> None:
    spare = native(
        "ModelEndpoint",
        "spare",
        {"provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "default_model": "x"},
    )
    assert admin.post("/api/v1/apply", content=documents(spare)).status_code == 200
    reply = admin.put(
        "/api/v1/system/llm/config", json={"provider": "spare", "base_url": f"{katan.base_url}/v1", "model": "echo"}
    )
    assert reply.status_code == 200, reply.text
    assert provider(admin, "spare")["base_url"] == f"{katan.base_url}/v1"
    assert admin.put("/api/v1/system/llm/config", json={"provider": "openai"}).status_code == 200


def test_config_for_an_unknown_provider_is_404_naming_it(admin: Admin) -> None:
    reply = admin.put("/api/v1/system/llm/config", json={"provider": "anthropic"})
    assert reply.status_code == 404
    error = error_of(reply)
    assert "'anthropic'" in error["message"]
    assert error["param"] == "provider"


def test_gemini_takes_no_base_url(admin: Admin) -> None:
    gemini = native("ModelEndpoint", "gemini", {"provider": "gemini", "default_model": "gemini-2.5-pro"})
    assert admin.post("/api/v1/apply", content=documents(gemini)).status_code == 200
    before = admin.get("/api/v1/history", params={"limit": 1}).json()["items"][0]["revision"]
    reply = admin.put("/api/v1/system/llm/config", json={"provider": "gemini", "base_url": "https://example.com"})
    assert reply.status_code == 400
    assert error_of(reply)["message"] == "Gemini takes no base_url"
    assert admin.get("/api/v1/history", params={"limit": 1}).json()["items"][0]["revision"] == before


def test_the_probe_reports_ok_with_latency_and_the_model_that_answered(admin: Admin) -> None:
    reply = admin.post("/api/v1/system/llm/providers/mock/test", json={"timeout_ms": 10_000})
    assert reply.status_code == 200, reply.text
    probe = reply.json()
    assert probe["ok"] is True
    assert probe["latency_ms"] > 0
    assert (probe["model"], probe["endpoint"], probe["error"]) == (provider(admin, "mock")["model"], "mock", None)


def test_the_probe_of_an_endpoint_on_a_closed_port_reports_the_error(admin: Admin, stack: Stack) -> None:
    closed = native(
        "ModelEndpoint",
        "closed-port",
        {
            "provider": "openai-compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "default_model": "x",
            "timeout_ms": 2000,
            "allowPrivate": True,  # reach the closed port rather than be stopped by the SSRF guard
        },
    )
    result = admin.post("/api/v1/apply", content=documents(closed)).json()
    wait_routers(stack.url, result["revision"])
    reply = admin.post("/api/v1/system/llm/providers/closed-port/test")
    assert reply.status_code == 200, reply.text
    probe = reply.json()
    assert probe["ok"] is False
    assert probe["model"] is None
    assert probe["error"]["status"] == 503
    assert probe["error"]["code"] == "upstream_unavailable"
    assert probe["latency_ms"] > 0


def test_the_probe_of_an_unknown_endpoint_is_404_and_a_bad_timeout_400(admin: Admin) -> None:
    assert admin.post("/api/v1/system/llm/providers/nope/test").status_code == 404
    reply = admin.post("/api/v1/system/llm/providers/mock/test", json={"timeout_ms": 0})
    assert reply.status_code == 400
    assert error_of(reply)["param"] == "timeout_ms"


def test_secrets_describe_reports_presence_and_provenance_without_values(admin: Admin, stack: Stack) -> None:
    assert admin.put("/api/v1/system/llm/providers/openai/key", json={"api_key": RIGHT_KEY}).status_code == 200
    refs = [
        "secret:llm-providers/openai",
        "env:LLM_OPENAI_COMPATIBLE_API_KEY",
        "env:UNSET_VAR",
        "secret:nope",
        "no way",
    ]
    status, body = run(_nats(stack.url, SECRETS_DESCRIBE, SecretsDescribe(refs=refs)))
    assert status == 200, body
    items = msgspec.json.decode(body, type=SecretList).items
    assert [i.name for i in items] == refs
    assert [(i.key_present, i.source, i.key_last4) for i in items] == [
        (True, "store", RIGHT_KEY[-4:]),
        (True, "env", WRONG_KEY[-4:]),
        (False, None, None),
        (False, None, None),
        (False, None, None),
    ]
    assert items[0].updated_at
    assert RIGHT_KEY.encode() not in body and WRONG_KEY.encode() not in body
    status, _ = run(_nats(stack.url, SECRETS_DESCRIBE, b'{"refs": "not a list"}'))
    assert status == 400
    assert admin.delete("/api/v1/system/llm/providers/openai/key").status_code == 200


# ---------------------------------------------------------------- resources


def test_apply_with_dry_run_reports_changes_and_stores_nothing(admin: Admin) -> None:
    alias = native("ModelAlias", "dry", {"targets": [{"endpoint": "mock", "model": "mock-dry"}]})
    reply = admin.post("/api/v1/apply", params={"dry_run": "true"}, content=documents(alias))
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["dry_run"] is True
    assert result["changes"] == [{"op": "create", "kind": "ModelAlias", "name": "dry"}]
    assert admin.get("/api/v1/resources/ModelAlias/dry").status_code == 404


def test_apply_get_by_namespaced_name_and_delete(admin: Admin) -> None:
    endpoint = native("ModelEndpoint", "katan", {"provider": "mock", "default_model": "m"}, namespace="team-a")
    applied = admin.post("/api/v1/apply", content=documents(endpoint), headers={"content-type": "application/yaml"})
    assert applied.status_code == 200, applied.text
    assert applied.json()["changes"] == [{"op": "create", "kind": "ModelEndpoint", "name": "team-a/katan"}]

    found = admin.get("/api/v1/resources/endpoints/team-a/katan")
    assert found.status_code == 200, found.text
    (item,) = found.json()["items"]
    assert (item["kind"], item["name"], item["spec"]["default_model"]) == ("ModelEndpoint", "team-a/katan", "m")
    listed = admin.get("/api/v1/resources", params={"kind": "ModelEndpoint"}).json()["items"]
    assert "team-a/katan" in {r["name"] for r in listed}

    deleted = admin.delete("/api/v1/resources/ModelEndpoint/team-a/katan")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["changes"] == [{"op": "delete", "kind": "ModelEndpoint", "name": "team-a/katan"}]
    assert admin.get("/api/v1/resources/ModelEndpoint/team-a/katan").status_code == 404
    assert admin.delete("/api/v1/resources/ModelEndpoint/team-a/katan").status_code == 404


def test_an_invalid_apply_is_a_400_naming_the_field(admin: Admin) -> None:
    bad = native("ModelEndpoint", "bad", {"provider": "openai-compatible", "base_url": "nope"})
    reply = admin.post("/api/v1/apply", content=documents(bad))
    assert reply.status_code == 400
    assert "spec.base_url" in error_of(reply)["message"]
    assert admin.get("/api/v1/resources", params={"kind": "nonsense"}).status_code == 400


def test_history_and_rollback_restore_an_earlier_revision(admin: Admin) -> None:
    alias = native("ModelAlias", "rolled", {"targets": [{"endpoint": "mock", "model": "one"}]})
    first = admin.post("/api/v1/apply", content=documents(alias)).json()["revision"]
    alias["spec"]["targets"][0]["model"] = "two"
    admin.post("/api/v1/apply", content=documents(alias))

    history = admin.get("/api/v1/history", params={"kind": "alias", "name": "rolled"}).json()["items"]
    assert [e["actor"] for e in history] == ["http:admin", "http:admin"]
    assert history[1]["revision"] == first

    reply = admin.post("/api/v1/rollback", json={"to": first})
    assert reply.status_code == 200, reply.text
    assert reply.json()["revision"] > first
    spec = admin.get("/api/v1/resources/ModelAlias/rolled").json()["items"][0]["spec"]
    assert spec["targets"][0]["model"] == "one"
    assert admin.post("/api/v1/rollback", json={"to": 99_999}).status_code == 404
    assert admin.post("/api/v1/rollback", json={"to": "first"}).status_code == 400
    assert admin.get("/api/v1/history", params={"limit": "0"}).status_code == 400


def test_routers_lists_the_live_routers_and_their_revisions(admin: Admin) -> None:
    reply = admin.get("/api/v1/routers")
    assert reply.status_code == 200, reply.text
    (router,) = reply.json()["items"]
    assert router["revision"] >= 1
    assert router["config_hash"]


# ---------------------------------------------------------------- the token's configuration


@pytest.fixture(scope="module")
def lone_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A second server, so a config service started alone cannot touch the stack's configuration."""
    yield from private_nats(tmp_path_factory, "lone-nats")


def listening(line: str) -> bool:
    return LISTENING.search(line) is not None


def start_config_service(nats_url: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """The config service alone, with the admin API on a free port (unless ``env`` says otherwise),
    a test audit key, and only the given token settings."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELBUS_ADMIN_", "MODELBUS_AUDIT_KEY"))}
    full_env.update(
        NATS_URL=nats_url, PYTHONUNBUFFERED="1", MODELBUS_ADMIN_HTTP="127.0.0.1:0", MODELBUS_AUDIT_KEY=AUDIT_KEY
    )
    full_env.update(env)
    full_env = {k: v for k, v in full_env.items() if v}  # an empty value removes a variable
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.config"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=ROOT,
        preexec_fn=die_with_parent,
    )
    return proc, []


def test_without_a_configured_token_every_endpoint_but_healthz_is_401_saying_how_to_set_one(
    lone_nats: EmbeddedNats,
) -> None:
    proc, output = start_config_service(lone_nats.url, {})
    try:
        url = LISTENING.search(wait_for_line(proc, listening, 30, output))
        assert url
        assert httpx.get(f"{url.group(1)}/healthz").status_code == 200
        for token in (None, "anything"):
            reply = Admin(url.group(1), token=token).get("/api/v1/resources")
            assert reply.status_code == 401
            error = error_of(reply)
            assert error["code"] == "admin_token_not_configured"
            assert "MODELBUS_ADMIN_TOKEN" in error["message"]
    finally:
        stop_process(proc)


def test_the_token_can_come_from_a_file(lone_nats: EmbeddedNats, tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text("token-from-a-file-123\n")
    token_file.chmod(0o600)
    proc, output = start_config_service(lone_nats.url, {"MODELBUS_ADMIN_TOKEN_FILE": str(token_file)})
    try:
        url = LISTENING.search(wait_for_line(proc, listening, 30, output))
        assert url
        assert Admin(url.group(1), token="token-from-a-file-123").get("/api/v1/resources").status_code == 200
        assert Admin(url.group(1), token="token-from-a-file").get("/api/v1/resources").status_code == 401
    finally:
        stop_process(proc)
    assert "token-from-a-file" not in "".join(output)


def test_setting_both_token_variables_stops_the_service_without_quoting_either(lone_nats: EmbeddedNats) -> None:
    proc, _ = start_config_service(
        lone_nats.url, {"MODELBUS_ADMIN_TOKEN": "secret-token-value", "MODELBUS_ADMIN_TOKEN_FILE": "/nonexistent"}
    )
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 2, out
    assert "not both" in out
    assert "secret-token-value" not in out


# ---------------------------------------------------------------- where the admin API listens


def ready_line(line: str) -> bool:
    return "modelbus-service-ready" in line


def test_the_ready_line_says_where_the_admin_api_listens(lone_nats: EmbeddedNats) -> None:
    proc, output = start_config_service(lone_nats.url, {"MODELBUS_ADMIN_TOKEN": TOKEN})
    try:
        found = READY_ADMIN.search(wait_for_line(proc, ready_line, 30, output))
        assert found, "".join(output)
        assert Admin(found.group(1)).get("/api/v1/resources").status_code == 200
    finally:
        stop_process(proc)


def test_a_squatter_on_the_admin_port_gets_no_token_the_service_serves_on_a_free_port(lone_nats: EmbeddedNats) -> None:
    """Another local user holds 127.0.0.1:PORT first: the service must not say ready without its API
    (the CLI would then send its token to the squatter), but move and say where it went."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(8)
        squatter.setblocking(False)
        port = squatter.getsockname()[1]
        proc, output = start_config_service(
            lone_nats.url, {"MODELBUS_ADMIN_HTTP": f"127.0.0.1:{port}", "MODELBUS_ADMIN_TOKEN": TOKEN}
        )
        try:
            found = READY_ADMIN.search(wait_for_line(proc, ready_line, 30, output))
            assert found, "".join(output)
            url = found.group(1)
            assert url != f"http://127.0.0.1:{port}"
            assert Admin(url).get("/api/v1/resources").status_code == 200
            log = "".join(output)
            assert f"127.0.0.1:{port} is taken by another process; serving on {url} instead" in log
            with pytest.raises(BlockingIOError):
                squatter.accept()  # nobody knocked on the squatter's door
        finally:
            stop_process(proc)
    assert TOKEN not in "".join(output)


def test_an_admin_address_that_cannot_be_bound_at_all_stops_the_service(lone_nats: EmbeddedNats) -> None:
    proc, _ = start_config_service(lone_nats.url, {"MODELBUS_ADMIN_HTTP": "192.0.2.1:8790"})  # TEST-NET-1
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 2, out
    assert "cannot listen on 192.0.2.1:8790" in out and "nor on any free port" in out
    assert "modelbus-service-ready" not in out


# ---------------------------------------------------------------- the audit key


def test_without_an_audit_key_the_config_service_refuses_to_start_saying_how_to_set_one(
    lone_nats: EmbeddedNats,
) -> None:
    proc, _ = start_config_service(lone_nats.url, {"MODELBUS_AUDIT_KEY": ""})
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 2, out
    assert "refusing to start: no audit key: set MODELBUS_AUDIT_KEY_FILE" in out
    assert "modelbus-service-ready" not in out


def test_the_audit_key_can_come_from_a_file(lone_nats: EmbeddedNats, tmp_path: Path) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_text(AUDIT_KEY + "\n")
    key_file.chmod(0o600)
    proc, output = start_config_service(
        lone_nats.url,
        {"MODELBUS_AUDIT_KEY": "", "MODELBUS_AUDIT_KEY_FILE": str(key_file), "MODELBUS_ADMIN_HTTP": "off"},
    )
    try:
        wait_for_line(proc, ready_line, 30, output)
    finally:
        stop_process(proc)
    assert AUDIT_KEY not in "".join(output)
