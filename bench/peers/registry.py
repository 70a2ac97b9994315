"""Every peer gateway the benchmark knows, by name, in the report's order."""

from __future__ import annotations

import importlib

from bench.peers import Peer

PEERS: dict[str, tuple[str, str]] = {
    "vllm-router": ("bench.peers.vllm_router", "VllmRouter"),
    "sglang-router": ("bench.peers.sglang_router", "SglangRouter"),
    "envoy": ("bench.peers.envoy", "Envoy"),
    "tensorzero": ("bench.peers.tensorzero", "TensorZero"),
    "portkey": ("bench.peers.portkey", "Portkey"),
    "litellm": ("bench.peers.litellm", "LiteLLM"),
}
"""Name to (module, class); a peer's module is imported only when it is measured."""


def peer(name: str) -> Peer:
    """A fresh instance of the named peer (``KeyError`` names the known ones)."""
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    module, cls = PEERS[name]
    instance: Peer = getattr(importlib.import_module(module), cls)()
    return instance


def selected(names: tuple[str, ...]) -> list[Peer]:
    return [peer(name) for name in names]
