"""The application registry and the running server: ``clients.json`` → nats-server → ``clients.applied``.

``modelbus create/delete client`` edit ``clients.json`` (through
:mod:`shared.identities`); the supervisor of the running stack, which owns the
nats-server process, notices the change (it polls every
:data:`CLIENTS_POLL_S`), re-renders the server's authorization from it,
reloads the server (SIGHUP to its own child) and, once the server has confirmed
the reload, writes the registry's SHA-256 to ``clients.applied``. The CLI waits
for that digest to match the registry: then the new identity can connect, or
the revoked one's connections are closed and it can connect no more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

from services.cli.datadir import CLIENTS_APPLIED
from shared import identities
from shared.keyfile import write_private_file
from shared.natscluster import EmbeddedCluster
from shared.natsserver import EmbeddedNats, NatsServerError

CLIENTS_POLL_S = 0.2
"""How often the supervisor looks at ``clients.json`` for changes."""
APPLY_TIMEOUT_S = 5.0
"""How long the CLI waits for the running stack to apply a change."""


def registry_state(data_dir: Path) -> tuple[tuple[int, int, int] | None, bytes]:
    """A change stamp of ``clients.json`` and its bytes (``None``/``b""`` when absent)."""
    path = data_dir / identities.CLIENTS_REGISTRY
    try:
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size), path.read_bytes()
    except FileNotFoundError:
        return None, b""


def registry_digest(registry: bytes) -> str:
    """What ``clients.applied`` holds once the server has loaded ``registry``."""
    return hashlib.sha256(registry).hexdigest()


def parse_registry(registry: bytes) -> dict[str, dict[str, str]]:
    """The applications in ``clients.json``'s bytes (as :func:`shared.identities.load_clients` reads them)."""
    if not registry.strip():
        return {}
    raw = json.loads(registry)
    if not isinstance(raw, dict):
        raise ValueError("clients.json is not a JSON object")
    return {str(k): dict(v) for k, v in raw.items()}


def render_authorization(passwords: dict[str, str], registry: bytes) -> str:
    """The nats-server ``authorization`` block for every role and the applications in ``registry``."""
    return identities.render_authorization(passwords, parse_registry(registry))


async def watch_clients(
    server: EmbeddedNats | EmbeddedCluster, data_dir: Path, passwords: dict[str, str], stamp: object
) -> None:
    """Apply every change of ``clients.json`` to the running server, then acknowledge it.

    Runs until cancelled. A registry the server refuses (or cannot be read) is
    reported and not acknowledged, so the CLI waiting for it says so.
    """
    while True:
        await asyncio.sleep(CLIENTS_POLL_S)
        new_stamp, registry = registry_state(data_dir)
        if new_stamp == stamp:
            continue
        stamp = new_stamp
        try:
            config = await asyncio.to_thread(render_authorization, passwords, registry)
            await asyncio.to_thread(server.reload, config)
        except (ValueError, TypeError, NatsServerError) as exc:
            print(f"[modelbus] error: client identities not applied: {exc}", file=sys.stderr, flush=True)
            continue
        write_private_file(data_dir / CLIENTS_APPLIED, registry_digest(registry).encode())
        count = len(parse_registry(registry))
        print(f"[modelbus] applied the application identities ({count} registered; nats-server reloaded)", flush=True)


def applied(data_dir: Path) -> bool:
    """Whether the running server has loaded the registry as it is now."""
    _, registry = registry_state(data_dir)
    try:
        done = (data_dir / CLIENTS_APPLIED).read_text().strip()
    except FileNotFoundError:
        return False
    return done == registry_digest(registry)


def wait_applied(data_dir: Path, timeout_s: float = APPLY_TIMEOUT_S) -> bool:
    """Wait (bounded) until the running server has loaded the registry as it is now."""
    deadline = time.monotonic() + timeout_s
    while not applied(data_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
