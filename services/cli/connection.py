"""How a ``modelbus`` command finds the stack it talks to, and as whom.

The URL (which may list a cluster's servers, ``a,b,c``; see
:func:`shared.bus.server_urls`): ``--nats-url``, then ``NATS_URL``, then the URL in a credentials file,
then the ``run.json`` of the running ``modelbus up`` in the data directory
(``--data-dir``, else ``MODELBUS_HOME``, else ``~/.local/share/modelbus``).
There is no guess beyond that: a forgotten data directory is an error, not a
silent try at ``127.0.0.1:4222``, which may be someone else's stack.

The identity: ``--creds FILE``, then ``NATS_USER``/``NATS_PASSWORD``
(``MODELBUS_INBOX_PREFIX``) in the environment, then ``MODELBUS_CREDS=FILE``,
then, when the URL is that of the secure stack recorded in the data directory,
the identity that stack generated for the command's role (``client`` for
``complete``, ``admin`` for the admin commands).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client

from services.cli.datadir import RunInfo, load_passwords, read_run_info
from shared import identities
from shared.bus import InvalidNatsUrl, identity_from_env, nats_url, server_urls
from shared.client import (
    CREDS_ENV,
    CredentialsFileError,
    CredentialsRefused,
    ServerUnreachable,
    load_credentials,
    open_connection,
)

CREDENTIAL_WAYS = (
    "Pass credentials in one of three ways:\n"
    "  1. the environment: NATS_USER, NATS_PASSWORD and MODELBUS_INBOX_PREFIX\n"
    f"  2. a credentials file: --creds FILE or {CREDS_ENV}=FILE (<data-dir>/client.json written by `modelbus up`, "
    "or one from `modelbus create client NAME`)\n"
    "  3. the data dir of a local stack: --data-dir DIR or MODELBUS_HOME=DIR (it holds every identity)"
)


class CliError(Exception):
    """A failure the CLI reports as ``error: <message>`` with exit status 1."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where a command connects, as whom, and where that came from (for messages)."""

    url: str
    login: dict[str, str] | None
    """``user``/``password``/``inbox_prefix``, or ``None`` for a connection without credentials."""
    source: str
    """Where ``login`` came from, e.g. ``the data dir /home/me/.local/share/modelbus``."""
    data_dir: Path
    run: RunInfo | None
    """The stack recorded in ``data_dir``, if one is running."""


def _servers(url: str) -> set[tuple[str, int]]:
    """``(host, port)`` of every server in a NATS URL list, with loopback names made equal."""
    out = set()
    for server in server_urls(url):
        parts = urlsplit(server)
        host = (parts.hostname or "127.0.0.1").lower()
        if host in ("localhost", "::1"):
            host = "127.0.0.1"
        out.add((host, parts.port or 4222))
    return out


def same_server(a: str, b: str) -> bool:
    """Whether two NATS URLs (or lists of them, a cluster's) share a server: then they name one stack."""
    try:
        return bool(_servers(a) & _servers(b))
    except ValueError:
        return False


def data_dir_of(args: argparse.Namespace) -> Path:
    """The data directory a command uses."""
    return Path(args.data_dir).expanduser()


def no_stack_message(data_dir: Path, url: str | None = None) -> str:
    """What to say when no stack answers (or none is recorded)."""
    if url is None:
        return (
            f"no modelbus stack found (data dir {data_dir}: no running `modelbus up` recorded there). "
            "Start one with `modelbus up`, or say where it runs: --data-dir DIR or MODELBUS_HOME=DIR for a "
            "local stack, --nats-url URL or NATS_URL for another NATS server"
        )
    return (
        f"no modelbus stack found at {url} (data dir {data_dir}): nothing accepts connections there. "
        "Start one with `modelbus up`, or point --data-dir / MODELBUS_HOME at the running one's data dir"
    )


def resolve(args: argparse.Namespace, role: str) -> Target:
    """The URL and identity for a command acting as ``role`` (see the module docstring)."""
    data_dir = data_dir_of(args)
    run = read_run_info(data_dir)
    explicit = getattr(args, "nats_url", None) or os.environ.get("NATS_URL") or None
    creds_path = getattr(args, "creds", None)
    login: dict[str, str] | None = None
    source = ""
    file_url: str | None = None
    env_identity = identity_from_env()
    try:
        if creds_path:
            creds = load_credentials(creds_path)
            login, file_url, source = creds.connect_kwargs(), creds.url, f"--creds {creds_path}"
        elif "user" in env_identity:
            login, source = env_identity, "NATS_USER/NATS_PASSWORD in the environment"
        elif os.environ.get(CREDS_ENV):
            creds = load_credentials(os.environ[CREDS_ENV])
            login, file_url, source = creds.connect_kwargs(), creds.url, f"{CREDS_ENV}={os.environ[CREDS_ENV]}"
    except CredentialsFileError as exc:
        raise CliError(str(exc)) from None
    url = explicit or file_url or (run.nats_url if run else None)
    if url is None:
        raise CliError(no_stack_message(data_dir))
    try:
        url = nats_url(url)  # every server of a list checked; "a, b" becomes "nats://a:4222,nats://b:4222"
    except InvalidNatsUrl as exc:
        raise CliError(str(exc)) from None
    if login is None and run is not None and run.secure and same_server(url, run.nats_url):
        passwords = load_passwords(data_dir)
        if passwords and role in passwords:
            login = {"user": role, "password": passwords[role], "inbox_prefix": identities.inbox_prefix(role)}
            source = f"the data dir {data_dir}"
    return Target(url=url, login=login, source=source, data_dir=data_dir, run=run)


def service_env(args: argparse.Namespace, service: str) -> dict[str, str]:
    """``NATS_URL`` and, for the local secure stack, the environment that makes a process ``service``
    (its identities, state identity included): for commands that run a service's own tool."""
    target = resolve(args, service)
    env = {"NATS_URL": target.url}
    run = target.run
    if run is not None and run.secure and same_server(target.url, run.nats_url):
        passwords = load_passwords(target.data_dir)
        if passwords:
            env |= identities.connection_env(service, passwords)
    return env


async def connect(target: Target, name: str) -> Client:
    """A connection to ``target``; a :class:`CliError` saying what is wrong when there is none."""
    login: dict[str, Any] = dict(target.login or {})
    try:
        return await open_connection(target.url, name=name, **login)
    except CredentialsRefused as exc:
        origin = f" (credentials from {target.source})" if target.source else ""
        raise CliError(f"{exc}{origin}.\n{CREDENTIAL_WAYS}") from None
    except ServerUnreachable:
        raise CliError(no_stack_message(target.data_dir, target.url)) from None
    except CredentialsFileError as exc:
        raise CliError(str(exc)) from None
