"""The life cycle every service process shares: start, announce, wait, stop.

A service builds its FastStream broker (control-plane subscribers registered),
then hands :func:`serve` the hooks to run once connected and before stopping.
SIGINT and SIGTERM stop it gracefully: hot-path servers stop taking messages
and finish those in flight, then the broker drains and spans are flushed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from faststream.nats import NatsBroker
from nats.errors import ConnectionReconnectingError

from shared.logs import announce_ready
from shared.metrics import start_metrics_server, with_metrics_url
from shared.telemetry import shutdown_tracing

Hook = Callable[[], Awaitable[None]]

STOP_TIMEOUT_S = 8.0
"""Longest a service waits for in-flight work when stopping."""


async def serve(
    log: logging.Logger,
    broker: NatsBroker,
    *,
    on_start: Hook | None = None,
    on_stop: Hook | None = None,
    ready_detail: str = "",
) -> None:
    """Run a service until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    try:
        if on_start is not None:
            await on_start()
        await broker.connection.flush()
        start_metrics_server(log.name.rsplit(".", 1)[-1])  # its URL goes in the ready line (MODELBUS_METRICS=off: none)
        announce_ready(log, with_metrics_url(ready_detail))
        await stop.wait()
        log.info("stopping")
    finally:
        # Bounded: with the server gone, a drain would wait on reconnects forever.
        try:
            if on_stop is not None:
                await asyncio.wait_for(on_stop(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("in-flight work did not finish within %ss", STOP_TIMEOUT_S)
        finally:
            try:
                await asyncio.wait_for(broker.stop(), 3.0)
            except (TimeoutError, ConnectionReconnectingError, RuntimeError) as exc:
                # A drain during a reconnect raises instead of waiting; close either way.
                log.warning("NATS connection did not drain (%s); closing", type(exc).__name__)
                await broker.connection.close()
            shutdown_tracing()
