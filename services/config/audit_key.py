"""The audit chain's HMAC key, held like the secrets master key.

``MODELBUS_AUDIT_KEY`` (base64 of 32 random bytes) or ``MODELBUS_AUDIT_KEY_FILE``
(the path of a file holding it; ``modelbus up`` generates ``<data-dir>/audit.key``
with mode 0600). Without a key the config service refuses to start: an audit
log anyone with write access to the stream can extend is no audit log, and a
key generated silently at every start would make yesterday's chain unverifiable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from shared.keyfile import AUDIT_KEY_ENV, AUDIT_KEY_FILE_ENV, KEY_BYTES

log = logging.getLogger("modelbus.config.audit")

_KEY_ID_LABEL = b"modelbus audit key id v1"
GENERATE_HINT = "python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'"


class AuditKeyError(Exception):
    """No usable audit key; the message names the variable or file, never the key."""


class AuditKey:
    """A loaded audit key; its repr hides the key.

    ``key_id`` is a fingerprint (an HMAC of a fixed label, so it reveals nothing
    of the key) stored in every entry: a chain sealed under another key is then
    reported as such rather than as a forged entry.
    """

    __slots__ = ("key", "key_id", "source")

    def __init__(self, key: bytes, source: str = "test") -> None:
        if len(key) != KEY_BYTES:
            raise AuditKeyError(f"{source}: an audit key is {KEY_BYTES} bytes, got {len(key)}")
        self.key = key
        self.source = source
        self.key_id = hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def mac(self, data: bytes) -> str:
        """Lowercase hex HMAC-SHA256 of ``data``."""
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"AuditKey(<hidden>, key_id={self.key_id!r}, source={self.source!r})"


def parse_audit_key(text: str, *, source: str) -> AuditKey:
    """The key in ``text`` (base64, surrounding whitespace ignored); never quotes ``text``."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuditKeyError(
            f"{source} is not valid base64; it must be {KEY_BYTES} random bytes in base64 "
            f"(generate one with: {GENERATE_HINT})"
        ) from None
    if len(key) != KEY_BYTES:
        raise AuditKeyError(f"{source} decodes to {len(key)} bytes; the audit key must be {KEY_BYTES} bytes")
    return AuditKey(key, source)


def load_audit_key(env: Mapping[str, str] | None = None) -> AuditKey:
    """The configured audit key; :class:`AuditKeyError` when none (or a bad one) is configured."""
    env = os.environ if env is None else env
    inline = env.get(AUDIT_KEY_ENV, "")
    path = env.get(AUDIT_KEY_FILE_ENV, "")
    if inline and path:
        raise AuditKeyError(f"both {AUDIT_KEY_ENV} and {AUDIT_KEY_FILE_ENV} are set; set only one")
    if inline:
        return parse_audit_key(inline, source=AUDIT_KEY_ENV)
    if not path:
        raise AuditKeyError(
            f"no audit key: set {AUDIT_KEY_FILE_ENV} to a file holding {KEY_BYTES} random bytes in base64 "
            f"(mode 0600), or {AUDIT_KEY_ENV} to the key itself; `modelbus up` generates <data-dir>/audit.key. "
            f"Generate one with: {GENERATE_HINT}. Keep it: without it the existing chain cannot be verified"
        )
    key_file = Path(path)
    try:
        text = key_file.read_text(encoding="ascii")
        mode = key_file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise AuditKeyError(f"{AUDIT_KEY_FILE_ENV}: cannot read key file {path}: {reason}") from None
    if mode & 0o077:
        log.warning("audit key file %s is readable by group or others (mode %o); chmod 600 it", path, mode & 0o777)
    return parse_audit_key(text, source=f"{AUDIT_KEY_FILE_ENV} ({path})")
