"""NATS URL lists: one function reads ``--nats-url`` / ``NATS_URL`` for every connection."""

from __future__ import annotations

import pytest

from shared.bus import DEFAULT_NATS_URL, InvalidNatsUrl, nats_url, server_urls


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)


def test_a_comma_separated_list_names_every_server_of_a_cluster() -> None:
    assert server_urls("nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224") == [
        "nats://127.0.0.1:4222",
        "nats://127.0.0.1:4223",
        "nats://127.0.0.1:4224",
    ]


def test_spaces_around_commas_a_missing_scheme_and_a_missing_port_are_tolerated() -> None:
    assert server_urls(" 10.0.0.5 , nats://10.0.0.6:4223,tls://nats.example:7422 ") == [
        "nats://10.0.0.5:4222",
        "nats://10.0.0.6:4223",
        "tls://nats.example:7422",
    ]


def test_ipv6_hosts_and_a_trailing_comma_work_and_duplicates_are_dropped() -> None:
    assert server_urls("[::1]:4222,nats://[::1]:4222,") == ["nats://[::1]:4222"]


def test_the_explicit_url_wins_over_nats_url_which_wins_over_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    assert server_urls() == [DEFAULT_NATS_URL]
    monkeypatch.setenv("NATS_URL", "a:1,b:2")
    assert server_urls() == ["nats://a:1", "nats://b:2"]
    assert server_urls("c:3") == ["nats://c:3"]
    assert nats_url() == "nats://a:1,nats://b:2"


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ("nats://a:4222,,nats://b:4222", "server 2 of 3: empty entry"),
        ("nats://a:4222,http://b:80", "server 2 of 2: 'http://b:80' has scheme 'http'"),
        ("nats://a:99999", "'nats://a:99999' is not a valid NATS URL"),
        ("nats://a:port", "'nats://a:port' is not a valid NATS URL"),
        ("nats://:4222", "names no host"),
        ("nats://a:4222/x", "has a path or query"),
        ("nats://a:0", "port 0"),
        ("ws://a:80,nats://b:4222", "mixes WebSocket"),
    ],
)
def test_a_bad_entry_is_refused_with_an_error_naming_it(raw: str, names: str) -> None:
    with pytest.raises(InvalidNatsUrl) as caught:
        server_urls(raw)
    assert names in str(caught.value)


def test_the_error_says_which_setting_held_the_bad_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://ok:4222,bad:x")
    with pytest.raises(InvalidNatsUrl) as caught:
        server_urls()
    assert str(caught.value).startswith("NATS_URL, server 2 of 2: 'bad:x'")


def test_credentials_in_a_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(InvalidNatsUrl) as caught:
        server_urls("nats://a:4222,nats://admin:s3cret-pw@b:4222")
    message = str(caught.value)
    assert "s3cret-pw" not in message and "admin" not in message
    assert "nats://***@b:4222" in message and "NATS_USER/NATS_PASSWORD" in message
