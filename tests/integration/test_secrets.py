"""The secrets service as a real process over a real nats-server: encrypted store, admin subjects, key checks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from shared import headers as H
from shared.client import ModelbusClient
from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats, die_with_parent
from shared.subjects import (
    SECRETS_BUCKET,
    SECRETS_CHANGED,
    SECRETS_DELETE,
    SECRETS_GET,
    SECRETS_LIST,
    SECRETS_PUT,
)
from tests.conftest import ROOT, run, start_stack, stop_process, wait_for_line

KEY = base64.b64encode(os.urandom(32)).decode()
WRONG_KEY = base64.b64encode(os.urandom(32)).decode()
ORLOJ_VALUE = "sk-orloj-env-value-0123456789"
# Its last four characters cannot occur in base64 or in a record's JSON, so a
# scan for them is exact.
CANARY = "sk-plaintext-canary-0123456789!~#$"


# ---------------------------------------------------------------- helpers


class Secrets:
    """A running ``python -m services.secrets`` and what it printed."""

    def __init__(self, proc: subprocess.Popen[str], output: list[str]) -> None:
        self.proc = proc
        self.output = output

    def log(self) -> str:
        return "".join(self.output)


def _env(url: str, key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELBUS_MASTER_KEY", "ORLOJ_SECRET_")) and k != "NATS_URL"
    }
    env = {**inherited, "NATS_URL": url, "PYTHONUNBUFFERED": "1", "OTEL_TRACES_EXPORTER": "none"}
    if key is not None:
        env["MODELBUS_MASTER_KEY"] = key
    return {**env, **(extra or {})}


def _popen(url: str, key: str | None, extra: dict[str, str] | None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.secrets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(url, key, extra),
        cwd=ROOT,
        preexec_fn=die_with_parent,
    )


def start_secrets(url: str, key: str | None = KEY, extra: dict[str, str] | None = None) -> Secrets:
    """Start the secrets service and wait for its ready marker."""
    proc = _popen(url, key, extra)
    output: list[str] = []
    wait_for_line(proc, lambda line: READY_MARKER in line, 30, output)
    return Secrets(proc, output)


def secrets_refusing_to_start(url: str, key: str | None, extra: dict[str, str] | None = None) -> tuple[int, str]:
    """Start the secrets service expecting it to exit; its status and output."""
    proc = _popen(url, key, extra)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"secrets service kept running:\n{output}") from None
    assert READY_MARKER not in output
    return proc.returncode, output


async def _ask(url: str, subject: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, data, timeout=10)
    finally:
        await nc.close()
    return int((msg.headers or {})[H.STATUS]), json.loads(msg.data)


def ask(url: str, subject: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    """One request to the secrets service: reply status and JSON body."""
    return run(_ask(url, subject, body))


def put(url: str, name: str, value: str) -> dict[str, Any]:
    status, body = ask(url, SECRETS_PUT, {"name": name, "value": value, "actor": "tests"})
    assert status == 200 and isinstance(body, dict), body
    return body


def get(url: str, ref: str) -> tuple[int, Any]:
    return ask(url, SECRETS_GET, {"ref": ref})


async def _raw_entries(url: str) -> list[tuple[int, str, bytes, dict[str, str]]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream = f"KV_{SECRETS_BUCKET}"
        state = (await js.stream_info(stream)).state
        entries = []
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue  # purged
            entries.append((seq, msg.subject or "", bytes(msg.data or b""), dict(msg.headers or {})))
        return entries
    finally:
        await nc.close()


def raw_entries(url: str) -> list[tuple[int, str, bytes, dict[str, str]]]:
    """Every message still in the bucket's stream, history included, as stored."""
    return run(_raw_entries(url))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def secrets(nats_server: EmbeddedNats) -> Iterator[Secrets]:
    service = start_secrets(
        nats_server.url,
        extra={"ORLOJ_SECRET_orloj-only-key": ORLOJ_VALUE, "ORLOJ_SECRET_SHADOWED_KEY": ORLOJ_VALUE},
    )
    try:
        yield service
    finally:
        stop_process(service.proc)


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A server of the test's own, for tests that restart the service over a known bucket."""
    server = EmbeddedNats(tmp_path / "nats", log_file=None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- serving


def test_a_stored_secret_is_served_by_secret_reference_and_by_bare_name(
    secrets: Secrets, nats_server: EmbeddedNats
) -> None:
    url = nats_server.url
    put(url, "llm-providers/openai", "sk-slash-name-0123456789")
    put(url, "openai-api-key", "sk-bare-name-0123456789")
    assert get(url, "secret:llm-providers/openai") == (200, {"value": "sk-slash-name-0123456789", "ttl_s": 300.0})
    status, body = get(url, "openai-api-key")
    assert (status, body["value"]) == (200, "sk-bare-name-0123456789")
    status, body = get(url, "llm-providers/openai")
    assert (status, body["value"]) == (200, "sk-slash-name-0123456789")


def test_putting_a_secret_again_replaces_its_value(secrets: Secrets, nats_server: EmbeddedNats) -> None:
    url = nats_server.url
    put(url, "rotated-key", "sk-first-value-0123456789")
    info = put(url, "rotated-key", "sk-second-value-9876543210")
    assert info["key_last4"] == "3210"
    assert get(url, "secret:rotated-key")[1]["value"] == "sk-second-value-9876543210"


def test_the_list_shows_presence_last_four_source_and_update_time_but_never_a_value(
    secrets: Secrets, nats_server: EmbeddedNats
) -> None:
    url = nats_server.url
    info = put(url, "team-a/openai-api-key", "sk-team-a-value-0123456789wxyz")
    assert info == {
        "name": "team-a/openai-api-key",
        "key_present": True,
        "key_last4": "wxyz",
        "source": "store",
        "updated_at": info["updated_at"],
    }
    status, listing = ask(url, SECRETS_LIST, b"")
    assert status == 200
    items = {(item["name"], item["source"]): item for item in listing["items"]}
    stored = items[("team-a/openai-api-key", "store")]
    assert stored["key_present"] is True
    assert stored["key_last4"] == "wxyz"
    assert time.strptime(stored["updated_at"], "%Y-%m-%dT%H:%M:%SZ")
    from_env = items[("orloj-only-key", "env")]
    assert (from_env["key_present"], from_env["key_last4"], from_env.get("updated_at")) == (True, "6789", None)
    names = [item["name"] for item in listing["items"]]
    assert names == sorted(names)
    text = json.dumps(listing)
    assert "sk-team-a-value" not in text
    assert ORLOJ_VALUE not in text
    assert ask(url, SECRETS_LIST, b"{}")[0] == 200


def test_a_deleted_secret_is_a_404_naming_the_reference(secrets: Secrets, nats_server: EmbeddedNats) -> None:
    url = nats_server.url
    put(url, "short-lived", "sk-short-lived-0123456789")
    status, info = ask(url, SECRETS_DELETE, {"name": "short-lived", "actor": "tests"})
    assert status == 200
    assert (info["name"], info["key_present"]) == ("short-lived", False)
    for ref in ("secret:short-lived", "short-lived"):
        status, body = get(url, ref)
        assert status == 404
        assert ref in body["error"]["message"]
        assert body["error"]["code"] == "secret_not_found"
        assert "sk-short-lived" not in json.dumps(body)
    listed = {item["name"] for item in ask(url, SECRETS_LIST, b"")[1]["items"]}
    assert "short-lived" not in listed


def test_deleting_a_secret_that_does_not_exist_is_a_404_naming_it(secrets: Secrets, nats_server: EmbeddedNats) -> None:
    status, body = ask(nats_server.url, SECRETS_DELETE, {"name": "never-stored"})
    assert status == 404
    assert "never-stored" in body["error"]["message"]


def test_an_orloj_secret_variable_answers_a_bare_name_before_the_store(
    secrets: Secrets, nats_server: EmbeddedNats
) -> None:
    url = nats_server.url
    assert get(url, "orloj-only-key")[1]["value"] == ORLOJ_VALUE
    put(url, "shadowed-key", "sk-stored-shadowed-0123456789")
    assert get(url, "shadowed-key")[1]["value"] == ORLOJ_VALUE  # ORLOJ_SECRET_SHADOWED_KEY
    assert get(url, "secret:shadowed-key")[1]["value"] == "sk-stored-shadowed-0123456789"
    status, body = get(url, "no-such-secret")
    assert status == 404
    assert "ORLOJ_SECRET_no-such-secret" in body["error"]["message"]


def test_every_put_and_delete_is_announced_with_the_name_and_operation_only(
    secrets: Secrets, nats_server: EmbeddedNats
) -> None:
    async def scenario() -> list[bytes]:
        nc = await nats.connect(nats_server.url)
        try:
            sub = await nc.subscribe(SECRETS_CHANGED)
            await nc.flush()
            await nc.request(SECRETS_PUT, json.dumps({"name": "announced", "value": CANARY}).encode(), timeout=10)
            await nc.request(SECRETS_DELETE, b'{"name": "announced"}', timeout=10)
            await nc.request(SECRETS_PUT, b"not json", timeout=10)  # refused: announces nothing
            events = [(await sub.next_msg(timeout=10)).data for _ in range(2)]
            with pytest.raises(nats.errors.TimeoutError):
                await sub.next_msg(timeout=0.3)
            return events
        finally:
            await nc.close()

    events = run(scenario())
    assert [json.loads(e) for e in events] == [
        {"name": "announced", "op": "set"},
        {"name": "announced", "op": "delete"},
    ]
    assert all(CANARY.encode() not in e and CANARY[-4:].encode() not in e for e in events)


def test_the_bucket_never_holds_a_value_in_clear(secrets: Secrets, nats_server: EmbeddedNats) -> None:
    url = nats_server.url
    put(url, "canary", CANARY)
    put(url, "canary", CANARY + "-v2")  # history keeps the old revision: encrypted too
    entries = raw_entries(url)
    assert len(entries) >= 3  # the key check and both revisions at least
    for _, subject, data, headers in entries:
        for needle in (CANARY, CANARY[-4:], "canary-0123456789"):
            assert needle.encode() not in data, subject
            assert needle not in json.dumps(headers)
        assert "canary" not in subject  # names are encoded in keys too
    assert get(url, "secret:canary")[1]["value"] == CANARY + "-v2"
    assert CANARY not in secrets.log()


@pytest.mark.parametrize("subject", [SECRETS_GET, SECRETS_PUT, SECRETS_DELETE, SECRETS_LIST])
@pytest.mark.parametrize("body", [b'{"name": "x", "value": ', b"\xff\xfe", b"[]"], ids=["truncated", "binary", "array"])
def test_malformed_input_to_each_subject_gets_an_error_reply_and_the_service_keeps_working(
    secrets: Secrets, nats_server: EmbeddedNats, subject: str, body: bytes
) -> None:
    status, reply = ask(nats_server.url, subject, body)
    assert status == 400
    assert reply["error"]["type"] == "invalid_request_error"
    assert ask(nats_server.url, SECRETS_LIST, b"")[0] == 200
    assert secrets.proc.poll() is None


def test_without_identities_a_request_whose_reply_subject_is_a_kv_key_writes_nothing_there(
    private_nats: EmbeddedNats,
) -> None:
    # No broker permissions here (--insecure), so only the service's own reply guard stands
    # between a forged reply subject and a write to the bucket.
    url = private_nats.url
    service = start_secrets(url, extra={"SECRETS_TEST_ENV_ONLY_KEY": "sk-env-only-0123456789"})
    victim = f"$KV.{SECRETS_BUCKET}.victim"

    async def attack() -> None:
        nc = await nats.connect(url)
        try:
            await nc.publish(SECRETS_GET, b'{"ref": "env:SECRETS_TEST_ENV_ONLY_KEY"}', reply=victim)
            await nc.flush()
        finally:
            await nc.close()

    try:
        run(attack())
        deadline = time.monotonic() + 10
        while f"reply subject {victim!r}" not in service.log():  # the guard's warning: the request was handled
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.02)
        assert all(subject != victim for _, subject, _, _ in raw_entries(url))
        assert get(url, "env:SECRETS_TEST_ENV_ONLY_KEY")[0] == 200  # a proper inbox is still answered
    finally:
        stop_process(service.proc)


# ---------------------------------------------------------------- master key


def test_a_wrong_master_key_stops_the_service_and_leaves_the_store_untouched(
    private_nats: EmbeddedNats, tmp_path: Path
) -> None:
    url = private_nats.url
    service = start_secrets(url)
    try:
        put(url, "survivor", "sk-survivor-value-0123456789")
    finally:
        stop_process(service.proc)
    before = raw_entries(url)

    status, output = secrets_refusing_to_start(url, WRONG_KEY)
    assert status == 2
    assert "master key does not match the secrets store" in output
    assert WRONG_KEY not in output and KEY not in output
    assert raw_entries(url) == before

    key_file = tmp_path / "master.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    service = start_secrets(url, key=None, extra={"MODELBUS_MASTER_KEY_FILE": str(key_file)})
    try:
        assert get(url, "secret:survivor")[1]["value"] == "sk-survivor-value-0123456789"
    finally:
        stop_process(service.proc)


def test_a_store_holding_secrets_refuses_to_start_without_a_master_key(private_nats: EmbeddedNats) -> None:
    url = private_nats.url
    service = start_secrets(url)
    try:
        put(url, "locked-away", "sk-locked-away-0123456789")
    finally:
        stop_process(service.proc)
    before = raw_entries(url)
    status, output = secrets_refusing_to_start(url, None)
    assert status == 2
    assert "no master key is configured" in output
    assert "MODELBUS_MASTER_KEY" in output
    assert raw_entries(url) == before


@pytest.mark.parametrize(
    ("key", "says"),
    [("not-base64!", "not valid base64"), (base64.b64encode(os.urandom(16)).decode(), "must be 32 bytes")],
    ids=["not-base64", "16-bytes"],
)
def test_a_malformed_master_key_stops_the_service_with_a_clear_error(
    nats_server: EmbeddedNats, key: str, says: str
) -> None:
    status, output = secrets_refusing_to_start(nats_server.url, key)
    assert status == 2
    assert "MODELBUS_MASTER_KEY" in output
    assert says in output
    assert key not in output


def test_without_a_master_key_env_references_work_and_stored_secrets_are_a_503(private_nats: EmbeddedNats) -> None:
    url = private_nats.url
    service = start_secrets(url, key=None, extra={"SECRETS_TEST_ENV_ONLY_KEY": "sk-env-only-0123456789"})
    try:
        assert "store locked" in service.log()
        assert get(url, "env:SECRETS_TEST_ENV_ONLY_KEY")[1]["value"] == "sk-env-only-0123456789"
        for subject, body in [
            (SECRETS_PUT, {"name": "k", "value": "sk-would-be-stored-0123"}),
            (SECRETS_GET, {"ref": "secret:k"}),
            (SECRETS_GET, {"ref": "k"}),
        ]:
            status, reply = ask(url, subject, body)
            assert status == 503
            assert reply["error"]["code"] == "master_key_missing"
            assert "MODELBUS_MASTER_KEY" in reply["error"]["message"]
        assert ask(url, SECRETS_LIST, b"") == (200, {"items": []})
    finally:
        stop_process(service.proc)
    with pytest.raises(nats.js.errors.NotFoundError):
        raw_entries(url)  # no key, no bucket: nothing was invented


# ---------------------------------------------------------------- end to end

STACK_CONFIG = """\
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {name: mock-stored}
spec: {provider: mock, default_model: m, auth: {secretRef: "secret:e2e/mock-key"}}
---
apiVersion: modelbus.dev/v1
kind: ModelAlias
metadata: {name: default}
spec: {targets: [{endpoint: mock-stored}]}
"""


def test_an_endpoint_keyed_by_a_stored_secret_answers_until_the_secret_is_deleted(
    private_nats: EmbeddedNats, tmp_path: Path
) -> None:
    config = tmp_path / "stack.yaml"
    config.write_text(STACK_CONFIG)
    stack = start_stack(private_nats.url, config, tmp_path / "home", env={"MODELBUS_MASTER_KEY": KEY})
    body = json.dumps({"model": "mock-stored", "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def chat() -> tuple[int, Any]:
        client = await ModelbusClient.connect(private_nats.url)
        try:
            reply = await client.request_raw(body, timeout=20)
        finally:
            await client.close()
        return reply.status, json.loads(reply.body)

    try:
        put(private_nats.url, "e2e/mock-key", CANARY)
        assert run(chat())[0] == 200
        assert run(chat())[0] == 200  # now from the provider worker's cache
        assert ask(private_nats.url, SECRETS_DELETE, {"name": "e2e/mock-key"})[0] == 200

        deadline = time.monotonic() + 15
        while True:
            status, reply = run(chat())
            if status != 200 or time.monotonic() > deadline:
                break
            run(asyncio.sleep(0.05))
        assert status == 502, "the provider worker kept serving a deleted secret from its cache"
        assert reply["error"]["code"] == "credential_unavailable"
        assert "secret:e2e/mock-key" in reply["error"]["message"]
        assert CANARY not in stack.log()
    finally:
        stop_process(stack.proc)
