"""Entry point: ``modelbus-config [--config FILE]`` (or ``python -m services.config``)."""

from __future__ import annotations

import argparse
import os
import sys

from services.config.service import ConfigStore, load_boot_config, open_bucket, register
from shared.bus import make_broker, run
from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.runtime import serve
from shared.telemetry import setup_tracing


async def _main(config_path: str | None) -> None:
    log = setup_logging("config")
    setup_tracing("modelbus-config")
    try:
        boot = load_boot_config(config_path)
    except (ConfigError, OSError) as exc:
        log.error("invalid configuration: %s", exc)
        raise SystemExit(2) from exc
    broker = make_broker("config")
    store_ref: list[ConfigStore] = []
    register(broker, store_ref)

    async def start() -> None:
        store = ConfigStore(broker, await open_bucket(broker))
        store_ref.append(store)
        await store.apply(boot)

    await serve(log, broker, on_start=start, ready_detail="config")


def main(argv: list[str] | None = None) -> None:
    """Run the config service."""
    parser = argparse.ArgumentParser(prog="modelbus-config", description=__doc__)
    parser.add_argument(
        "--config",
        default=os.environ.get("MODELBUS_CONFIG") or None,
        help="routing configuration file (default: built-in example)",
    )
    args = parser.parse_args(argv)
    run(_main(args.config))
    sys.exit(0)


if __name__ == "__main__":
    main()
