"""A client's own body on its way to an upstream of its API: only ``model`` (and a stream's usage) change."""

from __future__ import annotations

import msgspec
import pytest

from shared.errors import InvalidRequest
from shared.formats.passthrough import with_model, with_usage_on_stream

BODY = b'{"model":"fast",  "a": {"b" : [1, 2.50, "x"]}, "cache_control":{"type":"ephemeral"},"z":null}'
_members = msgspec.json.Decoder(dict[str, msgspec.Raw])


def test_with_model_sets_model_and_keeps_every_other_member_byte_for_byte_in_order() -> None:
    out = _members.decode(with_model(BODY, "claude-sonnet-4-5"))
    ours = _members.decode(BODY)
    assert list(out) == list(ours)
    assert bytes(out["model"]) == b'"claude-sonnet-4-5"'
    assert all(bytes(out[k]) == bytes(v) for k, v in ours.items() if k != "model")


def test_with_model_adds_model_when_the_body_has_none() -> None:
    assert msgspec.json.decode(with_model(b'{"messages":[]}', "m")) == {"messages": [], "model": "m"}


def test_a_model_with_quotes_is_encoded_as_a_json_string() -> None:
    assert msgspec.json.decode(with_model(b"{}", 'a"b\\c'))["model"] == 'a"b\\c'


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"{not json", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        with_model(body, "m")
    assert err.value.code == "invalid_json"


def test_a_stream_gets_include_usage_and_says_the_client_did_not_ask() -> None:
    out, asked = with_usage_on_stream(b'{"model":"fast","stream":true}', "gpt")
    assert not asked
    assert msgspec.json.decode(out) == {"model": "gpt", "stream": True, "stream_options": {"include_usage": True}}


def test_a_stream_keeps_the_client_s_other_stream_options() -> None:
    out, asked = with_usage_on_stream(b'{"stream":true,"stream_options":{"include_obfuscation": false}}', "gpt")
    assert not asked
    assert msgspec.json.decode(out)["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_a_stream_that_asked_for_usage_is_left_as_it_came() -> None:
    body = b'{"stream":true,"stream_options":{ "include_usage" : true }}'
    out, asked = with_usage_on_stream(body, "gpt")
    assert asked
    assert bytes(_members.decode(out)["stream_options"]) == b'{ "include_usage" : true }'


def test_stream_options_that_are_not_an_object_are_a_400_naming_them() -> None:
    with pytest.raises(InvalidRequest) as err:
        with_usage_on_stream(b'{"stream":true,"stream_options":[1]}', "gpt")
    assert err.value.param == "stream_options"
