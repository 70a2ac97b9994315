"""Records as modelbus wrote them before format 2 (bound to the name only), for tests of the upgrade.

Built here from the published format (docs/secrets.md) rather than by the
service, which never writes format 1 any more.
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.secrets.crypto import KEYCHECK_AAD, key_id


def _record(key: bytes, plaintext: bytes, aad: bytes, *, with_kid: bool, updated_at: str) -> bytes:
    nonce = os.urandom(12)
    record = {"v": 1, "nonce": base64.b64encode(nonce).decode()}
    if with_kid:
        record["kid"] = key_id(key)
    record["ciphertext"] = base64.b64encode(AESGCM(key).encrypt(nonce, plaintext, aad)).decode()
    record["updated_at"] = updated_at
    return json.dumps(record).encode()


def legacy_secret(
    key: bytes, name: str, value: str, *, with_kid: bool = True, updated_at: str = "2024-06-01T00:00:00Z"
) -> bytes:
    """A format-1 secret record: associated data is the name alone."""
    return _record(key, json.dumps({"value": value}).encode(), name.encode(), with_kid=with_kid, updated_at=updated_at)


def legacy_keycheck(key: bytes, *, with_kid: bool = True) -> bytes:
    """A format-1 key check."""
    return _record(
        key, b"modelbus master key check v1", KEYCHECK_AAD, with_kid=with_kid, updated_at="2024-06-01T00:00:00Z"
    )
