"""The data directory of ``modelbus up``: what is in it, and who may read it.

Layout (everything 0600, every folder 0700)::

    <data-dir>/
      master.key      the secrets store's master key          (refused if group/others can access it)
      audit.key       the audit chain's HMAC key              (refused likewise)
      admin.token     the HTTP admin API's bearer token       (refused likewise)
      identities.json every role's broker password            (refused likewise)
      client.json     the default client's credentials file   (refused likewise)
                      (NATS identity, and the HTTP gateway's URL and default key)
      gateway.key     the HTTP gateway's default API key       (refused likewise)
      gateway-keys.json  written by earlier versions (hashes only); no longer read, see docs/http.md
      clients/NAME.json  each application's credentials file  (refused likewise)
      clients.json    the applications' registry (bcrypt hashes only)
      clients.applied hash of the registry the running nats-server has loaded
      run.json        the running stack: NATS URL(s), admin URL, HTTP gateway URL, PID
      processes.json  every supervised process: state, PID, uptime, restarts (for ``modelbus status``)
      cluster-route.key  the route password of ``up --cluster`` nodes (refused likewise)
      nats-server.log, nats/ (configuration, ports file, JetStream store)
      nats/node-<i>/  with ``up --cluster N``: node i's configuration, store and nats-server.log

A key or credentials file that group or others can access is refused, not
quietly narrowed: it may already have been read, so the operator should know
(and perhaps rotate it). Everything else modelbus writes is narrowed on start.
Files modelbus does not know are left alone, so a data directory pointed at by
mistake (``--data-dir ~``) is not rewritten.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import identities
from shared.gateway_keys import new_key
from shared.keyfile import (
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE_ENV,
    AUDIT_KEY_ENV,
    AUDIT_KEY_FILE_ENV,
    KEY_BYTES,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    generate_master_key_file,
    write_new_private_file,
    write_private_file,
)
from shared.natsserver import PRIVATE_DIR_MODE, make_private

MASTER_KEY_FILE = "master.key"
AUDIT_KEY_FILE = "audit.key"
ADMIN_TOKEN_FILE = "admin.token"
RUN_FILE = "run.json"
NATS_DIR = "nats"
NATS_LOG = "nats-server.log"
PROCESSES_FILE = "processes.json"
"""The supervisor's view of every process of the running stack (written by ``modelbus up``)."""
ROUTE_PASSWORD_FILE = "cluster-route.key"
"""The password cluster nodes of ``modelbus up --cluster`` authenticate their routes with."""
GATEWAY_KEY_FILE = "gateway.key"
"""The HTTP gateway's default API key, in plain text: the quick start's (also in ``client.json``)."""
GATEWAY_KEYS_FILE = "gateway-keys.json"
"""The hash file earlier versions handed the gateway; the default key now lives in the JetStream key
store, so it is no longer written or read (still narrowed on start: it may exist)."""
GATEWAY_KEYS_ENV = "MODELBUS_GATEWAY_KEYS"
"""Path of an operator's extra key file for the gateway; with it set, no default key is generated."""
DEFAULT_KEY_NAME = "default"
"""Name of the generated key in the gateway's key store."""
CLIENTS_APPLIED = "clients.applied"
"""SHA-256 of the ``clients.json`` the running nats-server has loaded (written by ``modelbus up``)."""
DEFAULT_HOME = Path.home() / ".local" / "share" / "modelbus"
"""The data directory when neither ``--data-dir`` nor ``MODELBUS_HOME`` is given."""

PRIVATE_FILES = (
    MASTER_KEY_FILE,
    AUDIT_KEY_FILE,
    ADMIN_TOKEN_FILE,
    ROUTE_PASSWORD_FILE,
    GATEWAY_KEY_FILE,
    identities.IDENTITIES_FILE,
    identities.CLIENT_FILE,
)
"""Key and credentials files in the data directory: refused when group or others can access them."""
OPERATOR_KEY_FILES = (
    MASTER_KEY_FILE_ENV,
    "MODELBUS_MASTER_KEY_PREVIOUS_FILE",
    AUDIT_KEY_FILE_ENV,
    ADMIN_TOKEN_FILE_ENV,
)
"""Variables naming key files an operator supplies: held to the same rule."""
NARROWED = (
    RUN_FILE,
    PROCESSES_FILE,
    NATS_LOG,
    NATS_DIR,
    identities.CLIENTS_REGISTRY,
    CLIENTS_APPLIED,
    GATEWAY_KEYS_FILE,
)
"""What else modelbus writes in the data directory: narrowed to 0600/0700 on start."""


class DataDirError(Exception):
    """The data directory (or a key file) cannot be used as it is; the message says how to fix it."""


def default_data_dir() -> Path:
    """``$MODELBUS_HOME``, else ``~/.local/share/modelbus``."""
    home = os.environ.get("MODELBUS_HOME")
    return Path(home) if home else DEFAULT_HOME


def run_file(data_dir: Path) -> Path:
    """Where a running ``modelbus up`` records its NATS URL for other commands."""
    return data_dir / RUN_FILE


# ---------------------------------------------------------------- permissions


def _too_open(path: Path) -> int | None:
    """The mode of ``path`` when group or others have any access to it, else ``None``."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    return mode if mode & 0o077 else None


def private_file_problems(data_dir: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """One line per key or credentials file that group or others can access, saying how to fix it."""
    env = os.environ if env is None else env
    candidates = [data_dir / name for name in PRIVATE_FILES]
    clients_dir = data_dir / identities.CLIENTS_DIR
    if clients_dir.is_dir():
        candidates += sorted(clients_dir.glob("*.json"))
    candidates += [Path(env[var]).expanduser() for var in OPERATOR_KEY_FILES if env.get(var)]
    problems = []
    for path in candidates:
        mode = _too_open(path)
        if mode is not None:
            problems.append(
                f"{path} holds a key or credentials and group or others can access it (mode {mode:04o}); "
                f"fix it with: chmod 600 {path}   (and consider replacing it: it may have been read)"
            )
    return problems


def prepare(data_dir: Path) -> list[Path]:
    """Create the data directory (0700), refuse open key files, narrow the rest; returns what was narrowed.

    Raises :class:`DataDirError` when the directory belongs to another user or
    a key or credentials file is open to group or others.
    """
    data_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    st = data_dir.stat()
    if st.st_uid != os.geteuid():
        raise DataDirError(
            f"data directory {data_dir} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); "
            "choose your own with --data-dir or MODELBUS_HOME"
        )
    problems = private_file_problems(data_dir)
    if problems:
        raise DataDirError("refusing to start:\n  " + "\n  ".join(problems))
    changed: list[Path] = []
    if st.st_mode & 0o077:
        data_dir.chmod(PRIVATE_DIR_MODE)
        changed.append(data_dir)
    clients_dir = data_dir / identities.CLIENTS_DIR
    if clients_dir.is_dir() and not clients_dir.is_symlink() and clients_dir.stat().st_mode & 0o077:
        clients_dir.chmod(PRIVATE_DIR_MODE)
        changed.append(clients_dir)
    for name in NARROWED:
        changed += make_private(data_dir / name)
    return changed


# ---------------------------------------------------------------- generated keys


def ensure_master_key(data_dir: Path) -> Path | None:
    """The master key file for the secrets store, generated (0600) on first run.

    ``None`` when the operator supplies the key (``MODELBUS_MASTER_KEY`` or
    ``MODELBUS_MASTER_KEY_FILE``): theirs is used as given.
    """
    if os.environ.get(MASTER_KEY_ENV) or os.environ.get(MASTER_KEY_FILE_ENV):
        return None
    path = data_dir / MASTER_KEY_FILE
    if not path.exists():
        generate_master_key_file(path)
        print(f"[modelbus] generated the secrets master key {path} (mode 0600); back it up", flush=True)
    return path


def ensure_audit_key(data_dir: Path) -> Path | None:
    """The audit chain's HMAC key file, generated (0600) on first run, unless the operator supplies one.

    Like the master key it must outlive the stack: without it the existing
    audit chain cannot be verified.
    """
    if os.environ.get(AUDIT_KEY_ENV) or os.environ.get(AUDIT_KEY_FILE_ENV):
        return None
    path = data_dir / AUDIT_KEY_FILE
    if not path.exists():
        write_new_private_file(path, base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")
        print(f"[modelbus] generated the audit key {path} (mode 0600); back it up with the master key", flush=True)
    return path


def ensure_admin_token(data_dir: Path) -> Path | None:
    """The HTTP admin API's bearer token file, generated (0600) on first run, unless one is given."""
    if os.environ.get(ADMIN_TOKEN_ENV) or os.environ.get(ADMIN_TOKEN_FILE_ENV):
        return None
    path = data_dir / ADMIN_TOKEN_FILE
    if not path.exists():
        write_new_private_file(path, secrets.token_urlsafe(32).encode() + b"\n")
        print(f"[modelbus] generated the admin API token {path} (mode 0600)", flush=True)
    return path


def ensure_route_password(data_dir: Path) -> str:
    """The route password of a local cluster's nodes, generated (0600) on first use.

    Kept across runs so a node restarted by hand, or a run after a crash, joins
    the others; only the nodes' own configurations (0600) hold it besides this file.
    """
    path = data_dir / ROUTE_PASSWORD_FILE
    if not path.exists():
        write_new_private_file(path, secrets.token_urlsafe(32).encode() + b"\n")
    return path.read_text().strip()


@dataclass(frozen=True, kw_only=True)
class GatewayKey:
    """The HTTP gateway's default API key, which ``modelbus up`` stores (its hash) in the key store."""

    api_key: str
    """The key itself; it goes into ``client.json``, never into a child's environment or argv."""
    created: bool
    """Made on this run (first run, or ``gateway.key`` was deleted): it replaces any stored ``default``."""


def new_gateway_key() -> str:
    """A new HTTP API key: ``mb-`` and 32 random bytes, url-safe base64."""
    return new_key()


def ensure_gateway_key(data_dir: Path) -> GatewayKey | None:
    """The HTTP gateway's default key, generated (0600, ``gateway.key``) on first run and kept after.

    ``None`` when the operator supplies a key file (``MODELBUS_GATEWAY_KEYS``).
    Deleting ``gateway.key`` makes a new default key on the next run, which
    replaces the stored one. Raises :class:`DataDirError` for an empty file.
    """
    if os.environ.get(GATEWAY_KEYS_ENV):
        return None
    key_path = data_dir / GATEWAY_KEY_FILE
    created = not key_path.exists()
    if created:
        write_new_private_file(key_path, new_gateway_key().encode() + b"\n")
    key = key_path.read_text().strip()
    if not key:
        raise DataDirError(f"{key_path} is empty; delete it and a new default key is generated")
    if created:
        print(f"[modelbus] generated the HTTP gateway's default API key {key_path} (mode 0600)", flush=True)
    return GatewayKey(api_key=key, created=created)


# ---------------------------------------------------------------- the running stack


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What a running ``modelbus up`` recorded in ``run.json``."""

    nats_url: str
    """The NATS URL its services use."""
    pid: int
    """The supervisor's process id."""
    secure: bool
    """Whether it runs with broker identities (the default)."""
    admin_url: str | None = None
    """Where its config service serves the HTTP admin API, when it does."""
    embedded: bool = True
    """Whether it runs its own nats-server (and so can apply client identities)."""
    nats_urls: tuple[str, ...] = ()
    """Every server's URL (several with ``--cluster``); :attr:`nats_url` is them comma-joined."""
    cluster: int = 0
    """How many nodes its local cluster has (``up --cluster N``); 0 without one."""
    http_url: str | None = None
    """Where its HTTP gateway serves (OpenAI and Anthropic APIs), as the gateway's ready line named it."""
    metrics_urls: tuple[str, ...] = ()
    """Every service's Prometheus endpoint, as their ready lines named them (none with metrics off)."""


def write_run_info(data_dir: Path, info: RunInfo) -> None:
    """Record the running stack (0600)."""
    body = {
        "nats_url": info.nats_url,
        "pid": info.pid,
        "secure": info.secure,
        "admin_url": info.admin_url,
        "embedded": info.embedded,
        "nats_urls": list(info.nats_urls or info.nats_url.split(",")),
        "cluster": info.cluster,
        "http_url": info.http_url,
        "metrics_urls": list(info.metrics_urls),
    }
    write_private_file(run_file(data_dir), json.dumps(body, indent=2).encode())


def read_run_info(data_dir: Path) -> RunInfo | None:
    """The stack recorded in ``data_dir``, or ``None`` without one (or when its supervisor is gone)."""
    try:
        raw: dict[str, Any] = json.loads(run_file(data_dir).read_text())
        info = RunInfo(
            nats_url=str(raw["nats_url"]),
            pid=int(raw["pid"]),
            secure=bool(raw.get("secure")),
            admin_url=raw.get("admin_url") or None,
            embedded=bool(raw.get("embedded", True)),
            nats_urls=tuple(str(u) for u in raw.get("nats_urls") or str(raw["nats_url"]).split(",")),
            cluster=int(raw.get("cluster") or 0),
            http_url=raw.get("http_url") or None,
            metrics_urls=tuple(str(u) for u in raw.get("metrics_urls") or ()),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _alive(info.pid) else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` is still a ``modelbus up`` (a stale ``run.json`` may name a reused PID)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (not Linux): trust the signal
    return b"modelbus" in cmdline or b"services.cli" in cmdline


def read_processes(data_dir: Path) -> dict[str, Any] | None:
    """What the supervisor last wrote to ``processes.json``, or ``None`` when absent or unreadable."""
    try:
        raw = json.loads((data_dir / PROCESSES_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("processes"), list) else None


def load_passwords(data_dir: Path) -> dict[str, str] | None:
    """The role passwords a secure stack generated in ``data_dir``, or ``None``."""
    try:
        stored = json.loads((data_dir / identities.IDENTITIES_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else None
