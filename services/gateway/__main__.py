"""Entry point: ``modelbus-gateway`` (or ``python -m services.gateway``).

Start-up, in order: read the settings and the key file when one is set (a
setting that cannot work exits with status 2 and one line naming the variable),
bind the socket, connect to NATS (``NATS_URL``, ``NATS_USER``/``NATS_PASSWORD``,
``MODELBUS_INBOX_PREFIX``: the ``gateway`` identity under ``modelbus up``),
load and follow the key store and the configuration, serve HTTP (uvicorn,
httptools, on the uvloop of :func:`shared.bus.run`), then the ready line
``gateway http=http://HOST:PORT``.
SIGINT and SIGTERM stop it: no new connections, requests in flight get a few
seconds to finish, then the NATS connection drains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from nats.aio.client import Client

from services.gateway.app import Gateway
from services.gateway.config_follower import ConfigFollower
from services.gateway.core import Core
from services.gateway.keys import KeyRing, StoreKeys
from services.gateway.settings import GatewaySetupError, Settings, bind, load_settings, url_of
from services.gateway.upstream import Upstream
from shared.bus import MAX_OUTSTANDING_PINGS, PING_INTERVAL_S, RECONNECT_WAIT_S, connect, run
from shared.logs import announce_ready, setup_logging
from shared.metrics import in_flight_gauge, metrics_enabled, start_metrics_server, with_metrics_url
from shared.telemetry import setup_tracing, shutdown_tracing

CONFIG_WAIT_S = 10.0
"""How long start-up waits for the first configuration revision before announcing ready anyway
(``/readyz`` answers 503 until one is known; chat requests do not need it)."""
KEYS_WAIT_S = 10.0
"""How long start-up waits for the key store's content before announcing ready anyway (its keys
are answered 503 ``key_store_unavailable`` until it is known)."""
STOP_GRACE_S = 5
"""Seconds requests in flight get to finish when the gateway stops."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway's :func:`_serve` owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn(app: Gateway) -> _Server:
    config = uvicorn.Config(
        app,
        loop="none",  # shared.bus.run's uvloop is already running
        http="httptools",
        lifespan="off",
        ws="none",
        log_config=None,
        access_log=False,  # a line per request costs more than the request; keys never reach logs anyway
        server_header=False,
        timeout_graceful_shutdown=STOP_GRACE_S,
    )
    return _Server(config)


def _log_connection(what: str) -> Callable[[], Awaitable[None]]:
    async def report() -> None:
        logging.getLogger("modelbus.gateway").warning("gateway: %s", what)

    return report


async def _connect() -> Client:
    """One connection for everything, that never gives up on NATS (like a service's)."""
    return await connect(
        "modelbus-gateway",
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        disconnected_cb=_log_connection("disconnected from NATS; reconnecting"),
        reconnected_cb=_log_connection("reconnected to NATS"),
    )


async def _serve(log: logging.Logger, settings: Settings, keys: KeyRing | None, sock: socket.socket) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    setup_tracing("modelbus-gateway")
    nc = await _connect()
    upstream = Upstream(nc)
    follower = ConfigFollower(nc)
    store = StoreKeys(nc)
    core = Core(upstream=upstream, follower=follower, keys=keys, max_body=settings.max_body, store=store)
    server = _uvicorn(Gateway(core))
    serving: asyncio.Task[None] | None = None
    try:
        await upstream.start()
        store.start()
        follower.start()
        if not await store.wait_loaded(KEYS_WAIT_S):
            log.warning("the key store did not answer within %gs; its keys are refused until it does", KEYS_WAIT_S)
        if not await follower.wait_first(CONFIG_WAIT_S):
            log.warning("no routing configuration after %gs; /readyz answers 503 until one arrives", CONFIG_WAIT_S)
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        await nc.flush()
        url = url_of(sock)
        log.info(
            "serving http on %s (%d stored key(s), %d from the key file, body limit %d bytes)",
            url,
            len(store.names),
            len(keys.names) if keys is not None else 0,
            settings.max_body,
        )
        if metrics_enabled():
            start_metrics_server("gateway")
            in_flight_gauge(lambda: upstream.in_flight)
        announce_ready(log, with_metrics_url(f"gateway http={url}"))
        await stop.wait()
        log.info("stopping")
    finally:
        if serving is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(serving, STOP_GRACE_S + 2)
            except TimeoutError:
                log.warning("requests in flight did not finish within %ss", STOP_GRACE_S)
        sock.close()
        await store.stop()
        await follower.stop()
        await upstream.stop()
        try:
            await asyncio.wait_for(nc.drain(), 3.0)
        except Exception as exc:  # the server may be gone: close either way
            log.warning("NATS connection did not drain (%s); closing", type(exc).__name__)
            await nc.close()
        shutdown_tracing()


def main(argv: list[str] | None = None) -> None:
    """Run the HTTP gateway; every setting is an environment variable (services/gateway/settings.py)."""
    argparse.ArgumentParser(prog="modelbus-gateway", description=__doc__).parse_args(argv)
    log = setup_logging("gateway")
    try:
        settings = load_settings(os.environ)
        keys = KeyRing(settings.keys_path) if settings.keys_path else None
        sock = bind(settings.host, settings.port)
    except GatewaySetupError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    # uvicorn's start and stop lines repeat what the gateway logs; keep its warnings.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logging.getLogger().level))
    run(_serve(log, settings, keys, sock))


if __name__ == "__main__":
    main()
