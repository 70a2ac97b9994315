"""``modelbus create|delete client NAME`` and ``modelbus get clients``: per-application identities.

Each application gets its own broker identity (user ``client-NAME``, inbox
``_INBOX_client.NAME``, see :mod:`shared.identities`), so one can be revoked
without touching the others, and none can read another's replies. These
commands edit the registry in the data directory; the running ``modelbus up``
applies the change to its nats-server without a restart
(:mod:`services.cli.registry`), and they wait, bounded, until it has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from services.cli.connection import data_dir_of
from services.cli.datadir import RunInfo, read_run_info
from services.cli.registry import APPLY_TIMEOUT_S, wait_applied
from shared import identities


def _err(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _applying_stack(run: RunInfo | None) -> str | None:
    """Why ``run`` cannot apply client identities, or ``None`` when it can."""
    if run is None:
        return "no modelbus stack is running with this data dir (start `modelbus up`)"
    if not run.secure or not run.embedded:
        how = "--insecure" if run.embedded else "--nats-url (an external NATS server)"
        return f"the stack running with this data dir (pid {run.pid}) has no broker identities ({how})"
    return None


def cmd_create_client(args: argparse.Namespace) -> int:
    """Register application ``NAME``, write its credentials file and wait until the stack accepts it."""
    data_dir = data_dir_of(args)
    run = read_run_info(data_dir)
    problem = _applying_stack(run)
    if problem:
        return _err(f"cannot create client {args.name!r}: {problem}; data dir {data_dir}")
    assert run is not None
    try:
        path = identities.create_client(data_dir, args.name, run.nats_url)
    except ValueError as exc:
        return _err(str(exc))
    if not wait_applied(data_dir):
        return _err(
            f"client {args.name!r} is registered, but the running stack (pid {run.pid}) did not apply it within "
            f"{APPLY_TIMEOUT_S:g}s; see its output and {data_dir / 'nats-server.log'}"
        )
    print(f"client {args.name} created: credentials in {path} (mode 0600; keep it private)")
    print(f'from code:   ModelbusClient.connect(creds="{path}")')
    print(f'from a shell: MODELBUS_CREDS={path} modelbus complete "hello"')
    return 0


def cmd_delete_client(args: argparse.Namespace) -> int:
    """Revoke application ``NAME``: remove it from the registry, delete its credentials, wait for the stack."""
    data_dir = data_dir_of(args)
    if args.name == identities.DEFAULT_CLIENT:
        return _err(
            f"{identities.DEFAULT_CLIENT!r} is the built-in client identity ({identities.CLIENT_FILE}); "
            "it cannot be deleted"
        )
    try:
        identities.delete_client(data_dir, args.name)
    except KeyError:
        return _err(f"no client {args.name!r} in {data_dir} (see `modelbus get clients`)")
    run = read_run_info(data_dir)
    if _applying_stack(run) is not None:
        print(f"client {args.name} deleted (no stack with identities is running, so nothing else to revoke)")
        return 0
    assert run is not None
    if not wait_applied(data_dir):
        return _err(
            f"client {args.name!r} is removed from the registry, but the running stack (pid {run.pid}) did not "
            f"apply it within {APPLY_TIMEOUT_S:g}s: its credentials may still work; see its output"
        )
    print(f"client {args.name} deleted: its credentials no longer connect and its open connections are closed")
    return 0


def client_rows(data_dir: Path) -> list[dict[str, str]]:
    """Every application identity, the built-in one first."""
    rows = [
        {
            "name": identities.DEFAULT_CLIENT,
            "user": identities.client_user(identities.DEFAULT_CLIENT),
            "inbox_prefix": identities.client_inbox_prefix(identities.DEFAULT_CLIENT),
            "created_at": "built-in",
        }
    ]
    for name, entry in sorted(identities.load_clients(data_dir).items()):
        rows.append(
            {
                "name": name,
                "user": entry.get("user", ""),
                "inbox_prefix": entry.get("inbox_prefix", ""),
                "created_at": entry.get("created_at", ""),
            }
        )
    return rows


def cmd_get_clients(args: argparse.Namespace) -> int:
    """List the application identities (never a password or hash)."""
    rows = client_rows(data_dir_of(args))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False).rstrip())
    else:
        header = {"name": "NAME", "user": "USER", "inbox_prefix": "INBOX_PREFIX", "created_at": "CREATED_AT"}
        table = [header, *rows]
        widths = {k: max(len(r[k]) for r in table) for k in header}
        for r in table:
            print("  ".join(r[k].ljust(widths[k]) for k in header).rstrip())
    return 0
