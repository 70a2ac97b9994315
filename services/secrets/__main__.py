"""Entry point: ``modelbus-secrets`` (or ``python -m services.secrets``).

Start-up order matters: the master key is read and checked against the
secrets store *before* any subscription exists, so a wrong key stops the
process (exit status 2) without having answered anything or written anything.

Two broker connections, two identities (see :mod:`shared.identities`): the
FastStream broker serves requests as ``secrets``, which may publish nothing
but answers to its requesters' inboxes; every KV operation and the
``modelbus.v1.secrets.changed`` announcement go over a second connection as
``secrets-state`` (:func:`shared.bus.connect_state`), which answers nothing.
Without identities (``--insecure``) both are the one connection.

``modelbus-secrets rotate-master-key --new-key-file PATH`` re-encrypts the
store under a new master key instead of serving (:mod:`services.secrets.rotate_cmd`).
"""

from __future__ import annotations

import argparse
import os

import msgspec

from services.secrets import rotate_cmd
from services.secrets.masterkey import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, MasterKeyError, load_keyring
from services.secrets.service import SecretsService
from services.secrets.store import SecretStore, StoreStartupError, ensure_no_locked_data, store_keeper
from services.secrets.vault import VaultConfigError, vault_from_env
from services.secrets.wire import register
from shared.bus import close_state, connect_state, make_broker, run
from shared.envelopes import SecretChanged
from shared.logs import setup_logging
from shared.runtime import serve
from shared.subjects import SECRETS_BUCKET, SECRETS_CHANGED
from shared.telemetry import setup_tracing

EXIT_BAD_KEY = 2
"""Exit status when the master key is malformed or does not match the store, or the Vault settings are unusable."""

_encoder = msgspec.json.Encoder()


async def _main() -> None:
    log = setup_logging("secrets")
    setup_tracing("modelbus-secrets")
    try:
        keys = load_keyring()
    except MasterKeyError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(EXIT_BAD_KEY) from None
    try:
        vault = vault_from_env(os.environ)
    except VaultConfigError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(EXIT_BAD_KEY) from None
    broker = make_broker("secrets")
    service = SecretsService(vault=vault)
    register(broker, service)
    await broker.connect()  # serve() reuses this connection; no subscription exists yet
    state_nc = await connect_state("secrets", broker.connection)

    async def publish_change(change: SecretChanged) -> None:
        await state_nc.publish(SECRETS_CHANGED, _encoder.encode(change))

    service.publish_change = publish_change
    try:
        js = state_nc.jetstream()
        if keys is None:
            await ensure_no_locked_data(js)
            log.warning(
                "no master key configured (%s or %s): serving env: references only; "
                "stored secrets answer 503 until a key is set",
                MASTER_KEY_ENV,
                MASTER_KEY_FILE_ENV,
            )
        else:
            service.store = await SecretStore.open(js, keys.ring, key_source=keys.source)
            log.info("secrets store %s unlocked", SECRETS_BUCKET)
    except StoreStartupError as exc:
        log.error("cannot start: %s", exc)
        await close_state(state_nc, broker.connection)
        await broker.stop()
        raise SystemExit(EXIT_BAD_KEY) from None
    state = (
        f"store unlocked, key id {', '.join(keys.ring.key_ids)}" if keys is not None else "store locked: no master key"
    )
    if vault is not None:
        # Address, mount and prefix only: the token is never logged.
        state += f"; Vault first at {vault.kv.address}, {vault.where('')}"

    keeper = store_keeper(state_nc) if keys is not None else None  # recreates the bucket a lost server took
    if keeper is not None:
        keeper.start()

    async def on_stop() -> None:
        if keeper is not None:
            await keeper.stop()
        if vault is not None:
            await vault.aclose()
        await close_state(state_nc, broker.connection)

    await serve(log, broker, ready_detail=f"secrets ({state})", on_stop=on_stop)


def main(argv: list[str] | None = None) -> None:
    """Run the secrets service, or its ``rotate-master-key`` command."""
    parser = argparse.ArgumentParser(prog="modelbus-secrets", description=__doc__)
    rotate_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if args.command == rotate_cmd.COMMAND:
        raise SystemExit(rotate_cmd.run_command(args))
    run(_main())


if __name__ == "__main__":
    main()
