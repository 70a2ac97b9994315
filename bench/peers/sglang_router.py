"""sglang-router as a peer: PyPI ``sglang-router``, the SGLang Model Gateway (Rust, axum and tokio).

Started the way its docs start a router in front of separately launched
workers ("Separate Launch (HTTP)" in
https://docs.sglang.io/advanced_features/sgl_model_gateway.html):
``python -m sglang_router.launch_router --worker-urls ...``. The Python
launcher parses the flags and runs the Rust gateway (``sglang_router_rs``) in
the same process, so the one process we start is the whole gateway. Its one
worker is the upstream's root URL; it appends ``/v1/chat/completions`` itself.

How it is set up, flag by flag (all from ``launch_router --help``):

- Backend: the default HTTP ``sglang`` router, the same mode vllm-router (a
  fork of this router) runs in. On registering the worker it asks for
  ``/server_info`` and ``/model_info`` and logs a warning each when llm-katan
  answers 404; routing is unaffected. (``--backend openai``, its proxy mode
  for hosted OpenAI-style APIs, also works against llm-katan.)
- ``--policy round_robin``: the simplest policy; the default ``cache_aware``
  keeps a prefix tree of every prompt, which buys nothing with one worker.
- ``--disable-retries``: one attempt per request (the default retries 5 times).
- Health: it probes ``GET /health`` on the worker before serving and then
  every 60 s; llm-katan answers that path with 200, so the defaults stand.
  ``--worker-startup-check-interval 1`` only shortens the wait at start.
- Auth: without ``--api-key`` the gateway checks no key and passes the
  client's ``Authorization`` header through to the worker, so the upstream key
  travels in :attr:`Running.headers`. (With ``--api-key`` it would also demand
  that key from clients.)
- Logging: ``--log-level warn``; it logs nothing per successful request at
  that level (it warns on each 4xx/5xx answer).
- Metrics: the Prometheus exporter has no off switch (port 29000 on every
  interface by default), so it listens on a free loopback port.
- Workers: the gateway has no process or thread setting; tokio starts one
  worker thread per core. Rate limiting is off by default
  (``--max-concurrent-requests -1``).
- Telemetry: none; OpenTelemetry tracing is off unless ``--enable-trace``.
- Keep-alive: its upstream client (reqwest) pools connections to the worker.
"""

from __future__ import annotations

from bench.peers import PeerUnavailable
from bench.peers.rust_router import RustRouter

DISTRIBUTION = "sglang-router"
PINNED = "0.3.2"


class SglangRouter(RustRouter):
    """The SGLang Model Gateway, with the OpenAI-compatible upstream as its single HTTP worker."""

    name = "sglang-router"
    title = f"sglang-router {PINNED} (Rust, PyPI {DISTRIBUTION})"
    distribution = DISTRIBUTION
    pinned = PINNED
    log_level = "warn"

    def launcher(self) -> list[str]:
        if self.version() is None:
            raise PeerUnavailable(f"{DISTRIBUTION} is not installed in {self.env_dir}: install first")
        return [str(self.env_dir / "bin" / "python"), "-m", "sglang_router.launch_router"]
