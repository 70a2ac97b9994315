"""Secrets commands: ``create secret``, ``get secrets``, and ``secrets rotate-master-key``.

``modelbus create secret NAME`` reads the value from standard input or a file
(``--from-literal`` still works, with a warning: a command line is visible to
every local user) and applies it as a ``Secret`` document through the config
service. ``modelbus get secrets`` lists what the secrets service holds
(presence, last four characters, source; never a value). ``modelbus delete
secret NAME`` is in :mod:`services.cli.admin`.

The CLI imports only :mod:`shared`. Re-encrypting the store is the secrets
service's business, so ``secrets rotate-master-key`` runs ``python -m
services.secrets rotate-master-key`` across a process boundary and passes it
the environment: the current master key (``MODELBUS_MASTER_KEY[_FILE]``, else
the key file ``modelbus up`` keeps in its data directory), the NATS URL found
the way every other command finds it and, for a local secure stack, the secrets
service's identities (the state identity alone may write the secrets bucket).
The child prints its progress and its exit status becomes this command's.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import yaml
from nats.aio.client import Client

from services.cli.rpc import actor, call
from shared.admin import ApplyRequest, ApplyResult
from shared.envelopes import SecretList
from shared.keyfile import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, generate_master_key_file
from shared.subjects import CONFIG_APPLY, SECRETS_LIST

DATA_DIR_KEY_FILE = "master.key"
"""Name of the master key file ``modelbus up`` generates in its data directory."""
SECRET_KINDS = ("secret", "secrets")
"""How ``get`` and ``delete`` spell stored secrets."""
ARGV_WARNING = (
    "warning: --from-literal puts the secret in the command line, where other local users can read it "
    "(ps, /proc/PID/cmdline) and your shell may keep it in its history; prefer --from-stdin or --from-file"
)


def read_secret_value(args: argparse.Namespace) -> str:
    """The value to store, from standard input, a file, or (warned against) the command line."""
    if args.from_literal is not None:
        print(ARGV_WARNING, file=sys.stderr)
        key, sep, value = str(args.from_literal).partition("=")
        if not sep or key != "value":
            raise ValueError("--from-literal takes value=<secret>")
        return value
    if args.from_file is not None:
        return Path(args.from_file).expanduser().read_text().rstrip("\n")
    if sys.stdin.isatty():
        return getpass.getpass(f"value of secret {args.name} (not echoed): ")
    return sys.stdin.read().rstrip("\n")


async def cmd_create_secret(nc: Client, args: argparse.Namespace) -> int:
    """Store a secret through the config service (encrypted by the secrets service, audited by name)."""
    try:
        value = read_secret_value(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not value:
        print("error: the secret's value is empty", file=sys.stderr)
        return 2
    name, _, namespace = args.name.rpartition("/")[::-1] if "/" in args.name else (args.name, "", "")
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    doc = {
        "apiVersion": "modelbus.dev/v1",
        "kind": "Secret",
        "metadata": metadata,
        "spec": {"stringData": {"value": value}},
    }
    result = await call(
        nc, CONFIG_APPLY, ApplyRequest(documents=json.dumps(doc), actor=actor(), source="create secret"), ApplyResult
    )
    print(f"secret {args.name} stored" if result.secrets else f"secret {args.name}: nothing stored")
    return 0


async def cmd_get_secrets(nc: Client, args: argparse.Namespace) -> int:
    """What the secrets service holds: name, presence, last four characters, source, update time."""
    listing = await call(nc, SECRETS_LIST, {}, SecretList, timeout=10)
    items = [i for i in listing.items if not args.name or i.name == args.name]
    if args.output in ("json", "yaml"):
        rows = msgspec.to_builtins(items)
        print(json.dumps(rows, indent=2) if args.output == "json" else yaml.safe_dump(rows, sort_keys=False).rstrip())
        return 0
    table = [("NAME", "KEY_PRESENT", "KEY_LAST4", "SOURCE", "UPDATED_AT")]
    for i in items:
        present = "yes" if i.key_present else "no"
        table.append((i.name, present, i.key_last4 or "-", i.source or "-", i.updated_at or "-"))
    widths = [max(len(row[c]) for row in table) for c in range(5)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``modelbus secrets rotate-master-key``."""
    secrets = sub.add_parser("secrets", help="the encrypted secrets store")
    commands = secrets.add_subparsers(dest="secrets_command", required=True)
    rotate = commands.add_parser(
        "rotate-master-key",
        help="re-encrypt every stored secret under a new master key (safe to interrupt and run again)",
        description=(
            "Re-encrypt every stored secret under the key in --new-key-file. The current key comes from "
            f"{MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}, else from <data-dir>/{DATA_DIR_KEY_FILE}. An interrupted "
            "rotation loses nothing: run the same command again (without --generate) to finish it. "
            "See docs/secrets.md, 'Rotating the master key'."
        ),
    )
    rotate.add_argument("--new-key-file", required=True, help="file holding the new master key")
    rotate.add_argument(
        "--generate", action="store_true", help="first write a new random key to --new-key-file (mode 0600)"
    )
    rotate.add_argument("--nats-url", help="NATS server (default: NATS_URL or the running modelbus up)")
    rotate.set_defaults(admin=cmd_rotate_master_key)


def _child_env(args: argparse.Namespace) -> tuple[dict[str, str], Path | None]:
    """The rotation's environment, and the data-directory key file when that is the current key."""
    from services.cli.connection import service_env  # the CLI's own NATS discovery

    # On a secure `modelbus up`, only the secrets service's state identity may touch the secrets bucket.
    env = {**os.environ, **service_env(args, "secrets")}
    data_dir_key = None
    if not env.get(MASTER_KEY_ENV) and not env.get(MASTER_KEY_FILE_ENV):
        candidate = Path(args.data_dir).expanduser() / DATA_DIR_KEY_FILE
        if candidate.is_file():
            env[MASTER_KEY_FILE_ENV] = str(candidate)
            data_dir_key = candidate
    return env, data_dir_key


async def cmd_rotate_master_key(nc: Client, args: argparse.Namespace) -> int:
    """Run ``python -m services.secrets rotate-master-key``; its exit status."""
    new_key = Path(args.new_key_file).expanduser()
    if args.generate:
        try:
            generate_master_key_file(new_key)
        except FileExistsError as exc:
            print(
                f"error: {exc}. To finish an interrupted rotation to that key, run again without --generate.",
                file=sys.stderr,
            )
            return 2
        print(f"generated a new master key in {new_key} (mode 0600); back it up", flush=True)
    env, data_dir_key = _child_env(args)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.secrets", "rotate-master-key", "--new-key-file", str(new_key), env=env
    )
    status = await child.wait()
    if status == 0 and data_dir_key is not None:
        print(
            f"next: stop `modelbus up`, keep a copy of {data_dir_key} until the new key has been checked, "
            f"move {new_key} over {data_dir_key}, and start `modelbus up` again",
            flush=True,
        )
    return status
