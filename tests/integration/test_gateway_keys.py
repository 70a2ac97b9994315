"""Gateway API keys kept in JetStream, end to end: the real CLI, config service and two gateways.

One stack for the module: nats-server, secrets, config, a router, a provider
worker (the mock answers) and TWO gateway processes that share the key store;
``gateway-1`` also has a key file (the second, optional source). Keys are made
and revoked with the real ``modelbus create key`` / ``delete key`` against
that stack, and every key made is afterwards looked for in every process's
output, the JetStream store on disk, every process's argv and environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shared.natsserver import EmbeddedNats
from tests.conftest import ROOT
from tests.integration.procs import Services, services, start_gateway, write_gateway_keys

FILE_KEY = "mb-file-key-for-the-first-gateway-0123456789"
HELLO: Any = [{"role": "user", "content": "hello keys"}]


def _doc(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> str:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return json.dumps({"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": metadata, "spec": spec})


CONFIG = "\n---\n".join(
    [
        _doc("ModelEndpoint", "mock", {"provider": "mock", "default_model": "mock-1"}),
        _doc("ModelAlias", "fast", {"targets": [{"endpoint": "mock", "model": "mock-fast"}]}),
        _doc("Agent", "helper", {"model_ref": "mock/mock-helper"}),
        _doc("Agent", "coder", {"model_ref": "mock/mock-coder"}, namespace="team"),
        _doc("Agent", "writer", {"model_ref": "mock/mock-writer"}, namespace="team"),
        _doc("Agent", "spy", {"model_ref": "mock/mock-spy"}, namespace="other"),
    ]
)


@dataclass
class KeyStack:
    services: Services
    nats: EmbeddedNats
    home: Path
    urls: list[str]
    made: list[str] = field(default_factory=list)
    """Every key value made in this module (for the leak check at the end)."""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELBUS_", "NATS_"))}
        env.update({"NATS_URL": self.nats.url, "PYTHONUNBUFFERED": "1"})
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "--data-dir", str(self.home), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def create(self, name: str, *options: str) -> str:
        done = self.cli("create", "key", name, *options)
        assert done.returncode == 0, done.stderr
        key = done.stdout.strip()
        assert key.startswith("mb-") and "\n" not in key and len(key) == 3 + 43
        self.made.append(key)
        return key


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStack]:
    home = tmp_path_factory.mktemp("gateway-keys")
    config = home / "keys.yaml"
    config.write_text(CONFIG)
    keys_file = home / "file-keys.json"
    write_gateway_keys(keys_file, {"from-file": FILE_KEY})
    with services(nats_server.url, home / "home", config) as s:
        first = start_gateway(s, keys_file, name="gateway-1")
        second = start_gateway(s, keys_file, name="gateway-2", env={"MODELBUS_GATEWAY_KEYS": ""})  # no file
        yield KeyStack(s, nats_server, home / "cli", [first, second])


def models(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10)


def chat(url: str, key: str, agent: str | None = None, model: str = "fast") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **({"x-modelbus-agent": agent} if agent else {})}
    body = {"model": model, "messages": HELLO}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=20)


def wait_status(url: str, key: str, status: int, timeout_s: float) -> float:
    """Seconds until ``GET /v1/models`` with ``key`` answers ``status`` (fails past ``timeout_s``)."""
    start = time.monotonic()
    while True:
        got = models(url, key).status_code
        if got == status:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{url}: still {got}, not {status}, after {timeout_s}s")
        time.sleep(0.01)


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


# ---------------------------------------------------------------- create, revoke, expire


def test_a_new_key_works_on_both_gateways_and_a_deleted_one_is_refused_by_both_within_a_second(
    stack: KeyStack,
) -> None:
    key = stack.create("revoke-me")
    for url in stack.urls:
        assert wait_status(url, key, 200, 1.0) < 1.0
    done = stack.cli("delete", "key", "revoke-me")
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    for url in stack.urls:
        wait_status(url, key, 401, 1.0)
    assert time.monotonic() - revoked_at < 1.0
    body = models(stack.urls[1], key).json()
    assert body["error"]["code"] == "invalid_api_key"


def test_an_expiring_key_is_refused_with_its_own_code_after_its_time_and_get_keys_says_expired(
    stack: KeyStack,
) -> None:
    key = stack.create("short-lived", "--expires", "2s")
    assert wait_status(stack.urls[0], key, 200, 1.0) < 1.0
    wait_status(stack.urls[1], key, 401, 4.0)
    for url in stack.urls:
        with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=10) as sdk:
            with pytest.raises(openai.AuthenticationError) as caught:
                sdk.models.list()
        assert caught.value.code == "expired_api_key"
    listing = json.loads(stack.cli("get", "keys", "short-lived", "-o", "json").stdout)
    assert [(k["name"], k["status"]) for k in listing] == [("short-lived", "expired")]


# ---------------------------------------------------------------- bindings


def test_an_agent_bound_key_routes_as_its_agent_whatever_model_it_names(stack: KeyStack) -> None:
    key = stack.create("helper-key", "--agent", "helper")
    wait_status(stack.urls[1], key, 200, 1.0)
    for url in stack.urls:
        answer = chat(url, key, model="fast")
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-modelbus-model"] == "mock-helper"  # the agent's model_ref, not alias fast
        assert answer.headers["x-modelbus-endpoint"] == "mock"
        assert chat(url, key, agent="helper").headers["x-modelbus-model"] == "mock-helper"


def test_an_agent_bound_key_naming_another_agent_is_a_403_the_sdk_raises_as_permission_denied(
    stack: KeyStack,
) -> None:
    key = stack.create("helper-only", "--agent", "helper")
    wait_status(stack.urls[0], key, 200, 1.0)
    answer = chat(stack.urls[0], key, agent="team/coder")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "agent_not_allowed"
    with openai.OpenAI(base_url=f"{stack.urls[1]}/v1", api_key=key, max_retries=0, timeout=10) as sdk:
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(model="fast", messages=HELLO, extra_headers={"x-modelbus-agent": "other/spy"})


def test_a_namespace_key_uses_only_its_namespace_s_agents(stack: KeyStack) -> None:
    key = stack.create("team-key", "--namespace", "team")
    url = stack.urls[1]
    wait_status(url, key, 200, 1.0)
    assert chat(url, key, agent="coder").headers["x-modelbus-model"] == "mock-coder"  # coder = team/coder
    assert chat(url, key, agent="team/writer").headers["x-modelbus-model"] == "mock-writer"
    for agent, code in (
        ("other/spy", "agent_not_allowed"),
        ("helper/x", "agent_not_allowed"),
        (None, "agent_required"),
    ):
        answer = chat(url, key, agent=agent)
        assert answer.status_code == 403, (agent, answer.text)
        assert answer.json()["error"]["code"] == code


def test_agent_and_namespace_together_look_the_agent_up_in_the_namespace(stack: KeyStack) -> None:
    key = stack.create("team-coder", "--agent", "coder", "--namespace", "team")
    wait_status(stack.urls[0], key, 200, 1.0)
    assert chat(stack.urls[0], key).headers["x-modelbus-model"] == "mock-coder"
    assert chat(stack.urls[0], key, agent="team/writer").status_code == 403
    listing = json.loads(stack.cli("get", "keys", "team-coder", "-o", "json").stdout)
    assert (listing[0]["agent"], listing[0]["namespace"]) == ("team/coder", "team")


def test_the_model_list_shows_each_key_only_what_it_may_use(stack: KeyStack) -> None:
    everything = stack.create("list-all")
    agent = stack.create("list-agent", "--agent", "helper")
    team = stack.create("list-team", "--namespace", "team")
    for url in stack.urls:
        wait_status(url, team, 200, 1.0)
        assert ids(models(url, everything)) == ["fast", "mock", "helper", "other/spy", "team/coder", "team/writer"]
        assert ids(models(url, agent)) == ["helper"]
        assert ids(models(url, team)) == ["team/coder", "team/writer"]


# ---------------------------------------------------------------- the two sources


def test_the_key_file_adds_its_keys_on_its_gateway_only_beside_the_store(stack: KeyStack) -> None:
    stored = stack.create("beside-the-file")
    first, second = stack.urls
    wait_status(second, stored, 200, 1.0)
    assert models(first, FILE_KEY).status_code == 200
    assert models(first, stored).status_code == 200
    assert models(second, FILE_KEY).status_code == 401  # gateway-2 has no key file


# ---------------------------------------------------------------- the CLI's errors


def test_get_keys_lists_names_bindings_times_and_status_and_never_a_hash(stack: KeyStack) -> None:
    key = stack.create("listed", "--expires", "30d")
    done = stack.cli("get", "keys")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["NAME", "AGENT", "NAMESPACE", "CREATED", "EXPIRES", "STATUS"]
    row = next(r.split() for r in rows if r.startswith("listed "))
    assert row[1:3] == ["-", "-"] and row[5] == "active" and row[4].endswith("Z")
    as_json = stack.cli("get", "keys", "-o", "json").stdout
    assert "sha256" not in as_json and key not in as_json and key not in done.stdout


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("create", "key", "Bad Name"), 2, "key names are 1 to 64 characters"),
        (("create", "key", "ok-name", "--expires", "3y"), 2, "expected a duration such as 30d"),
        (("create", "key", "ok-name", "--expires", "0m"), 2, "must be longer than zero"),
        (("create", "key", "ok-name", "--agent", "nobody"), 1, "400 unknown agent 'nobody'"),
        (("create", "key", "ok-name", "--namespace", "empty"), 1, "namespace 'empty' has no agents"),
        (("create", "key", "ok-name", "--agent", "other/spy", "--namespace", "team"), 1, "is not in --namespace"),
        (("delete", "key", "never-made"), 1, "404 no gateway key 'never-made'"),
        (("get", "keys", "never-made"), 1, "404 no gateway key 'never-made'"),
    ],
)
def test_bad_names_durations_agents_and_unknown_keys_are_clear_errors(
    stack: KeyStack, args: tuple[str, ...], status: int, message: str
) -> None:
    done = stack.cli(*args)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert message in done.stderr and done.stdout == ""


def test_a_taken_name_is_a_409_and_the_first_key_keeps_working(stack: KeyStack) -> None:
    key = stack.create("taken")
    done = stack.cli("create", "key", "taken")
    assert done.returncode == 1 and "409 key 'taken' exists" in done.stderr and done.stdout == ""
    assert wait_status(stack.urls[0], key, 200, 1.0) < 1.0


# ---------------------------------------------------------------- no key anywhere


def test_no_key_value_is_in_any_log_the_jetstream_store_any_argv_or_environment(stack: KeyStack) -> None:
    """Runs last in the module: every key made above is looked for everywhere it must not be."""
    assert len(stack.made) >= 8
    logs = "".join(stack.services.log(name) for name in stack.services.procs)
    assert "gateway key helper-key stored" in logs  # the logs name keys ...
    store = b"".join(p.read_bytes() for p in stack.nats.data_dir.rglob("*") if p.is_file())
    assert b"sha256" in store  # ... and the store holds their hashes
    procs = b"".join(
        Path(f"/proc/{p.pid}/{part}").read_bytes()
        for p in stack.services.procs.values()
        if p.poll() is None
        for part in ("cmdline", "environ")
    )
    for key in stack.made:
        assert key not in logs
        assert key.encode() not in store
        assert key.encode() not in procs
