"""vllm-router as a peer: PyPI ``vllm-router``, a Rust load balancer (axum, tokio) run from Python.

The package's console script ``vllm-router`` parses the flags in Python and hands
them to the Rust router in the same process (``vllm_router_rs``), so the one
process we start is the whole router. It is given one worker, the upstream's
root URL (it appends ``/v1/chat/completions`` itself), and forwards the
request body as it came.

How it is set up, flag by flag (all from ``vllm-router --help``):

- ``--policy round_robin``: the simplest policy; the default ``cache_aware``
  keeps a prefix tree of every prompt, which buys nothing with one worker.
- ``--disable-retries``: one attempt per request (the default retries 5 times).
- Health: the router probes ``GET /health`` on each worker before it serves
  and then every 60 s; llm-katan answers that path with 200, so the defaults
  stand. ``--worker-startup-check-interval 1`` only shortens the wait at start
  (the default polls every 30 s).
- Auth: the router holds no upstream key. It passes the client's
  ``Authorization`` header through to the worker (its ``--api-key`` is used
  only for its own data-parallel queries, not on forwarded requests), so the
  upstream key travels in :attr:`Running.headers`.
- Logging: ``--log-level warning`` is what its argparse accepts, but the Rust
  side parses the level with ``tracing``'s parser, which knows ``warn`` and not
  ``warning``, and falls back to INFO. ``RUST_LOG=warn`` sets the filter it
  reads first, so only warnings and errors are logged; nothing is logged per
  request at that level. It still prints a few unconditional ``DEBUG:`` lines
  at start-up.
- Metrics: the Prometheus exporter cannot be turned off from the command line
  (the flag defaults to port 29000), so it listens on a free loopback port.
- Workers: the router has no process or thread setting; tokio starts one
  worker thread per core.
- Telemetry: none; OpenTelemetry tracing is off unless asked for.
- Keep-alive: its upstream client (reqwest) pools connections to the worker.
"""

from __future__ import annotations

from bench.peers import PeerUnavailable
from bench.peers.rust_router import RustRouter

DISTRIBUTION = "vllm-router"
PINNED = "0.1.17"


class VllmRouter(RustRouter):
    """The vLLM project's Rust router, with the OpenAI-compatible upstream as its single worker."""

    name = "vllm-router"
    title = f"vllm-router {PINNED} (Rust, PyPI {DISTRIBUTION})"
    distribution = DISTRIBUTION
    pinned = PINNED
    log_level = "warning"
    environment = {"RUST_LOG": "warn"}

    def launcher(self) -> list[str]:
        executable = self.env_dir / "bin" / "vllm-router"
        if not executable.is_file():
            raise PeerUnavailable(f"{executable} is missing: install first")
        return [str(executable)]
