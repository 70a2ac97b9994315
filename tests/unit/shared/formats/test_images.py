"""The shared data: URI parser every adapter uses for image parts."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.formats.images import DataUri, parse_data_uri


def test_a_base64_data_uri_gives_its_type_and_payload() -> None:
    assert parse_data_uri("data:image/PNG;base64,iVBORw0KGgo=", "p") == DataUri("image/png", "iVBORw0KGgo=")


def test_base64_may_follow_other_parameters_as_rfc_2397_allows() -> None:
    assert parse_data_uri("data:image/jpeg;name=a.jpg;base64,/9j/", "p") == DataUri("image/jpeg", "/9j/")


def test_a_uri_without_a_type_parses_with_an_empty_type() -> None:
    assert parse_data_uri("data:;base64,AAAA", "p") == DataUri("", "AAAA")


def test_other_urls_are_not_data_uris() -> None:
    assert parse_data_uri("https://example.com/a.png", "p") is None


@pytest.mark.parametrize(
    "url", ["data:image/png,rawbytes", "data:image/png;base64", "data:image/png;base64,", "data:image/png;base64;x,AA"]
)
def test_a_malformed_or_non_base64_data_uri_is_a_400_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_data_uri(url, "messages[0].content[1].image_url.url")
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert caught.value.code == "invalid_image"
