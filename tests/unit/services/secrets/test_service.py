"""The secrets service's logic: references in, values out, and nothing leaked on failure.

These run without a store (no master key): env references, ORLOJ_SECRET_*
variables and the refusals. The stored-secret paths run against a real
nats-server in tests/integration/test_secrets.py.
"""

from __future__ import annotations

import json
import logging

import msgspec
import pytest

from services.secrets import wire
from services.secrets.service import SecretsService, StoreUnavailable, orloj_env_names
from shared import headers as H
from shared.envelopes import Credential, SecretList
from shared.errors import InvalidRequest, NotFound, error_from_wire
from tests.conftest import run

VALUE = "sk-live-do-not-leak"
ORLOJ_VALUE = "sk-orloj-do-not-leak-either"
ENV = {"OPENAI_API_KEY": VALUE, "EMPTY_KEY": "", "ORLOJ_SECRET_SEARCH_API_KEY": ORLOJ_VALUE}


def resolve(ref: str, env: dict[str, str]) -> str:
    return run(SecretsService(env=env).resolve(ref))


def answer(body: bytes, env: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return run(wire.answer_get(SecretsService(env=env), body))


def test_an_env_reference_resolves_from_the_given_environment() -> None:
    assert resolve("env:OPENAI_API_KEY", ENV) == VALUE


def test_an_env_reference_never_reads_a_variable_missing_from_the_given_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONLY_IN_PROCESS_ENV", "process-value")
    with pytest.raises(NotFound):
        resolve("env:ONLY_IN_PROCESS_ENV", {})


@pytest.mark.parametrize("ref", ["env:NOT_SET", "env:EMPTY_KEY"])
def test_an_unset_variable_is_not_found_naming_the_reference(ref: str) -> None:
    with pytest.raises(NotFound) as caught:
        resolve(ref, ENV)
    err = caught.value
    assert ref in err.message
    assert err.code == "secret_not_found"
    assert VALUE not in err.message


def test_an_unsupported_source_is_not_found_naming_the_reference() -> None:
    with pytest.raises(NotFound) as caught:
        resolve("vault:kv/openai", ENV)
    assert "vault:kv/openai" in caught.value.message
    assert "'vault'" in caught.value.message


@pytest.mark.parametrize("ref", ["env:", "", "has space", "-leading-dash", "trailing/"])
def test_a_reference_that_is_neither_scheme_name_nor_a_secret_name_is_invalid(ref: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve(ref, ENV)
    assert caught.value.param == "ref"
    assert repr(ref) in caught.value.message
    assert VALUE not in caught.value.message


def test_a_good_request_is_answered_with_the_value_and_status_200() -> None:
    body, headers = answer(b'{"ref": "env:OPENAI_API_KEY", "endpoint": "openai"}', ENV)
    assert headers == {H.STATUS: "200"}
    credential = msgspec.json.decode(body, type=Credential)
    assert credential.value == VALUE
    assert credential.ttl_s > 0


def test_an_unknown_reference_is_answered_with_a_404_envelope_naming_it_and_no_value() -> None:
    body, headers = answer(b'{"ref": "env:NOT_SET"}', ENV)
    assert headers == {H.STATUS: "404"}
    error = json.loads(body)["error"]
    assert "env:NOT_SET" in error["message"]
    assert error["code"] == "secret_not_found"
    assert VALUE.encode() not in body


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"null",
        b"[]",
        b"{}",
        b'{"ref": 42}',
        b'{"ref": null}',
        b'{"ref": "env:OPENAI_API_KEY", "endpoint": 5}',
        b"[" * 10_000,
    ],
    ids=[
        "empty",
        "text",
        "binary",
        "null",
        "array",
        "no-ref",
        "int-ref",
        "null-ref",
        "bad-endpoint",
        "deep",
    ],
)
def test_a_malformed_request_is_answered_with_400_and_never_raises(body: bytes) -> None:
    reply, headers = answer(body, ENV)
    assert headers == {H.STATUS: "400"}
    error = json.loads(reply)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["retryable"] is False
    assert VALUE not in error["message"]


def test_a_refusal_is_rebuilt_by_a_peer_as_the_same_typed_error() -> None:
    reply, headers = answer(b'{"ref": "no colon"}', ENV)
    err = error_from_wire(int(headers[H.STATUS]), reply)
    assert isinstance(err, InvalidRequest)
    assert err.param == "ref"
    assert "'no colon'" in err.message


def test_no_value_is_logged_when_requests_are_refused_or_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for body in [
        b'{"ref": "env:OPENAI_API_KEY"}',
        b'{"ref": "env:NOT_SET"}',
        b'{"ref": "x"}',
        b"junk",
    ]:
        answer(body, ENV)
    assert caplog.records, "refusals should be logged"
    assert VALUE not in caplog.text


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("search-api-key", "ORLOJ_SECRET_SEARCH_API_KEY"),
        ("openai-api-key", "ORLOJ_SECRET_openai-api-key"),
        ("openai-api-key", "ORLOJ_SECRET_openai_api_key"),
        ("team-a/openai", "ORLOJ_SECRET_TEAM_A_OPENAI"),
    ],
)
def test_a_bare_name_resolves_from_the_orloj_secret_variable(name: str, variable: str) -> None:
    assert resolve(name, {variable: ORLOJ_VALUE}) == ORLOJ_VALUE


def test_the_orloj_variable_is_tried_as_written_before_any_normalised_form() -> None:
    assert orloj_env_names("openai-api-key") == [
        "ORLOJ_SECRET_openai-api-key",
        "ORLOJ_SECRET_openai_api_key",
        "ORLOJ_SECRET_OPENAI_API_KEY",
    ]
    env = {"ORLOJ_SECRET_openai_api_key": "lower", "ORLOJ_SECRET_OPENAI_API_KEY": "upper"}
    assert resolve("openai-api-key", env) == "lower"


@pytest.mark.parametrize("ref", ["secret:openai-api-key", "openai-api-key"])
def test_a_stored_secret_without_a_master_key_is_a_503_naming_the_missing_key(ref: str) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        resolve(ref, ENV)
    err = caught.value
    assert err.http_status == 503
    assert ref in err.message
    assert "MODELBUS_MASTER_KEY" in err.message
    body, headers = answer(msgspec.json.encode({"ref": ref}), ENV)
    assert headers == {H.STATUS: "503"}
    assert json.loads(body)["error"]["code"] == "master_key_missing"


def test_putting_a_secret_without_a_master_key_is_a_503_and_announces_nothing() -> None:
    announced: list[object] = []

    async def publish(change: object) -> None:
        announced.append(change)

    service = SecretsService(env=ENV, publish_change=publish)
    body, headers = run(wire.answer_put(service, b'{"name": "openai-api-key", "value": "sk-new-value-123456"}'))
    assert headers == {H.STATUS: "503"}
    assert "MODELBUS_MASTER_KEY" in json.loads(body)["error"]["message"]
    assert b"sk-new-value-123456" not in body
    assert announced == []


def test_the_list_without_a_store_shows_orloj_variables_as_env_secrets_without_values() -> None:
    body, headers = run(wire.answer_list(SecretsService(env=ENV), b""))
    assert headers == {H.STATUS: "200"}
    listing = msgspec.json.decode(body, type=SecretList)
    assert [(i.name, i.source, i.key_present, i.key_last4) for i in listing.items] == [
        ("SEARCH_API_KEY", "env", True, ORLOJ_VALUE[-4:])
    ]
    assert ORLOJ_VALUE.encode() not in body
    assert VALUE.encode() not in body


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("answer_put", b"not json"),
        ("answer_put", b'{"name": "x"}'),
        ("answer_put", b'{"name": 5, "value": "v"}'),
        ("answer_delete", b"[]"),
        ("answer_delete", b"{}"),
        ("answer_list", b"not json"),
        ("answer_list", b"[1, 2]"),
    ],
)
def test_a_malformed_admin_request_is_answered_with_400(method: str, body: bytes) -> None:
    reply, headers = run(getattr(wire, method)(SecretsService(env=ENV), body))
    assert headers == {H.STATUS: "400"}
    assert json.loads(reply)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"name": "bad name", "value": "v"}', "name"),
        (b'{"name": "has:colon", "value": "v"}', "name"),
        (b'{"name": "ok", "value": ""}', "value"),
    ],
)
def test_a_put_with_an_invalid_name_or_empty_value_names_the_field(body: bytes, param: str) -> None:
    reply, headers = run(wire.answer_put(SecretsService(env=ENV), body))
    assert headers == {H.STATUS: "400"}
    assert json.loads(reply)["error"]["param"] == param
