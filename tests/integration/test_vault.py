"""Vault first: the secrets service as a real process with VAULT_ADDR/VAULT_TOKEN pointing at the fake Vault.

The fake (tests/fakes/vault.py) follows Vault's published KV-v2 API; no Vault
server can be installed here. The encrypted store is the real one, in a real
nats-server's JetStream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.client import ModelbusClient
from shared.natsserver import EmbeddedNats
from shared.subjects import SECRETS_DELETE, SECRETS_DESCRIBE, SECRETS_LIST, SECRETS_PUT
from tests.conftest import run, start_katan, start_stack, stop_process
from tests.fakes.vault import FakeVault
from tests.integration.test_secrets import KEY, Secrets, ask, get, secrets_refusing_to_start, start_secrets

TOKEN = "hvs.integration-token-never-logged"
WRONG_TOKEN = "hvs.wrong-token-never-logged"
IN_VAULT = "sk-from-vault-0123456789vlt1"
IN_STORE = "sk-from-store-0123456789sto1"
NO_VAULT = {"VAULT_ADDR": "", "MODELBUS_VAULT_ADDR": "", "VAULT_TOKEN": "", "VAULT_TOKEN_FILE": ""}


def vault_env(vault: FakeVault, token: str = TOKEN) -> dict[str, str]:
    return {**NO_VAULT, "VAULT_ADDR": vault.address, "VAULT_TOKEN": token}


def put(url: str, name: str, value: str) -> dict[str, Any]:
    status, body = ask(url, SECRETS_PUT, {"name": name, "value": value, "actor": "tests"})
    assert status == 200 and isinstance(body, dict), body
    return body


@pytest.fixture(scope="module")
def vault() -> Iterator[FakeVault]:
    fake = FakeVault({TOKEN: None}).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def secrets(nats_server: EmbeddedNats, vault: FakeVault) -> Iterator[Secrets]:
    """Secrets stored in the encrypted store first (no Vault), then the service restarted Vault-first."""
    url = nats_server.url
    before_vault = start_secrets(url, extra=NO_VAULT)
    try:
        put(url, "llm-providers/anthropic", IN_STORE)  # Vault will hold this name too
        put(url, "store-only", IN_STORE)
        put(url, "doomed", IN_STORE)
    finally:
        stop_process(before_vault.proc)
    vault.put("modelbus/llm-providers/openai", {"value": IN_VAULT})
    vault.put("modelbus/llm-providers/anthropic", {"value": IN_VAULT})
    service = start_secrets(url, extra=vault_env(vault))
    try:
        yield service
    finally:
        stop_process(service.proc)


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A server of the test's own, so no other secrets service answers in its queue group."""
    server = EmbeddedNats(tmp_path / "nats", log_file=None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- resolution


def test_a_secret_reference_is_served_from_vault_and_listed_with_source_vault(
    secrets: Secrets, nats_server: EmbeddedNats
) -> None:
    url = nats_server.url
    assert get(url, "secret:llm-providers/openai") == (200, {"value": IN_VAULT, "ttl_s": 300.0})
    assert get(url, "llm-providers/openai")[1]["value"] == IN_VAULT
    status, listing = ask(url, SECRETS_LIST, b"")
    assert status == 200
    items = {(item["name"], item["source"]): item for item in listing["items"]}
    from_vault = items[("llm-providers/openai", "vault")]
    assert (from_vault["key_present"], from_vault["key_last4"]) == (True, "vlt1")
    assert from_vault["updated_at"].endswith("Z")
    assert IN_VAULT not in json.dumps(listing)


def test_vault_is_asked_first_so_its_value_wins_over_the_store_for_the_same_name(
    secrets: Secrets, nats_server: EmbeddedNats
) -> None:
    url = nats_server.url
    assert get(url, "secret:llm-providers/anthropic")[1]["value"] == IN_VAULT
    assert get(url, "llm-providers/anthropic")[1]["value"] == IN_VAULT
    status, described = ask(url, SECRETS_DESCRIBE, {"refs": ["secret:llm-providers/anthropic"]})
    assert status == 200
    assert described["items"][0]["source"] == "vault"
    # The store's copy is not checked in the listing: nats-py's KV keys() can return a
    # partial list (nats-io/nats.py#842), which would make this test flaky, not wrong.


def test_a_name_vault_lacks_falls_back_to_the_encrypted_store(secrets: Secrets, nats_server: EmbeddedNats) -> None:
    url = nats_server.url
    assert get(url, "secret:store-only")[1]["value"] == IN_STORE
    assert get(url, "store-only")[1]["value"] == IN_STORE


def test_an_explicit_vault_reference_reads_its_path_and_key(
    secrets: Secrets, nats_server: EmbeddedNats, vault: FakeVault
) -> None:
    vault.put("aurorasoc/llm-providers/gemini", {"api_key": IN_VAULT, "model": "gemini-2.5-pro"})
    url = nats_server.url
    assert get(url, "vault:aurorasoc/llm-providers/gemini#api_key")[1]["value"] == IN_VAULT
    status, body = get(url, "vault:aurorasoc/llm-providers/gemini")
    assert status == 502
    assert body["error"]["code"] == "vault_secret_unusable"
    assert "'api_key', 'model'" in body["error"]["message"]
    assert IN_VAULT not in json.dumps(body)


def test_an_unknown_reference_is_a_404_naming_the_reference_and_where_it_looked(
    secrets: Secrets, nats_server: EmbeddedNats
) -> None:
    status, body = get(nats_server.url, "secret:llm-providers/nowhere")
    assert status == 404
    message = body["error"]["message"]
    assert message.startswith("credential reference 'secret:llm-providers/nowhere': ")
    assert "Vault has no secret at secret/modelbus/llm-providers/nowhere" in message
    assert "no secret named 'llm-providers/nowhere' is stored" in message


def test_a_vault_that_cannot_answer_is_an_error_and_never_a_fallback_to_the_store(
    secrets: Secrets, nats_server: EmbeddedNats, vault: FakeVault
) -> None:
    vault.fail_status = 503
    try:
        status, body = get(nats_server.url, "secret:store-only")
    finally:
        vault.fail_status = None
    assert status == 503
    assert body["error"]["code"] == "vault_unavailable"
    assert body["error"]["retryable"] is True
    assert "Vault is sealed" in body["error"]["message"]
    assert IN_STORE not in json.dumps(body)


# ---------------------------------------------------------------- admin


def test_a_put_goes_to_vault_and_a_delete_removes_the_name_from_vault_and_the_store(
    secrets: Secrets, nats_server: EmbeddedNats, vault: FakeVault
) -> None:
    url = nats_server.url
    assert get(url, "secret:doomed")[1]["value"] == IN_STORE
    info = put(url, "doomed", IN_VAULT)
    assert (info["source"], info["key_last4"]) == ("vault", "vlt1")
    assert vault.latest("modelbus/doomed") == {"value": IN_VAULT}
    assert get(url, "secret:doomed")[1]["value"] == IN_VAULT

    status, gone = ask(url, SECRETS_DELETE, {"name": "doomed", "actor": "tests"})
    assert (status, gone["key_present"]) == (200, False)
    assert vault.version_count("modelbus/doomed") == 0
    assert get(url, "secret:doomed")[0] == 404  # the store's copy went too
    assert ask(url, SECRETS_DELETE, {"name": "doomed"})[0] == 404


def test_the_service_log_holds_neither_the_token_nor_a_value(secrets: Secrets) -> None:
    log = secrets.log()
    assert "Vault first at http://127.0.0.1:" in log
    for needle in (TOKEN, IN_VAULT, IN_STORE):
        assert needle not in log


# ---------------------------------------------------------------- misconfiguration


def test_a_wrong_token_is_a_clear_error_naming_the_reference_and_never_the_token(
    private_nats: EmbeddedNats, vault: FakeVault
) -> None:
    url = private_nats.url
    service = start_secrets(url, extra=vault_env(vault, WRONG_TOKEN))
    try:
        status, body = get(url, "secret:llm-providers/openai")
        assert status == 502
        error = body["error"]
        assert error["code"] == "vault_permission_denied"
        assert error["message"].startswith("credential reference 'secret:llm-providers/openai': Vault denied")
        assert "token is invalid or expired" in error["message"]
        assert WRONG_TOKEN not in json.dumps(body)
    finally:
        stop_process(service.proc)
    assert WRONG_TOKEN not in service.log()


def test_a_vault_address_without_a_token_stops_the_service_naming_the_variables(
    private_nats: EmbeddedNats, vault: FakeVault
) -> None:
    status, output = secrets_refusing_to_start(private_nats.url, KEY, {**NO_VAULT, "VAULT_ADDR": vault.address})
    assert status == 2
    assert "VAULT_ADDR is set but no token is: set VAULT_TOKEN or VAULT_TOKEN_FILE" in output


# ---------------------------------------------------------------- end to end

STACK_CONFIG = """\
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {{name: openai}}
spec:
  provider: openai
  base_url: {katan}/v1
  default_model: echo
  allowPrivate: true
  auth: {{secretRef: "secret:llm-providers/openai"}}
---
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {{name: mock-vault}}
spec: {{provider: mock, default_model: m, auth: {{secretRef: "vault:aurorasoc/llm-providers/mock#api_key"}}}}
"""


def test_a_request_through_the_stack_reaches_the_upstream_with_the_key_vault_holds(
    private_nats: EmbeddedNats, vault: FakeVault, tmp_path: Path
) -> None:
    katan_key = "sk-katan-key-from-vault-0123"
    katan = start_katan(tmp_path, "--validate-keys", "--api-keys", f"openai={katan_key}")
    config = tmp_path / "stack.yaml"
    config.write_text(STACK_CONFIG.format(katan=katan.base_url))
    vault.put("modelbus/llm-providers/openai", {"value": katan_key})
    vault.put("aurorasoc/llm-providers/mock", {"api_key": "sk-mock-key-from-vault-0123"})
    env = {**vault_env(vault), "MODELBUS_MASTER_KEY": KEY}
    stack = start_stack(private_nats.url, config, tmp_path / "home", env=env)

    async def chat(model: str) -> tuple[int, Any]:
        client = await ModelbusClient.connect(private_nats.url)
        try:
            request = {"model": model, "messages": [{"role": "user", "content": "hello vault"}]}
            reply = await client.request_raw(json.dumps(request).encode(), timeout=20)
        finally:
            await client.close()
        return reply.status, json.loads(reply.body)

    try:
        status, body = run(chat("openai"))
        assert status == 200, body  # llm-katan validates the key: only Vault's value gets through
        assert "hello vault" in body["choices"][0]["message"]["content"]
        status, body = run(chat("mock-vault"))
        assert status == 200, body
        log = stack.log()
        for needle in (TOKEN, katan_key, "sk-mock-key-from-vault"):
            assert needle not in log
    finally:
        stop_process(stack.proc)
        stop_process(katan.proc)
    assert any(r.path == "/v1/secret/data/modelbus/llm-providers/openai" for r in vault.requests)
