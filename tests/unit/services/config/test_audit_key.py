"""Loading the audit key: inline or from a file, and a clear refusal without one."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from services.config.audit_key import AuditKeyError, load_audit_key

RAW = bytes(range(32))
B64 = base64.b64encode(RAW).decode()


def test_the_key_comes_from_the_environment_variable() -> None:
    key = load_audit_key({"MODELBUS_AUDIT_KEY": B64})
    assert key.key == RAW and key.source == "MODELBUS_AUDIT_KEY"
    assert B64 not in repr(key)


def test_the_key_comes_from_a_private_file_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.key"
    path.write_text(B64 + "\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        key = load_audit_key({"MODELBUS_AUDIT_KEY_FILE": str(path)})
    assert key.key == RAW
    assert not caplog.records


def test_a_key_file_readable_by_others_is_used_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.key"
    path.write_text(B64)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_audit_key({"MODELBUS_AUDIT_KEY_FILE": str(path)})
    assert "chmod 600" in caplog.text


def test_without_a_key_the_error_says_how_to_provide_one() -> None:
    with pytest.raises(AuditKeyError, match="no audit key: set MODELBUS_AUDIT_KEY_FILE") as caught:
        load_audit_key({})
    assert "MODELBUS_AUDIT_KEY" in str(caught.value) and "audit.key" in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODELBUS_AUDIT_KEY": B64, "MODELBUS_AUDIT_KEY_FILE": "/x"}, "set only one"),
        ({"MODELBUS_AUDIT_KEY": "not-base64-!!-secretish"}, "not valid base64"),
        ({"MODELBUS_AUDIT_KEY": base64.b64encode(b"short").decode()}, "decodes to 5 bytes"),
        ({"MODELBUS_AUDIT_KEY_FILE": "/nonexistent/audit.key"}, "cannot read key file"),
    ],
    ids=["both", "not-base64", "too-short", "missing-file"],
)
def test_a_bad_key_setting_is_refused_without_quoting_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(AuditKeyError, match=message) as caught:
        load_audit_key(env)
    assert "secretish" not in str(caught.value)
