"""The secrets service's logic: references in, values out, and nothing leaked on failure."""

from __future__ import annotations

import json
import logging

import msgspec
import pytest

from services.secrets.service import answer, resolve
from shared import headers as H
from shared.envelopes import Credential
from shared.errors import InvalidRequest, NotFound, error_from_wire

VALUE = "sk-live-do-not-leak"
ENV = {"OPENAI_API_KEY": VALUE, "EMPTY_KEY": ""}


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


@pytest.mark.parametrize("ref", ["OPENAI_API_KEY", "env:", ""])
def test_a_reference_without_scheme_and_name_is_invalid(ref: str) -> None:
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
    reply, headers = answer(b'{"ref": "nocolon"}', ENV)
    err = error_from_wire(int(headers[H.STATUS]), reply)
    assert isinstance(err, InvalidRequest)
    assert err.param == "ref"
    assert "'nocolon'" in err.message


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
