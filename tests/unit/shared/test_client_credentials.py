"""Credentials files: read as written by `modelbus up`, never quoted or printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.client import Credentials, CredentialsFileError, load_credentials


def test_a_credentials_file_is_read_with_home_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    body = {"url": "nats://127.0.0.1:4222", "user": "client", "password": "pw-1", "inbox_prefix": "_INBOX_client.x"}
    (tmp_path / "c.json").write_text(json.dumps(body))
    creds = load_credentials("~/c.json")
    assert creds.connect_kwargs() == {"user": "client", "password": "pw-1", "inbox_prefix": "_INBOX_client.x"}
    assert creds.url == "nats://127.0.0.1:4222"


def test_the_password_never_shows_in_its_repr() -> None:
    creds = Credentials(url="nats://h:1", user="u", password="very-secret-pw", inbox_prefix="_INBOX_u")
    assert "very-secret-pw" not in repr(creds) and "very-secret-pw" not in str(creds)


@pytest.mark.parametrize("content", ['{"user": "u", "password": "leaky-pw"}', "not json leaky-pw", "[]"])
def test_a_file_that_is_not_credentials_is_named_but_not_quoted(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(CredentialsFileError) as caught:
        load_credentials(path)
    assert str(path) in str(caught.value) and "leaky-pw" not in str(caught.value)


def test_a_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(CredentialsFileError, match="cannot read credentials file"):
        load_credentials(tmp_path / "absent.json")
