"""Entry point: ``modelbus-config [--config FILE]`` (or ``python -m services.config``).

Two broker connections (see docs/security.md): the FastStream broker, as the
``config`` identity, serves the admin subjects and makes the service's own
requests (secrets, router status, the probe); a second one, as ``config-state``,
does all JetStream work (config log, audit stream, runs and gateway-key buckets, the usage
ledger's stream) and publishes
the change events. Without identities (``--insecure``) both are one connection.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from services.config.audit import AuditLog, AuditVerifier
from services.config.audit_key import AuditKeyError, load_audit_key
from services.config.gateway_keys import GatewayKeyStore, ensure_keys_bucket
from services.config.http_api import (
    AdminHttpError,
    AdminHttpServer,
    AdminListener,
    open_admin_listener,
    start_admin_http,
)
from services.config.manager import ConfigManager
from services.config.service import boot, config_state_keeper, ensure_runs_bucket, register, service_env
from services.config.store import ConfigLog
from services.config.usage_stream import ensure_usage_stream
from services.config.usage_text_stream import ensure_usage_text_stream
from shared.bus import close_state, connect_state, make_broker, run
from shared.errors import ConfigError
from shared.jetstream import StateKeeper
from shared.logs import setup_logging
from shared.runtime import serve
from shared.telemetry import setup_tracing
from shared.usage import InvalidRetention


async def _main(config_path: str | None) -> None:
    log = setup_logging("config")
    env = service_env()
    try:
        audit_key = load_audit_key(env)
    except AuditKeyError as exc:
        log.error("refusing to start: %s", exc)
        raise SystemExit(2) from None
    try:
        # Bound before connecting, so the ready line can say where the admin API really is.
        listener: AdminListener | None = open_admin_listener(env)
    except AdminHttpError as exc:
        log.error("invalid admin HTTP settings: %s", exc)
        raise SystemExit(2) from None
    setup_tracing("modelbus-config")
    broker = make_broker("config")
    holder: dict[str, Any] = {}
    register(broker, holder)
    http: list[AdminHttpServer] = []
    state: list[Any] = []
    keepers: list[StateKeeper] = []

    async def start() -> None:
        nc = broker.connection
        state_nc = await connect_state("config", nc)
        state.append(state_nc)
        js = state_nc.jetstream()
        config_log = ConfigLog(js)
        await config_log.ensure()
        await ensure_runs_bucket(state_nc)
        keys_kv, _ = await ensure_keys_bucket(state_nc)
        try:
            await ensure_usage_stream(state_nc)
            await ensure_usage_text_stream(state_nc)
        except InvalidRetention as exc:
            log.error("invalid usage ledger retention: %s", exc)
            raise SystemExit(2) from None
        audit = AuditLog(js, audit_key)
        await audit.ensure_stream()
        await audit.seal_legacy()
        keeper = config_state_keeper(state_nc, config_log, audit)  # recreates what a lost server took
        keeper.start()
        keepers.append(keeper)
        verifier = AuditVerifier(audit, config_log)
        holder["audit"] = verifier
        manager = ConfigManager(nc, config_log, auditor=audit, state_nc=state_nc)
        try:
            await boot(manager, config_path, env)
        except (ConfigError, OSError) as exc:
            log.error("invalid configuration: %s", exc)
            raise SystemExit(2) from None
        holder["manager"] = manager
        holder["keys"] = GatewayKeyStore(keys_kv, lambda: manager.head.routing if manager.head else None, audit)
        if listener is not None:
            http.append(await start_admin_http(listener, manager, nc, verifier, env))

    async def stop() -> None:
        for server in http:
            await server.stop()
        for keeper in keepers:
            await keeper.stop()
        for state_nc in state:
            await close_state(state_nc, broker.connection)

    detail = "config" if listener is None else f"config admin={listener.url}"
    try:
        await serve(log, broker, on_start=start, on_stop=stop, ready_detail=detail)
    finally:
        if listener is not None and not http:
            listener.close()


def main(argv: list[str] | None = None) -> None:
    """Run the config service."""
    parser = argparse.ArgumentParser(prog="modelbus-config", description=__doc__)
    parser.add_argument(
        "--config",
        default=os.environ.get("MODELBUS_CONFIG") or None,
        help="routing configuration file applied at boot (default: built-in example)",
    )
    args = parser.parse_args(argv)
    run(_main(args.config))


if __name__ == "__main__":
    main()
