"""Private files ``modelbus up`` generates: the secrets master key and the admin token.

``modelbus up`` creates one on first run in its data directory; the secrets
service reads it through ``MODELBUS_MASTER_KEY_FILE``.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

KEY_BYTES = 32
"""AES-256."""
MASTER_KEY_ENV = "MODELBUS_MASTER_KEY"
MASTER_KEY_FILE_ENV = "MODELBUS_MASTER_KEY_FILE"
ADMIN_TOKEN_ENV = "MODELBUS_ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = "MODELBUS_ADMIN_TOKEN_FILE"
AUDIT_KEY_ENV = "MODELBUS_AUDIT_KEY"
"""The audit chain's HMAC key (base64, 32 bytes), held like the master key."""
AUDIT_KEY_FILE_ENV = "MODELBUS_AUDIT_KEY_FILE"


def write_new_private_file(path: str | os.PathLike[str], content: bytes) -> Path:
    """Create ``path`` with mode 0600 holding ``content``; never replace an existing file.

    ``~`` is expanded and the parent directory is created (mode 0700) if missing.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask could only have narrowed it; make it exact
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def write_private_file(path: str | os.PathLike[str], content: bytes) -> Path:
    """Write ``content`` to ``path`` with mode 0600, replacing it atomically if it exists.

    The new file is created 0600 next to the target and renamed over it, so no
    reader ever sees a partial file or a wider mode.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    write_new_private_file(tmp, content)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def generate_master_key_file(path: str | os.PathLike[str]) -> None:
    """Write a new random master key to ``path`` with mode 0600.

    Refuses (:class:`FileExistsError`) to replace an existing file: losing the
    old key would make every stored secret unreadable. ``~`` is expanded and
    the parent directory is created (mode 0700) if missing.
    """
    text = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    try:
        write_new_private_file(path, text)
    except FileExistsError:
        raise FileExistsError(
            f"master key file {path} already exists; refusing to overwrite it "
            "(the secrets it protects would become unreadable)"
        ) from None
