"""TensorZero as a peer: its Rust gateway, as embedded in the PyPI wheel, serving HTTP on loopback.

PyPI's ``tensorzero`` carries no gateway binary (TensorZero ships that as a
Docker image). What the wheel has is the gateway compiled into its extension
module, and a function that starts the gateway's real axum HTTP server with
its OpenAI-compatible routes (``/openai/v1/chat/completions``) on
``127.0.0.1`` and a port of its own choosing. :mod:`bench.peers.tensorzero_serve`
starts that server, reports its address in a file, and sleeps; requests are
served by the extension's Tokio runtime (default size: one worker per core;
TensorZero has no setting of its own for it), never by Python.

The configuration is the minimal one the docs describe for an OpenAI-compatible
upstream (https://www.tensorzero.com/docs/integrations/model-providers/openai-compatible):
one model ``echo`` with one ``openai`` provider at the upstream, its key from an
environment variable; observability (ClickHouse) off, pseudonymous usage
analytics off, no Postgres (no ``TENSORZERO_POSTGRES_URL``), no function,
variant or retry policy configured, logs at ``warn`` via ``RUST_LOG`` (which
the gateway reads before its own defaults). A request names the model as
``tensorzero::model_name::echo``; the endpoint needs no auth header.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.peers import (
    READY_TIMEOUT_S,
    UPSTREAM_MODEL,
    Peer,
    PeerUnavailable,
    Running,
    Upstream,
    dist_version,
    pip_install,
    serving,
    spawn,
    stopped_on_failure,
    tail,
)

REQUIREMENT = "tensorzero==2026.6.0"
SERVE_SCRIPT = Path(__file__).with_name("tensorzero_serve.py")
KEY_ENV = "TENSORZERO_BENCH_UPSTREAM_API_KEY"
"""The environment variable the provider reads its upstream key from (``api_key_location``)."""
MODEL = f"tensorzero::model_name::{UPSTREAM_MODEL}"
CHAT_PATH = "/openai/v1/chat/completions"


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for what a URL or name can hold)."""
    return json.dumps(value)


def config_toml(upstream: Upstream) -> str:
    """The ``tensorzero.toml`` for one model ``echo`` forwarding to ``upstream``."""
    return "\n".join(
        [
            "[gateway]",
            "observability.enabled = false",
            "disable_pseudonymous_usage_analytics = true",
            "",
            f"[models.{UPSTREAM_MODEL}]",
            'routing = ["upstream"]',
            "",
            f"[models.{UPSTREAM_MODEL}.providers.upstream]",
            'type = "openai"',
            f"api_base = {_toml_string(upstream.base_url)}",
            f"model_name = {_toml_string(UPSTREAM_MODEL)}",
            f"api_key_location = {_toml_string('env::' + KEY_ENV)}",
            "",
        ]
    )


class TensorZero(Peer):
    """TensorZero's gateway from the ``tensorzero`` wheel, on its OpenAI-compatible endpoint."""

    name = "tensorzero"
    title = "TensorZero 2026.6.0 (Rust, embedded in PyPI tensorzero)"
    family = "rust"

    def install(self, log_path: Path) -> None:
        pip_install(self.env_dir, [REQUIREMENT], log_path)

    def version(self) -> str | None:
        return dist_version(self.env_dir, "tensorzero")

    def start(self, upstream: Upstream, work_dir: Path, log_path: Path) -> Running:
        work_dir.mkdir(parents=True, exist_ok=True)
        config = work_dir / "tensorzero.toml"
        config.write_text(config_toml(upstream))
        address_file = work_dir / "tensorzero-address.txt"
        address_file.unlink(missing_ok=True)
        argv = [
            str(self.env_dir / "bin" / "python"),
            "-P",  # keep bench/peers off sys.path: this module would shadow the tensorzero package
            str(SERVE_SCRIPT),
            "--config",
            str(config),
            "--address-file",
            str(address_file),
        ]
        env = {"RUST_LOG": "warn", "NO_COLOR": "1", KEY_ENV: upstream.api_key}
        process = spawn(argv, log_path, cwd=work_dir, env=env)
        with stopped_on_failure(process):
            host, port = _wait_for_address(process, address_file, log_path)
        return serving(process, log_path, host=host, port=port, path=CHAT_PATH, model=MODEL, version=self.version())


def _wait_for_address(process: subprocess.Popen[bytes], address_file: Path, log_path: Path) -> tuple[str, int]:
    """The host and port the launcher writes once the gateway listens (the gateway picks its port)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if address_file.is_file():
            base_url = address_file.read_text().strip()
            parts = urlsplit(base_url)
            if parts.hostname is None or parts.port is None:
                raise PeerUnavailable(f"gateway reported an address without host and port: {base_url!r}")
            return parts.hostname, parts.port
        if process.poll() is not None:
            raise PeerUnavailable(f"exited with status {process.returncode}:\n{tail(log_path)}")
        time.sleep(0.1)
    raise PeerUnavailable(f"gateway did not report its address in {READY_TIMEOUT_S:.0f}s:\n{tail(log_path)}")
