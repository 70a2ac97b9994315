"""How much each scenario measures: the full run and the ``--quick`` smoke run.

The full run is sized to finish within about ten minutes on a 2-core machine
(LiteLLM's one-time install aside); the quick run only proves that every
scenario works end to end, and its numbers mean little.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

SCENARIOS = ("p", "a", "b", "c", "d", "e", "f", "g")
TITLES = {
    "p": "Peers: modelbus against the fastest gateways, one run, one client, one upstream",
    "a": "Added latency at concurrency 1",
    "b": "Throughput through llm-katan",
    "c": "Bus-only throughput (mock provider)",
    "d": "Streaming: time to first token and inter-token latency",
    "e": "Hot swap under load",
    "f": "Memory (RSS)",
    "g": "Tracing cost",
}


@dataclass(frozen=True)
class Settings:
    """One run's parameters (recorded in results.json)."""

    out_dir: Path
    """Where results.json, results.md and the plots go."""
    scenarios: tuple[str, ...]
    """Which of :data:`SCENARIOS` to run."""
    skip_litellm: bool
    """Leave LiteLLM out (no install, no numbers)."""
    quick: bool
    """A smoke run with tiny sizes."""
    latency_requests: int
    """a, g: measured requests per contender, split over the rounds."""
    rounds: int
    """Rounds per interleaved measurement; the contender order rotates every round."""
    warmup_requests: int
    """a, d: requests (streams) each contender gets before measuring."""
    throughput_levels: tuple[int, ...]
    """b: concurrency levels."""
    bus_levels: tuple[int, ...]
    """c: concurrency levels."""
    level_seconds: float
    """b, c: seconds of load per contender per level, split over the rounds."""
    streams: int
    """d: measured streams per contender."""
    swap_changes: int
    """e: configuration changes applied one after another."""
    swap_concurrency: int
    """e: requests kept in flight during the changes."""
    swap_routers: int
    """e: routers that must all announce each revision."""
    memory_threshold_level: int
    """f: levels of b and c at or above this concurrency count as "under load"."""
    peers: tuple[str, ...] = ()
    """p: the peer gateways to measure (names in :data:`bench.peers.registry.PEERS`)."""
    peer_warmup: int = 50
    """p: unmeasured requests per contender at concurrency 1 (four times as many at 32)."""
    peer_c1_rounds: int = 4
    """p: rounds at concurrency 1."""
    peer_c1_requests: int = 250
    """p: requests per contender per round at concurrency 1."""
    peer_c32_rounds: int = 2
    """p: rounds at concurrency 32."""
    peer_c32_seconds: float = 2.5
    """p: seconds per contender per round at concurrency 32."""


FULL = Settings(
    out_dir=Path("bench/results/latest"),
    scenarios=SCENARIOS,
    skip_litellm=False,
    quick=False,
    latency_requests=2000,
    rounds=10,
    warmup_requests=100,
    throughput_levels=(1, 8, 32, 128),
    bus_levels=(1, 8, 32, 64, 128, 256),
    level_seconds=6.0,
    streams=100,
    swap_changes=200,
    swap_concurrency=32,
    swap_routers=4,
    memory_threshold_level=32,
    peers=("vllm-router", "sglang-router", "envoy", "tensorzero", "portkey", "litellm"),
)

QUICK = replace(
    FULL,
    quick=True,
    latency_requests=150,
    rounds=2,
    warmup_requests=10,
    throughput_levels=(1, 8),
    bus_levels=(1, 8, 32),
    level_seconds=0.6,
    streams=4,
    swap_changes=20,
    swap_concurrency=8,
    memory_threshold_level=8,
    peer_warmup=5,
    peer_c1_rounds=2,
    peer_c1_requests=20,
    peer_c32_rounds=1,
    peer_c32_seconds=0.5,
)
