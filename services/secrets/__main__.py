"""Entry point: ``modelbus-secrets`` (or ``python -m services.secrets``).

Start-up order matters: the master key is read and checked against the
secrets store *before* any subscription exists, so a wrong key stops the
process (exit status 2) without having answered anything or written anything.
"""

from __future__ import annotations

import argparse

from services.secrets.crypto import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, MasterKeyError, SecretCipher, load_master_key
from services.secrets.service import SecretsService, register
from services.secrets.store import SecretStore, StoreStartupError, ensure_no_locked_data
from shared.bus import make_broker, run
from shared.envelopes import SecretChanged
from shared.logs import setup_logging
from shared.runtime import serve
from shared.subjects import SECRETS_BUCKET, SECRETS_CHANGED
from shared.telemetry import setup_tracing

EXIT_BAD_KEY = 2
"""Exit status when the master key is malformed or does not match the store."""


async def _main() -> None:
    log = setup_logging("secrets")
    setup_tracing("modelbus-secrets")
    try:
        key = load_master_key()
    except MasterKeyError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(EXIT_BAD_KEY) from None
    broker = make_broker("secrets")

    async def publish_change(change: SecretChanged) -> None:
        await broker.publish(change, SECRETS_CHANGED)

    service = SecretsService(publish_change=publish_change)
    register(broker, service)
    await broker.connect()  # serve() reuses this connection; no subscription exists yet
    try:
        js = broker.connection.jetstream()
        if key is None:
            await ensure_no_locked_data(js)
            log.warning(
                "no master key configured (%s or %s): serving env: references only; "
                "stored secrets answer 503 until a key is set",
                MASTER_KEY_ENV,
                MASTER_KEY_FILE_ENV,
            )
        else:
            service.store = await SecretStore.open(js, SecretCipher(key.key), key_source=key.source)
            log.info("secrets store %s unlocked", SECRETS_BUCKET)
    except StoreStartupError as exc:
        log.error("cannot start: %s", exc)
        await broker.stop()
        raise SystemExit(EXIT_BAD_KEY) from None
    state = "store unlocked" if service.store is not None else "store locked: no master key"
    await serve(log, broker, ready_detail=f"secrets ({state})")


def main(argv: list[str] | None = None) -> None:
    """Run the secrets service."""
    argparse.ArgumentParser(prog="modelbus-secrets", description=__doc__).parse_args(argv)
    run(_main())


if __name__ == "__main__":
    main()
