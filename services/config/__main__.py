"""Entry point: ``modelbus-config [--config FILE]`` (or ``python -m services.config``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from services.config.audit import AuditLog
from services.config.http_api import AdminHttpError, AdminHttpServer, start_admin_http
from services.config.manager import ConfigManager
from services.config.service import AuditVerifier, boot, ensure_runs_bucket, register, service_env
from services.config.store import ConfigLog
from shared.bus import make_broker, run
from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.runtime import serve
from shared.telemetry import setup_tracing


async def _main(config_path: str | None) -> None:
    log = setup_logging("config")
    setup_tracing("modelbus-config")
    broker = make_broker("config")
    holder: dict[str, Any] = {}
    register(broker, holder)
    http: list[AdminHttpServer] = []

    async def start() -> None:
        nc = broker.connection
        config_log = ConfigLog(nc.jetstream())
        await config_log.ensure()
        await ensure_runs_bucket(nc)
        audit = AuditLog(nc.jetstream())
        await audit.ensure_stream()
        holder["audit"] = AuditVerifier(audit)
        manager = ConfigManager(nc, config_log, auditor=audit)
        try:
            await boot(manager, config_path, service_env())
        except (ConfigError, OSError) as exc:
            log.error("invalid configuration: %s", exc)
            raise SystemExit(2) from None
        holder["manager"] = manager
        try:
            server = await start_admin_http(manager, nc, holder["audit"], service_env())
        except AdminHttpError as exc:
            log.error("invalid admin HTTP settings: %s", exc)
            raise SystemExit(2) from None
        if server is not None:
            http.append(server)

    async def stop() -> None:
        for server in http:
            await server.stop()

    await serve(log, broker, on_start=start, on_stop=stop, ready_detail="config")


def main(argv: list[str] | None = None) -> None:
    """Run the config service."""
    parser = argparse.ArgumentParser(prog="modelbus-config", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("MODELBUS_CONFIG") or None,
                        help="routing configuration file applied at boot (default: built-in example)")
    args = parser.parse_args(argv)
    run(_main(args.config))


if __name__ == "__main__":
    main()
