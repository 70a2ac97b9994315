"""``modelbus secrets rotate-master-key``: the secrets service's own rotation, run as a child process.

The CLI imports only :mod:`shared`. Re-encrypting the store is the secrets
service's business, so this command runs ``python -m services.secrets
rotate-master-key`` across a process boundary and passes it the environment:
the current master key (``MODELBUS_MASTER_KEY[_FILE]``, else the key file
``modelbus up`` keeps in its data directory) and the NATS URL found the way
every other command finds it. The child prints its progress and its exit
status becomes this command's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from nats.aio.client import Client

from shared.keyfile import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, generate_master_key_file

DATA_DIR_KEY_FILE = "master.key"
"""Name of the master key file ``modelbus up`` generates in its data directory."""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    from services.cli.main import _discover_url, identity_kwargs  # the CLI's own NATS discovery

    env = {**os.environ, "NATS_URL": _discover_url(args)}
    # On a secure `modelbus up`, only the secrets identity may touch the secrets bucket.
    identity = identity_kwargs(args, "secrets")
    if identity:
        env |= {"NATS_USER": identity["user"], "NATS_PASSWORD": identity["password"]}
        env["MODELBUS_INBOX_PREFIX"] = identity["inbox_prefix"]
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
