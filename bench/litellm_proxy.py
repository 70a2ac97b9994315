"""LiteLLM for scenarios a and b: the same peer as scenario p (:mod:`bench.peers.litellm`).

One install (``bench/.envs/litellm``), one configuration, one way to start it,
shared by every scenario; this module only gives a and b the URL and key they
send with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.peers import Upstream
from bench.peers.litellm import LiteLLM


@dataclass(frozen=True)
class LiteLLMProxy:
    """A running LiteLLM proxy."""

    base_url: str
    master_key: str
    version: str | None

    @property
    def chat_url(self) -> str:
        """Its OpenAI chat completions route."""
        return f"{self.base_url}/v1/chat/completions"


@contextmanager
def running_litellm(upstream: Upstream, work_dir: Path, log_dir: Path) -> Iterator[LiteLLMProxy]:
    """Install (once) and run LiteLLM in front of ``upstream`` until the block ends."""
    peer = LiteLLM()
    peer.install(log_dir / "litellm-install.log")
    work_dir.mkdir(parents=True, exist_ok=True)
    running = peer.start(upstream, work_dir, log_dir / "litellm.log")
    try:
        key = dict(running.headers)["authorization"].removeprefix("Bearer ")
        yield LiteLLMProxy(f"http://{running.host}:{running.port}", key, running.version)
    finally:
        peer.stop(running)
