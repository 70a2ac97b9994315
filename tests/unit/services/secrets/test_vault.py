"""The Vault KV-v2 client and the secrets service's Vault-first rules, against the fake Vault in-process.

The fake (tests/fakes/vault.py) follows Vault's published KV-v2 API and is
reached through ``httpx.ASGITransport``, so nothing here opens a socket. The
encrypted store's half of "Vault first, then the store" needs a real
nats-server and runs in tests/integration/test_vault.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.secrets import wire
from services.secrets.service import SecretsService
from services.secrets.vault import (
    VaultConfigError,
    VaultDenied,
    VaultError,
    VaultKV2,
    VaultSecretUnusable,
    VaultSource,
    VaultUnavailable,
    vault_from_env,
    vault_path_problem,
)
from shared import headers as H
from shared.envelopes import SecretDelete, SecretPut, SecretsDescribe
from shared.errors import InvalidRequest, NotFound
from tests.conftest import run
from tests.fakes.vault import FakeVault

TOKEN = "hvs.unit-test-token-do-not-leak"
VALUE = "sk-vault-value-0123456789wxyz"
ADDRESS = "http://vault.test:8200"


@pytest.fixture
def fake() -> FakeVault:
    return FakeVault({TOKEN: None, "hvs.team-a-only": ("modelbus/team-a/",)})


def kv(fake: FakeVault, token: str = TOKEN, **kwargs: Any) -> VaultKV2:
    return VaultKV2(ADDRESS, token, transport=httpx.ASGITransport(app=fake.app), **kwargs)


def failing(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handler)


def service(fake: FakeVault, env: dict[str, str] | None = None, token: str = TOKEN) -> SecretsService:
    return SecretsService(env=env or {}, vault=VaultSource(kv(fake, token)))


# ---------------------------------------------------------------- the client


def test_a_written_secret_reads_back_with_its_version_and_time(fake: FakeVault) -> None:
    async def scenario() -> None:
        client = kv(fake)
        first = await client.write("modelbus/llm-providers/openai", "sk-first-0123456789")
        second = await client.write("modelbus/llm-providers/openai", VALUE)
        entry = await client.read_entry("modelbus/llm-providers/openai")
        assert entry is not None
        assert (first.version, second.version, entry.version) == (1, 2, 2)
        assert entry.value == VALUE
        assert entry.updated_at is not None and entry.updated_at.endswith("Z") and "." not in entry.updated_at
        assert VALUE not in repr(entry)
        assert await client.read("modelbus/llm-providers/openai") == VALUE

    run(scenario())
    assert fake.latest("modelbus/llm-providers/openai") == {"value": VALUE}


def test_a_secret_that_is_not_there_or_soft_deleted_reads_as_none(fake: FakeVault) -> None:
    fake.put("modelbus/soft-deleted", {"value": VALUE})

    async def scenario() -> None:
        client = kv(fake)
        assert await client.read("modelbus/never-written") is None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url=ADDRESS) as raw:
            # `vault kv delete`: the latest version only, and Vault then answers 404 with the envelope.
            deleted = await raw.delete("/v1/secret/data/modelbus/soft-deleted", headers={"X-Vault-Token": TOKEN})
            assert deleted.status_code == 204
        assert await client.read("modelbus/soft-deleted") is None

    run(scenario())


def test_a_secret_with_one_key_is_read_from_that_key_whatever_its_name(fake: FakeVault) -> None:
    fake.put("aurorasoc/llm-providers/openai", {"api_key": VALUE})
    assert run(kv(fake).read("aurorasoc/llm-providers/openai")) == VALUE


def test_a_secret_with_several_keys_and_no_value_key_is_an_error_naming_path_and_keys_never_values(
    fake: FakeVault,
) -> None:
    fake.put("modelbus/multi", {"api_key": VALUE, "org_id": "org-secret-ish-0123"})
    with pytest.raises(VaultSecretUnusable) as caught:
        run(kv(fake).read("modelbus/multi"))
    message = caught.value.message
    assert "secret/modelbus/multi" in message
    assert "'api_key'" in message and "'org_id'" in message
    assert "vault:modelbus/multi#KEY" in message
    assert VALUE not in message and "org-secret-ish" not in message


def test_a_value_key_wins_among_several_and_a_named_key_is_picked(fake: FakeVault) -> None:
    fake.put("modelbus/multi", {"value": VALUE, "note": "rotated monthly"})

    async def scenario() -> None:
        client = kv(fake)
        assert await client.read("modelbus/multi") == VALUE
        assert await client.read("modelbus/multi", "note") == "rotated monthly"
        with pytest.raises(VaultSecretUnusable) as caught:
            await client.read("modelbus/multi", "api_key")
        assert "no key 'api_key'" in caught.value.message
        assert VALUE not in caught.value.message

    run(scenario())


def test_a_value_that_is_not_a_string_is_an_error_that_does_not_quote_it(fake: FakeVault) -> None:
    fake.put("modelbus/structured", {"value": {"nested": VALUE}})
    with pytest.raises(VaultSecretUnusable) as caught:
        run(kv(fake).read("modelbus/structured"))
    assert "holds a dict, not a string" in caught.value.message
    assert VALUE not in caught.value.message


def test_an_empty_value_counts_as_no_secret(fake: FakeVault) -> None:
    fake.put("modelbus/empty", {"value": ""})
    assert run(kv(fake).read("modelbus/empty")) is None


def test_delete_removes_every_version_and_says_whether_anything_was_there(fake: FakeVault) -> None:
    fake.put("modelbus/gone", {"value": "sk-one-0123456789"})
    fake.put("modelbus/gone", {"value": "sk-two-0123456789"})

    async def scenario() -> tuple[bool, bool]:
        client = kv(fake)
        return await client.delete("modelbus/gone"), await client.delete("modelbus/gone")

    assert run(scenario()) == (True, False)
    assert fake.version_count("modelbus/gone") == 0  # metadata and every version, not a soft delete


def test_the_listing_walks_folders_and_names_secrets_relative_to_the_prefix(fake: FakeVault) -> None:
    fake.put("modelbus/llm-providers/openai", {"value": VALUE})
    fake.put("modelbus/llm-providers/anthropic", {"value": "short"})
    fake.put("modelbus/team-a/deep/key", {"token": "sk-deep-value-0123456789"})
    fake.put("modelbus/unusable", {"a": "1", "b": "2"})
    fake.put("elsewhere/not-ours", {"value": VALUE})

    infos = run(VaultSource(kv(fake)).infos())
    assert [(i.name, i.key_present, i.key_last4, i.source) for i in infos] == [
        ("llm-providers/anthropic", True, None, "vault"),
        ("llm-providers/openai", True, "wxyz", "vault"),
        ("team-a/deep/key", True, "6789", "vault"),
        ("unusable", False, None, "vault"),
    ]
    assert all(i.updated_at for i in infos if i.key_present)


def test_listing_an_empty_prefix_is_an_empty_list(fake: FakeVault) -> None:
    assert run(kv(fake).list_paths("modelbus")) == []


@pytest.mark.parametrize(
    "operation",
    [
        lambda c: c.read("modelbus/x"),
        lambda c: c.write("modelbus/x", VALUE),
        lambda c: c.delete("modelbus/x"),
        lambda c: c.list_paths("modelbus"),
    ],
    ids=["read", "write", "delete", "list"],
)
def test_a_rejected_token_is_denied_with_a_message_that_never_holds_the_token(
    fake: FakeVault, operation: Callable[[VaultKV2], Any]
) -> None:
    client = kv(fake, token="hvs.wrong-token-do-not-leak")
    with pytest.raises(VaultDenied) as caught:
        run(operation(client))
    err = caught.value
    assert "403: permission denied" in err.message
    assert "token is invalid or expired" in err.message
    assert "hvs." not in err.message and "hvs." not in repr(err)
    assert err.retryable is False
    assert "hvs." not in repr(client)


def test_a_token_without_a_policy_for_the_path_is_denied_naming_the_path_and_capability(fake: FakeVault) -> None:
    fake.put("modelbus/team-a/key", {"value": VALUE})
    fake.put("modelbus/team-b/key", {"value": VALUE})

    async def scenario() -> None:
        client = kv(fake, token="hvs.team-a-only")
        assert await client.read("modelbus/team-a/key") == VALUE
        with pytest.raises(VaultDenied) as caught:
            await client.read("modelbus/team-b/key")
        assert "no policy grants 'read' on secret/data/modelbus/team-b/key" in caught.value.message

    run(scenario())


def test_a_sealed_vault_is_unavailable_and_retryable(fake: FakeVault) -> None:
    fake.fail_status = 503
    with pytest.raises(VaultUnavailable) as caught:
        run(kv(fake).read("modelbus/x"))
    assert caught.value.retryable is True
    assert caught.value.http_status == 503
    assert "503: Vault is sealed" in caught.value.message


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (httpx.ConnectError("connection refused"), "cannot reach Vault at http://vault.test:8200 (ConnectError)"),
        (httpx.ReadTimeout("slow"), "did not answer the read of secret/modelbus/x within 3s"),
    ],
    ids=["refused", "timeout"],
)
def test_an_unreachable_or_slow_vault_is_unavailable(exc: Exception, says: str) -> None:
    client = VaultKV2(ADDRESS, TOKEN, transport=failing(exc))
    with pytest.raises(VaultUnavailable) as caught:
        run(client.read("modelbus/x"))
    assert says in caught.value.message
    assert caught.value.retryable is True


def test_a_mount_that_does_not_exist_is_an_error_not_a_missing_secret(fake: FakeVault) -> None:
    with pytest.raises(VaultError) as caught:
        run(kv(fake, mount="kv").read("modelbus/x"))
    assert "is a KV version 2 engine mounted at 'kv'?" in caught.value.message


def test_the_token_and_namespace_travel_in_vault_headers(fake: FakeVault) -> None:
    fake.namespace = "team-a"
    fake.put("modelbus/x", {"value": VALUE})
    assert run(kv(fake, namespace="team-a").read("modelbus/x")) == VALUE
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/v1/secret/data/modelbus/x")
    assert sent.headers["x-vault-token"] == TOKEN
    assert sent.headers["x-vault-namespace"] == "team-a"
    with pytest.raises(VaultError, match="in namespace 'team-b'"):
        run(kv(fake, namespace="team-b").read("modelbus/x"))


@pytest.mark.parametrize("path", ["a/../b", "a/./b", "a//b", "../escape", "trailing/"])
def test_a_path_with_empty_or_dot_segments_is_refused(path: str) -> None:
    assert vault_path_problem(path) is not None


# ---------------------------------------------------------------- configuration


def test_without_an_address_there_is_no_vault() -> None:
    assert vault_from_env({"VAULT_TOKEN": TOKEN}) is None


def test_an_address_and_token_configure_mount_prefix_and_namespace() -> None:
    source = vault_from_env(
        {
            "VAULT_ADDR": "http://ignored:8200",
            "MODELBUS_VAULT_ADDR": "https://vault.internal:8200/",
            "VAULT_TOKEN": TOKEN,
            "VAULT_NAMESPACE": "team-a/",
            "MODELBUS_VAULT_MOUNT": "kv/",
            "MODELBUS_VAULT_PREFIX": "/aurorasoc/",
        }
    )
    assert source is not None
    assert (source.kv.address, source.kv.mount, source.kv.namespace, source.prefix) == (
        "https://vault.internal:8200",
        "kv",
        "team-a",
        "aurorasoc",
    )
    assert source.path_of("llm-providers/openai") == "aurorasoc/llm-providers/openai"
    assert TOKEN not in repr(source.kv)


def test_the_defaults_are_mount_secret_and_prefix_modelbus() -> None:
    source = vault_from_env({"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": TOKEN})
    assert source is not None
    assert source.where("llm-providers/openai") == "secret/modelbus/llm-providers/openai"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"VAULT_ADDR": "http://127.0.0.1:8200"},
            "VAULT_ADDR is set but no token is: set VAULT_TOKEN or VAULT_TOKEN_FILE",
        ),
        (
            {"VAULT_ADDR": "vault.internal:8200", "VAULT_TOKEN": TOKEN},
            "VAULT_ADDR: 'vault.internal:8200' is not an http",
        ),
        (
            {"VAULT_ADDR": "http://v:8200", "VAULT_TOKEN": TOKEN, "VAULT_TOKEN_FILE": "/x"},
            "both VAULT_TOKEN and VAULT_TOKEN_FILE",
        ),
        ({"VAULT_ADDR": "http://v:8200", "VAULT_TOKEN_FILE": "/nonexistent/token"}, "VAULT_TOKEN_FILE: cannot read"),
        (
            {"VAULT_ADDR": "http://v:8200", "VAULT_TOKEN": TOKEN, "MODELBUS_VAULT_PREFIX": "a/../b"},
            "MODELBUS_VAULT_PREFIX",
        ),
        ({"VAULT_ADDR": "http://v:8200", "VAULT_TOKEN": TOKEN, "VAULT_CACERT": "/nonexistent.pem"}, "VAULT_CACERT"),
    ],
    ids=["no-token", "not-a-url", "both-tokens", "unreadable-token-file", "bad-prefix", "bad-cacert"],
)
def test_unusable_settings_are_refused_naming_the_variable_and_never_the_token(env: dict[str, str], says: str) -> None:
    with pytest.raises(VaultConfigError) as caught:
        vault_from_env(env)
    assert says in str(caught.value)
    assert TOKEN not in str(caught.value)


@pytest.fixture
def token_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "vault-token"
    path.write_text("hvs.first-token\n")
    yield path


def test_a_token_file_is_reread_when_it_changes(fake: FakeVault, token_file: Path) -> None:
    fake.tokens = {"hvs.first-token": None}
    fake.put("modelbus/x", {"value": VALUE})
    source = vault_from_env(
        {"VAULT_ADDR": ADDRESS, "VAULT_TOKEN_FILE": str(token_file)}, transport=httpx.ASGITransport(app=fake.app)
    )
    assert source is not None

    async def scenario() -> None:
        assert await source.kv.read("modelbus/x") == VALUE
        fake.tokens = {"hvs.second-token": None}  # Vault Agent renewed it and rewrote its sink
        token_file.write_text("hvs.second-token-longer\n")
        os.utime(token_file, ns=(0, 0))
        with pytest.raises(VaultDenied):
            await source.kv.read("modelbus/x")
        fake.tokens = {"hvs.second-token-longer": None}
        assert await source.kv.read("modelbus/x") == VALUE
        assert fake.requests[-1].headers["x-vault-token"] == "hvs.second-token-longer"

    run(scenario())


# ---------------------------------------------------------------- the service, Vault only


def test_a_secret_reference_and_a_bare_name_resolve_from_vault_under_the_prefix(fake: FakeVault) -> None:
    fake.put("modelbus/llm-providers/openai", {"value": VALUE})
    secrets = service(fake)
    assert run(secrets.resolve("secret:llm-providers/openai")) == VALUE
    assert run(secrets.resolve("llm-providers/openai")) == VALUE


def test_an_orloj_variable_still_answers_a_bare_name_before_vault(fake: FakeVault) -> None:
    fake.put("modelbus/openai-api-key", {"value": VALUE})
    secrets = service(fake, env={"ORLOJ_SECRET_OPENAI_API_KEY": "sk-from-env-0123456789"})
    assert run(secrets.resolve("openai-api-key")) == "sk-from-env-0123456789"
    assert run(secrets.resolve("secret:openai-api-key")) == VALUE


def test_a_vault_reference_reads_an_explicit_path_and_key_outside_the_prefix(fake: FakeVault) -> None:
    fake.put("aurorasoc/llm-providers/openai", {"api_key": VALUE, "base_url": "https://api.openai.com/v1"})
    secrets = service(fake)
    assert run(secrets.resolve("vault:aurorasoc/llm-providers/openai#api_key")) == VALUE
    with pytest.raises(VaultSecretUnusable) as caught:
        run(secrets.resolve("vault:aurorasoc/llm-providers/openai"))
    assert caught.value.message.startswith("credential reference 'vault:aurorasoc/llm-providers/openai': ")
    assert VALUE not in caught.value.message


@pytest.mark.parametrize("ref", ["vault:a/../b", "vault:x#", "vault:x#bad key", "secret:a/./b"])
def test_a_vault_reference_with_a_bad_path_or_key_is_invalid_naming_it(fake: FakeVault, ref: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        run(service(fake).resolve(ref))
    assert repr(ref) in caught.value.message


def test_an_unknown_reference_is_not_found_naming_the_reference_and_where_it_was_looked_for(fake: FakeVault) -> None:
    secrets = service(fake)
    for ref, says in [
        ("secret:llm-providers/missing", "Vault has no secret at secret/modelbus/llm-providers/missing"),
        ("llm-providers/missing", "ORLOJ_SECRET_llm-providers/missing"),
        ("vault:elsewhere/missing", "Vault has no secret at secret/elsewhere/missing"),
    ]:
        with pytest.raises(NotFound) as caught:
            run(secrets.resolve(ref))
        assert caught.value.message.startswith(f"credential reference {ref!r}: ")
        assert says in caught.value.message
        assert caught.value.code == "secret_not_found"


def test_a_wrong_token_is_an_error_naming_the_reference_and_not_the_token(fake: FakeVault) -> None:
    secrets = service(fake, token="hvs.wrong-token-do-not-leak")
    body, headers = run(wire.answer_get(secrets, b'{"ref": "secret:llm-providers/openai"}'))
    assert headers == {H.STATUS: "502"}
    error = json.loads(body)["error"]
    assert error["code"] == "vault_permission_denied"
    assert error["message"].startswith("credential reference 'secret:llm-providers/openai': Vault denied the read")
    assert b"hvs." not in body


def test_a_vault_reference_without_vault_configured_is_not_found_saying_so() -> None:
    with pytest.raises(NotFound) as caught:
        run(SecretsService(env={}).resolve("vault:modelbus/x"))
    assert "source 'vault' is not configured (set VAULT_ADDR and VAULT_TOKEN" in caught.value.message


def test_put_writes_to_vault_and_delete_removes_it_announcing_both(fake: FakeVault) -> None:
    announced: list[tuple[str, str]] = []

    async def publish(change: Any) -> None:
        announced.append((change.name, change.op))

    secrets = SecretsService(env={}, vault=VaultSource(kv(fake)), publish_change=publish)
    info = run(secrets.put(SecretPut(name="llm-providers/openai", value=VALUE, actor="tests")))
    assert (info.source, info.key_present, info.key_last4) == ("vault", True, "wxyz")
    assert fake.latest("modelbus/llm-providers/openai") == {"value": VALUE}
    gone = run(secrets.delete(SecretDelete(name="llm-providers/openai")))
    assert (gone.key_present, gone.source) == (False, "vault")
    assert fake.version_count("modelbus/llm-providers/openai") == 0
    with pytest.raises(NotFound) as caught:
        run(secrets.delete(SecretDelete(name="llm-providers/openai")))
    assert "secret/modelbus/llm-providers/openai" in caught.value.message
    assert announced == [("llm-providers/openai", "set"), ("llm-providers/openai", "delete")]


def test_describe_and_list_show_vault_as_the_source_without_values(fake: FakeVault) -> None:
    fake.put("modelbus/llm-providers/openai", {"value": VALUE})
    fake.put("aurorasoc/gemini", {"api_key": "sk-gemini-0123456789abcd"})
    secrets = service(fake, env={"ORLOJ_SECRET_ENV_ONLY": "sk-env-only-0123456789"})
    refs = ["secret:llm-providers/openai", "llm-providers/openai", "vault:aurorasoc/gemini", "secret:missing"]
    described = run(secrets.describe(SecretsDescribe(refs=refs)))
    assert [(i.name, i.key_present, i.key_last4, i.source) for i in described.items] == [
        ("secret:llm-providers/openai", True, "wxyz", "vault"),
        ("llm-providers/openai", True, "wxyz", "vault"),
        ("vault:aurorasoc/gemini", True, "abcd", "vault"),
        ("secret:missing", False, None, None),
    ]
    reads = [r for r in fake.requests if r.method == "GET"]
    assert len(reads) == 3  # one per distinct path, not per reference
    listing = run(secrets.list_secrets())
    assert [(i.name, i.source) for i in listing.items] == [("ENV_ONLY", "env"), ("llm-providers/openai", "vault")]
    assert VALUE not in repr(listing) and VALUE not in repr(described)


def test_describe_counts_a_vault_error_as_no_value(fake: FakeVault) -> None:
    fake.fail_status = 503
    described = run(service(fake).describe(SecretsDescribe(refs=["secret:llm-providers/openai"])))
    assert [(i.key_present, i.source) for i in described.items] == [(False, None)]
