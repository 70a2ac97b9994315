"""Portkey's AI gateway as a peer: npm ``@portkey-ai/gateway``, one Node.js process on loopback.

The gateway has no config file for this: it routes each request by its headers
(https://portkey.ai/docs/integrations/llms/local-ai, "use custom host directly").
``x-portkey-provider: openai`` picks its OpenAI adapter, ``x-portkey-custom-host``
points that adapter at the upstream's base URL (``/v1`` included, as the docs
insist) and the ``Authorization`` bearer is forwarded as the upstream key. The
request names the upstream's own model, ``echo``.

Its server (``build/start-server.js``, the package's ``bin``) reads only two
flags: ``--port=N`` (default 8787) and ``--headless``, which drops the demo
console and its live log stream at ``/log/stream``; ``NODE_ENV=production``
does the same. It logs nothing per request and calls home for nothing unless a
request asks for Portkey's hosted guardrails or files. Node is one process
with one event loop; the gateway has no worker setting. It retries only when
a request's ``x-portkey-config`` asks, and we send none. It keeps upstream
connections alive (Node's ``fetch`` pools them).

Two things it has no setting for. It listens on every interface (it never
passes a host to ``listen``), so :data:`LOOPBACK_SHIM` is loaded with
``node --import`` and fills in ``127.0.0.1`` when no host is given; nothing
else changes. And in Node it clones and parses every ``/v1/`` response as JSON
for its log stream even when no one subscribes; that cost is part of the
gateway as shipped, so it stays.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import progress
from bench.peers import (
    Peer,
    PeerUnavailable,
    Running,
    Upstream,
    free_port,
    run_logged,
    serve,
    tail,
)

PACKAGE = "@portkey-ai/gateway"
PINNED = "1.15.2"
SPEC = f"{PACKAGE}@{PINNED}"
SERVER_SCRIPT = Path("node_modules") / PACKAGE / "build" / "start-server.js"
"""The package's ``bin``, relative to the npm prefix."""

LOOPBACK_SHIM = """\
// Written by bench/peers/portkey.py: the Portkey gateway calls listen(port) with no host,
// which binds every interface. Supply 127.0.0.1 when no host is given; nothing else changes.
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
  return listen.call(this, port, host ?? "127.0.0.1", ...rest);
};
"""


def routing_headers(upstream: Upstream) -> dict[str, str]:
    """The headers that send one request through Portkey's OpenAI adapter to ``upstream``."""
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": upstream.base_url,
        "authorization": f"Bearer {upstream.api_key}",
    }


class Portkey(Peer):
    """Portkey's open-source gateway (Node.js), routed per request to the OpenAI-compatible upstream."""

    name = "portkey"
    title = f"Portkey gateway {PINNED} (Node.js, npm {PACKAGE})"
    family = "node"

    def install(self, log_path: Path) -> None:
        stamp = self.env_dir / ".installed"
        if stamp.is_file() and stamp.read_text() == SPEC + "\n":
            return
        npm = shutil.which("npm")
        if npm is None:
            raise PeerUnavailable("npm is not on PATH")
        progress(f"installing {SPEC} into {self.env_dir} (once; log: {log_path})")
        self.env_dir.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            try:
                # --no-audit/--no-fund: no extra calls to the registry's audit service. npm skips the
                # package's postinstall (patch-package), which has no patches to apply in the published tarball.
                run_logged([npm, "install", "--prefix", str(self.env_dir), "--no-audit", "--no-fund", SPEC], log)
            except PeerUnavailable as exc:
                raise PeerUnavailable(f"{exc}:\n{tail(log_path)}") from None
        stamp.write_text(SPEC + "\n")

    def version(self) -> str | None:
        manifest = self.env_dir / "node_modules" / PACKAGE / "package.json"
        try:
            version = json.loads(manifest.read_text()).get("version")
        except (OSError, ValueError):
            return None
        return version if isinstance(version, str) else None

    def start(self, upstream: Upstream, work_dir: Path, log_path: Path) -> Running:
        node = shutil.which("node")
        if node is None:
            raise PeerUnavailable("node is not on PATH")
        server = self.env_dir / SERVER_SCRIPT
        if not server.is_file():
            raise PeerUnavailable(f"{server} is missing: install first")
        work_dir.mkdir(parents=True, exist_ok=True)
        shim = work_dir / "portkey-loopback.mjs"
        shim.write_text(LOOPBACK_SHIM)
        port = free_port()
        argv = [node, "--import", shim.as_uri(), str(server), f"--port={port}", "--headless"]
        env = {
            "NODE_ENV": "production",
            # Custom hosts it will accept; the upstream's only (its default also allows localhost and ::1).
            "TRUSTED_CUSTOM_HOSTS": upstream.host,
        }
        return serve(
            argv, log_path, cwd=work_dir, port=port, headers=routing_headers(upstream), env=env, version=self.version()
        )
