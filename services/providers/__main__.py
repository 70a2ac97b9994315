"""Entry point: ``modelbus-provider [--types mock,openai,...]`` (or ``python -m services.providers``)."""

from __future__ import annotations

import argparse
import os

from services.providers.registry import ADAPTERS
from services.providers.worker import ProviderWorker
from shared.bus import make_broker, run
from shared.logs import setup_logging
from shared.runtime import serve
from shared.telemetry import setup_tracing


async def _main(types: list[str], max_inflight: int) -> None:
    log = setup_logging("providers")
    setup_tracing("modelbus-providers")
    broker = make_broker("providers")
    holder: list[ProviderWorker] = []

    async def start() -> None:
        w = ProviderWorker(broker.connection, types, max_inflight=max_inflight)
        holder.append(w)
        await w.start()

    async def stop() -> None:
        if holder:
            await holder[0].stop()

    await serve(log, broker, on_start=start, on_stop=stop, ready_detail="providers " + ",".join(types))


def main(argv: list[str] | None = None) -> None:
    """Run one provider worker."""
    parser = argparse.ArgumentParser(prog="modelbus-provider", description=__doc__)
    parser.add_argument(
        "--types",
        default=os.environ.get("MODELBUS_PROVIDER_TYPES", ",".join(ADAPTERS)),
        help=f"comma-separated provider types to serve (default: all of {','.join(ADAPTERS)})",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=int(os.environ.get("MODELBUS_PROVIDER_MAX_INFLIGHT", "256")),
        help="calls handled concurrently per provider type",
    )
    args = parser.parse_args(argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in ADAPTERS]
    if unknown:
        parser.error(f"unknown provider type(s): {', '.join(unknown)}; known: {', '.join(ADAPTERS)}")
    run(_main(types, args.max_inflight))


if __name__ == "__main__":
    main()
