"""``modelbus-secrets rotate-master-key --new-key-file PATH``: re-encrypt the store under a new master key.

The old key is the one the secrets service is configured with
(``MODELBUS_MASTER_KEY`` or ``MODELBUS_MASTER_KEY_FILE``), the new one is read
from ``--new-key-file``; the store is reached over ``NATS_URL``. The running
secrets service may stay up meanwhile: the rotation writes with
compare-and-set, so nothing it stores is overwritten, and a secret it stores
under the old key during the rotation is re-encrypted too. See
:mod:`services.secrets.rotation` for the steps and why an interruption loses
nothing, and docs/secrets.md for the procedure around it.

It connects as the secrets service's **state identity** (``secrets-state``,
from ``MODELBUS_STATE_USER`` / ``MODELBUS_STATE_PASSWORD`` /
``MODELBUS_STATE_INBOX_PREFIX``), the only one the broker lets touch the
secrets bucket; ``modelbus secrets rotate-master-key`` passes it from the data
directory of a secure ``modelbus up``. Without those variables it connects as
``NATS_USER`` (or anonymously, against an insecure server).

Exit status: 0 done, 1 stopped (NATS unreachable, a secret that does not open,
...; run again once fixed), 2 a key is missing, malformed or not the store's,
3 the test hook ``MODELBUS_ROTATION_CRASH_AFTER`` fired.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from nats.js.errors import BucketNotFoundError

from services.secrets.crypto import SecretCipher
from services.secrets.masterkey import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    MasterKeyError,
    load_master_key,
    read_master_key_file,
)
from services.secrets.rotation import NatsBucket, RotationError, WrongOldKey, rotate_master_key
from shared.bus import connect, nats_url, state_identity_from_env
from shared.logs import setup_logging
from shared.subjects import SECRETS_BUCKET

COMMAND = "rotate-master-key"
EXIT_STOPPED = 1
EXIT_BAD_KEY = 2
EXIT_CRASH_HOOK = 3
"""Status of the simulated crash (``MODELBUS_ROTATION_CRASH_AFTER``)."""
CRASH_AFTER_ENV = "MODELBUS_ROTATION_CRASH_AFTER"
"""Test hook: exit (status 3) right after this many secrets have been re-encrypted."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``rotate-master-key`` with the secrets service's argument parser."""
    rotate = commands.add_parser(
        COMMAND,
        help="re-encrypt every stored secret under a new master key (safe to interrupt and run again)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rotate.add_argument(
        "--new-key-file",
        required=True,
        help="file holding the new master key (base64 of 32 bytes, as modelbus generates)",
    )


def run_command(args: argparse.Namespace) -> int:
    """Run the rotation; the exit status."""
    setup_logging("secrets")
    return asyncio.run(_rotate(args.new_key_file))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


async def _rotate(new_key_file: str) -> int:
    hook = os.environ.get(CRASH_AFTER_ENV, "")
    if hook and not hook.isdigit():
        _fail(f"{CRASH_AFTER_ENV} must be a whole number, got {hook!r}")
        return EXIT_STOPPED
    crash_after = int(hook) if hook else None
    try:
        old = load_master_key()
        new = read_master_key_file(new_key_file, source="--new-key-file")
    except MasterKeyError as exc:
        _fail(str(exc))
        return EXIT_BAD_KEY
    if old is None:
        _fail(
            f"no current master key: set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV} to the key the secrets "
            "are stored with (the rotation re-encrypts from it to --new-key-file)"
        )
        return EXIT_BAD_KEY
    old_cipher, new_cipher = SecretCipher(old.key), SecretCipher(new.key)
    print(
        f"rotating the secrets master key: old key id {old_cipher.key_id} from {old.source}, "
        f"new key id {new_cipher.key_id} from {new.source}",
        flush=True,
    )

    def on_reencrypted(count: int) -> None:
        if crash_after is not None and count >= crash_after:
            # Test hook: die as abruptly as a kill would, with no clean-up at all.
            logging.getLogger("modelbus.secrets.rotation").warning(
                "%s=%d: exiting after %d re-encrypted secrets", CRASH_AFTER_ENV, crash_after, count
            )
            os._exit(EXIT_CRASH_HOOK)

    url = nats_url()
    state = state_identity_from_env()  # the identity that may write the secrets bucket
    try:
        nc = await connect("modelbus-secrets-rotate", url, **(state or {}))
    except Exception as exc:
        who = f" as {state['user']}" if state else ""
        _fail(f"cannot connect to NATS at {url}{who}: {exc}")
        return EXIT_STOPPED
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(SECRETS_BUCKET)
        except BucketNotFoundError:
            print(
                f"the secrets store (JetStream KV bucket {SECRETS_BUCKET!r}) does not exist yet: nothing to "
                "re-encrypt. Start the secrets service with the new key.",
                flush=True,
            )
            return 0
        report = await rotate_master_key(NatsBucket(js, kv), old_cipher, new_cipher, on_reencrypted=on_reencrypted)
    except WrongOldKey as exc:
        _fail(str(exc))
        return EXIT_BAD_KEY
    except RotationError as exc:
        _fail(str(exc))
        return EXIT_STOPPED
    except Exception as exc:  # NATS trouble mid-way: every step is safe to stop at
        hint = ""
        if state is None and os.environ.get("NATS_USER"):
            hint = (
                f" It connected as {os.environ['NATS_USER']!r}: on a secure modelbus up only the state identity "
                "(MODELBUS_STATE_USER=secrets-state) may use the secrets bucket; `modelbus secrets "
                "rotate-master-key` sets it."
            )
        _fail(
            f"the rotation stopped: {type(exc).__name__}: {exc}. Every secret is still readable with the old "
            f"or the new key; run the same command again to finish.{hint}"
        )
        return EXIT_STOPPED
    finally:
        await nc.drain()
    print(
        f"done: {report.reencrypted} secret(s) re-encrypted by this run; all {report.secrets} stored secret(s) "
        f"are under key id {report.new_key_id}, now the store's active key. Restart every secrets service with "
        f"the new key in {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}.",
        flush=True,
    )
    return 0
