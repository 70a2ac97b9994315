"""The gateway's API keys: a file of their SHA-256 hashes, re-read when it changes.

The file named by ``MODELBUS_GATEWAY_KEYS`` is::

    {"keys": [{"name": "default", "sha256": "<hex sha256 of the key>", "created": "<RFC 3339>"}]}

A request's key is valid when its SHA-256 matches one entry (compared with
:func:`hmac.compare_digest`); the entry's ``name`` is what logs and spans may
show. The key itself is never logged, traced, put in an error or in argv.

The file is looked at (one ``stat``) at most every :data:`CHECK_EVERY_S`, from the
request that finds the check due, and re-read when its modification time, size or
inode changed, so removing a key takes effect within a second with no restart.
At start a missing, unreadable or malformed file is an error (the process exits
with status 2). Later, the same failure refuses every key until the file is good
again (fail closed: a typo while revoking a key must not leave it working); a
line is logged each time. Write the file atomically (a temporary file renamed
over it), as ``modelbus up`` does, so no request sees it half written.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable

import msgspec

from services.gateway.settings import KEYS_ENV, GatewaySetupError

log = logging.getLogger("modelbus.gateway.keys")

CHECK_EVERY_S = 0.5
"""Longest time between two looks at the key file."""
_HEX = frozenset("0123456789abcdef")


class KeyEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One key of the file: its name and the hash of its value."""

    name: str
    """Shown in logs and spans instead of the key."""
    sha256: str
    """Lower-case hex SHA-256 of the key's UTF-8 bytes."""
    created: str = ""
    """RFC 3339 time the key was made (informational)."""


class KeyFile(msgspec.Struct, kw_only=True, frozen=True):
    """The whole file."""

    keys: list[KeyEntry]


_decoder = msgspec.json.Decoder(KeyFile)


class KeyFileError(GatewaySetupError):
    """The key file cannot be used; the message names the variable and the path, never a key or hash."""


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def parse_key_file(data: bytes, path: str) -> tuple[tuple[str, bytes], ...]:
    """``(name, hex hash)`` pairs of a key file's content; :class:`KeyFileError` if it is not one."""
    try:
        parsed = _decoder.decode(data)
    except msgspec.MsgspecError as exc:
        # msgspec names the path of the bad field and the expected type, never the value.
        raise KeyFileError(f"{KEYS_ENV}: {path} is not a key file ({exc})") from None
    out: list[tuple[str, bytes]] = []
    for i, entry in enumerate(parsed.keys):
        digest = entry.sha256.lower()
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise KeyFileError(f"{KEYS_ENV}: {path}: keys[{i}].sha256 is not 64 hex digits")
        if not entry.name:
            raise KeyFileError(f"{KEYS_ENV}: {path}: keys[{i}].name is empty")
        out.append((entry.name, digest.encode()))
    return tuple(out)


def _read(path: str) -> tuple[tuple[tuple[str, bytes], ...], tuple[int, int, int]]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as exc:
        raise KeyFileError(f"{KEYS_ENV}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    return parse_key_file(data, path), _signature(st)


def key_hash(key: str) -> bytes:
    """The hex SHA-256 of a key, as the file holds it."""
    return hashlib.sha256(key.encode()).hexdigest().encode()


class KeyRing:
    """The valid keys, kept in step with the key file."""

    __slots__ = ("_clock", "_due", "_entries", "_signature", "path")

    def __init__(self, path: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Read the file once; :class:`KeyFileError` when it is missing, unreadable or malformed."""
        self.path = path
        self._clock = clock
        self._signature: tuple[int, int, int] | None
        self._entries, self._signature = _read(path)
        self._due = clock() + CHECK_EVERY_S
        if not self._entries:
            log.warning("%s %s holds no key: every request will be refused", KEYS_ENV, path)

    @property
    def names(self) -> list[str]:
        """Names of the keys in force."""
        return [name for name, _ in self._entries]

    def check(self, key: str | None) -> str | None:
        """The name of the key ``key`` matches, or ``None`` (no key, or no match)."""
        self._refresh()
        if not key:
            return None
        digest = key_hash(key)
        found: str | None = None
        for name, expected in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found

    def _refresh(self) -> None:
        now = self._clock()
        if now < self._due:
            return
        self._due = now + CHECK_EVERY_S
        try:
            if _signature(os.stat(self.path)) == self._signature:
                return
            entries, signature = _read(self.path)
        except (OSError, KeyFileError) as exc:
            if self._signature is not None:  # logged once per failing streak
                reason = f"cannot read {self.path}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
                log.error("%s; refusing every key until it is fixed", reason)
            self._entries, self._signature = (), None
            return
        before = set(self.names)
        self._entries, self._signature = entries, signature
        after = set(self.names)
        log.info(
            "%s reloaded: %d key(s)%s%s",
            KEYS_ENV,
            len(entries),
            f", added {', '.join(sorted(after - before))}" if after - before else "",
            f", removed {', '.join(sorted(before - after))}" if before - after else "",
        )
