"""Entry point: ``modelbus-secrets`` (or ``python -m services.secrets``)."""

from __future__ import annotations

import argparse

from services.secrets.service import register
from shared.bus import make_broker, run
from shared.logs import setup_logging
from shared.runtime import serve
from shared.telemetry import setup_tracing


async def _main() -> None:
    log = setup_logging("secrets")
    setup_tracing("modelbus-secrets")
    broker = make_broker("secrets")
    register(broker)
    await serve(log, broker, ready_detail="secrets")


def main(argv: list[str] | None = None) -> None:
    """Run the secrets service."""
    argparse.ArgumentParser(prog="modelbus-secrets", description=__doc__).parse_args(argv)
    run(_main())


if __name__ == "__main__":
    main()
