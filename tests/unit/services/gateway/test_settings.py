"""The gateway's environment settings and its socket."""

from __future__ import annotations

import socket

import pytest

from services.gateway.settings import (
    DEFAULT_MAX_BODY,
    GatewaySetupError,
    bind,
    load_settings,
    parse_address,
    parse_max_body,
    url_of,
)


def test_the_default_address_is_loopback_port_8787() -> None:
    assert parse_address(None) == ("127.0.0.1", 8787)
    assert parse_address("  ") == ("127.0.0.1", 8787)


def test_an_address_may_be_ipv6_and_port_zero_picks_a_free_port() -> None:
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)


@pytest.mark.parametrize("value", ["8787", "localhost", "host:port", "host:99999", ":8787", "host:-1"])
def test_a_bad_address_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(GatewaySetupError, match=r"^MODELBUS_HTTP: expected host:port"):
        parse_address(value)


def test_the_body_limit_defaults_to_4_mib_and_takes_a_byte_count() -> None:
    assert parse_max_body(None) == DEFAULT_MAX_BODY == 4 * 1024 * 1024
    assert parse_max_body("1024") == 1024


@pytest.mark.parametrize("value", ["0", "-5", "4MiB", "1e6", "٣"])
def test_a_bad_body_limit_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(GatewaySetupError, match=r"^MODELBUS_HTTP_MAX_BODY: "):
        parse_max_body(value)


def test_the_key_file_is_optional_since_keys_live_in_jetstream() -> None:
    assert load_settings({}).keys_path is None
    assert load_settings({"MODELBUS_GATEWAY_KEYS": "  "}).keys_path is None
    settings = load_settings({"MODELBUS_GATEWAY_KEYS": "/k.json", "MODELBUS_HTTP": "127.0.0.1:0"})
    assert (settings.port, settings.keys_path, settings.max_body) == (0, "/k.json", DEFAULT_MAX_BODY)


def test_port_zero_binds_a_free_port_and_the_url_names_it() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        assert url_of(sock) == f"http://127.0.0.1:{port}"
    finally:
        sock.close()


def test_a_taken_port_is_an_error_not_another_port() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        with pytest.raises(GatewaySetupError, match=r"^MODELBUS_HTTP: cannot listen on 127.0.0.1:"):
            bind("127.0.0.1", holder.getsockname()[1])
    finally:
        holder.close()
