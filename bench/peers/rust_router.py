"""What vllm-router and sglang-router share: one Rust router (vllm-router is a fork of SGLang's), run the same way.

Both are a Python launcher on PyPI that parses the flags and runs the Rust
router in the same process, so the one process we start is the whole router.
Both take the same flags for what the benchmark needs and are given them the
same way: the upstream's root URL as the only worker, round robin, no retries,
a short start-up health probe, warnings only, and the Prometheus exporter
(which neither can switch off) on a free loopback port. Neither holds an
upstream key: the client's ``Authorization`` header is passed through to the
worker, so the key travels in :attr:`Running.headers`. Each module says why
each flag is set for its router; only what differs is set there.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.peers import (
    LOOPBACK,
    READY_TIMEOUT_S,
    Peer,
    Running,
    Upstream,
    dist_version,
    free_port,
    pip_install,
    serve,
)


class RustRouter(Peer):
    """A Rust router from PyPI with the OpenAI-compatible upstream as its single worker."""

    family = "rust"
    distribution: ClassVar[str]
    """The PyPI distribution, pinned to :attr:`pinned`."""
    pinned: ClassVar[str]
    log_level: ClassVar[str]
    """``--log-level`` as this router's launcher spells "warnings and errors"."""
    environment: ClassVar[Mapping[str, str]] = {}
    """Extra environment the router runs with."""

    @abc.abstractmethod
    def launcher(self) -> list[str]:
        """The command that runs the router, before its flags; :class:`PeerUnavailable` if not installed."""

    def argv(self, upstream: Upstream, port: int, metrics_port: int) -> list[str]:
        """The command line that runs the router on ``port`` with ``upstream`` as its only worker."""
        return [
            *self.launcher(),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--worker-urls",
            f"http://{upstream.host}:{upstream.port}",
            "--policy",
            "round_robin",
            "--disable-retries",
            "--worker-startup-check-interval",
            "1",
            "--worker-startup-timeout-secs",
            str(int(READY_TIMEOUT_S)),
            "--log-level",
            self.log_level,
            "--prometheus-host",
            LOOPBACK,
            "--prometheus-port",
            str(metrics_port),
        ]

    def install(self, log_path: Path) -> None:
        pip_install(self.env_dir, [f"{self.distribution}=={self.pinned}"], log_path)

    def version(self) -> str | None:
        return dist_version(self.env_dir, self.distribution)

    def start(self, upstream: Upstream, work_dir: Path, log_path: Path) -> Running:
        port = free_port()
        argv = self.argv(upstream, port, free_port())
        work_dir.mkdir(parents=True, exist_ok=True)
        return serve(
            argv,
            log_path,
            cwd=work_dir,
            port=port,
            headers={"authorization": f"Bearer {upstream.api_key}"},
            env=self.environment,
            version=self.version(),
        )
