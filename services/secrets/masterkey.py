"""Where the master keys come from: environment variables and key files.

The master key is 32 random bytes, written as standard base64 (44 characters),
given either directly in ``MODELBUS_MASTER_KEY`` or in a file named by
``MODELBUS_MASTER_KEY_FILE``. :func:`generate_master_key_file` writes a new one
with mode 0600. While a rotation is under way a service may also be given the
key it replaces, in ``MODELBUS_MASTER_KEY_PREVIOUS`` or
``MODELBUS_MASTER_KEY_PREVIOUS_FILE``: the :class:`~services.secrets.crypto.Keyring`
:func:`load_keyring` builds seals with the current key and opens records under
either. What a sealed record is lives in :mod:`services.secrets.crypto`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.secrets.crypto import KEY_BYTES, Keyring, SecretCipher
from shared.keyfile import generate_master_key_file as generate_master_key_file  # re-exported

log = logging.getLogger("modelbus.secrets")

MASTER_KEY_ENV = "MODELBUS_MASTER_KEY"
"""Environment variable holding the base64 master key."""
MASTER_KEY_FILE_ENV = "MODELBUS_MASTER_KEY_FILE"
"""Environment variable naming a file that holds the base64 master key."""
PREVIOUS_KEY_ENV = "MODELBUS_MASTER_KEY_PREVIOUS"
"""Environment variable holding the base64 master key being rotated away from (read-only)."""
PREVIOUS_KEY_FILE_ENV = "MODELBUS_MASTER_KEY_PREVIOUS_FILE"
"""Environment variable naming a file that holds the previous master key."""


class MasterKeyError(ValueError):
    """The master key configuration is unusable: bad base64, wrong length, unreadable file."""


def parse_master_key(text: str, *, source: str) -> bytes:
    """32 key bytes from base64 text; :class:`MasterKeyError` naming ``source`` otherwise.

    The message never quotes the text: a mistyped key is still most of a key.
    """
    stripped = text.strip()
    try:
        key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError(
            f"{source} is not valid base64; it must be {KEY_BYTES} random bytes in base64 "
            f"(generate one with: python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
        ) from exc
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"{source} decodes to {len(key)} bytes; an AES-256 master key must be {KEY_BYTES} bytes")
    return key


class MasterKey:
    """A loaded master key and where it came from (for messages); its repr hides the key."""

    __slots__ = ("key", "source")

    def __init__(self, key: bytes, source: str) -> None:
        self.key = key
        self.source = source

    def __repr__(self) -> str:
        return f"MasterKey(<hidden>, source={self.source!r})"


def read_master_key_file(path: str | os.PathLike[str], *, source: str) -> MasterKey:
    """The master key in file ``path``; :class:`MasterKeyError` naming ``source`` and the file otherwise.

    Warns (never refuses) when the file is readable by group or others.
    """
    key_file = Path(path)
    try:
        text = key_file.read_text(encoding="ascii")
        mode = key_file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise MasterKeyError(f"{source}: cannot read key file {path}: {exc}") from exc
    if mode & 0o077:
        log.warning("master key file %s is readable by group or others (mode %o); chmod 600 it", path, mode & 0o777)
    described = f"{source} ({path})"
    return MasterKey(parse_master_key(text, source=described), described)


def _load_key(env: Mapping[str, str], inline_env: str, file_env: str) -> MasterKey | None:
    inline = env.get(inline_env, "")
    path = env.get(file_env, "")
    if inline and path:
        raise MasterKeyError(f"both {inline_env} and {file_env} are set; set only one")
    if inline:
        return MasterKey(parse_master_key(inline, source=inline_env), inline_env)
    if not path:
        return None
    return read_master_key_file(path, source=file_env)


def load_master_key(env: Mapping[str, str] | None = None) -> MasterKey | None:
    """The configured master key, ``None`` when none is configured.

    ``MODELBUS_MASTER_KEY`` holds the key itself, ``MODELBUS_MASTER_KEY_FILE``
    names a file holding it; setting both is refused rather than guessing which
    one was meant. An empty variable counts as unset.
    """
    return _load_key(os.environ if env is None else env, MASTER_KEY_ENV, MASTER_KEY_FILE_ENV)


def load_previous_master_key(env: Mapping[str, str] | None = None) -> MasterKey | None:
    """The key a rotation is moving away from (``MODELBUS_MASTER_KEY_PREVIOUS[_FILE]``), if given.

    Same rules as :func:`load_master_key`. Giving it without a current key is
    refused: the previous key only ever opens records, it never seals one.
    """
    env = os.environ if env is None else env
    previous = _load_key(env, PREVIOUS_KEY_ENV, PREVIOUS_KEY_FILE_ENV)
    if previous is not None and not (env.get(MASTER_KEY_ENV) or env.get(MASTER_KEY_FILE_ENV)):
        raise MasterKeyError(
            f"{previous.source} is set but no current master key is: set {MASTER_KEY_ENV} or "
            f"{MASTER_KEY_FILE_ENV} to the new key, and keep the previous one only while a rotation is under way"
        )
    return previous


@dataclass(frozen=True)
class ConfiguredKeys:
    """The keyring a service was configured with, and where its keys came from (for messages)."""

    ring: Keyring
    source: str


def load_keyring(env: Mapping[str, str] | None = None) -> ConfiguredKeys | None:
    """The current key and, during a rotation, the previous one; ``None`` when no key is configured.

    :class:`MasterKeyError` for anything unusable, as :func:`load_master_key`.
    """
    current = load_master_key(env)
    previous = load_previous_master_key(env)
    if current is None:
        return None
    ring = Keyring(SecretCipher(current.key), SecretCipher(previous.key) if previous is not None else None)
    source = current.source if previous is None else f"{current.source}, previous key from {previous.source}"
    return ConfiguredKeys(ring, source)
