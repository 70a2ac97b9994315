"""Entry point: ``modelbus-router`` (or ``python -m services.router``)."""

from __future__ import annotations

import argparse
import os

from nats.aio.client import Client

from services.router.service import Router
from shared.bus import close_state, connect_state, make_broker, run
from shared.logs import setup_logging
from shared.runtime import serve
from shared.telemetry import setup_tracing


async def _main(max_inflight: int) -> None:
    log = setup_logging("router")
    setup_tracing("modelbus-router")
    broker = make_broker("router")
    holder: list[Router] = []
    states: list[Client] = []

    async def start() -> None:
        state = await connect_state("router", broker.connection)
        states.append(state)
        router = Router(broker.connection, max_inflight=max_inflight, state_nc=state)
        holder.append(router)
        await router.start()

    async def stop() -> None:
        if holder:
            await holder[0].stop()
        for state in states:
            await close_state(state, broker.connection)

    await serve(log, broker, on_start=start, on_stop=stop, ready_detail="router")


def main(argv: list[str] | None = None) -> None:
    """Run one router worker."""
    parser = argparse.ArgumentParser(prog="modelbus-router", description=__doc__)
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=int(os.environ.get("MODELBUS_ROUTER_MAX_INFLIGHT", "512")),
        help="requests handled concurrently by this worker",
    )
    args = parser.parse_args(argv)
    run(_main(args.max_inflight))


if __name__ == "__main__":
    main()
