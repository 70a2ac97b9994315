"""The faults ``make chaos`` injects, and how long each phase lasts in a full and a short run.

Every scenario starts from a fresh, healthy stack (warm-up: 16 OK requests in
a row), runs load for ``pre_s``, injects one fault, restarts what it killed
after :data:`RESTART_DELAY_S` (as the supervisor of ``modelbus up`` would),
keeps the load running until ``post_s`` after the fault, then listens for late
and duplicate answers until every request's deadline has passed.
"""

from __future__ import annotations

from dataclasses import dataclass

RESTART_DELAY_S = 0.5
"""How long a killed process stays dead before it is started again."""


@dataclass(frozen=True)
class Scenario:
    """One fault."""

    name: str
    """What ``--scenario`` takes."""
    fault: str
    """What is done, for the table."""
    target: str
    """A service name (``router-1``, ``providers-1``, ``config``, ``secrets``), ``nats``, ``node-<i>``
    (cluster node, from 1) or ``busiest-node`` (the node most service connections use)."""
    streams_only: bool = False
    """Only streamed requests (the mid-stream faults); otherwise every third request streams."""
    cluster: bool = False
    """Run on a 3-node cluster instead of one nats-server."""
    short: bool = False
    """Part of ``--short`` (what CI runs)."""

    @property
    def is_nats(self) -> bool:
        """Whether the fault hits a nats-server (a node) rather than a service."""
        return self.target == "nats" or self.target.startswith("node-") or self.target == "busiest-node"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("router", "kill -9 one of two routers", "router-1", short=True),
    Scenario("provider", "kill -9 one of two provider workers", "providers-1", short=True),
    Scenario("provider-mid-stream", "kill -9 a provider worker, streams only", "providers-1", streams_only=True),
    Scenario("router-mid-stream", "kill -9 a router, streams only", "router-1", streams_only=True),
    Scenario("config", "kill -9 the config service", "config"),
    Scenario("secrets", "kill -9 the secrets service", "secrets"),
    Scenario("nats-restart", "kill -9 nats-server, restart on the same port and store", "nats", short=True),
    Scenario("cluster-node-1", "3-node cluster: kill -9 node 1", "node-1", cluster=True),
    Scenario("cluster-node-2", "3-node cluster: kill -9 node 2", "node-2", cluster=True),
    Scenario("cluster-node-3", "3-node cluster: kill -9 node 3", "node-3", cluster=True),
    Scenario(
        "cluster-busiest-node",
        "3-node cluster: kill -9 the node with most service connections",
        "busiest-node",
        cluster=True,
        short=True,
    ),
)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
FULL_RUN = tuple(s.name for s in SCENARIOS if s.name != "cluster-busiest-node")
"""The full run kills each cluster node in turn (the busiest one among them)."""
SHORT_RUN = tuple(s.name for s in SCENARIOS if s.short)


@dataclass(frozen=True)
class Timing:
    """Phase lengths and load shape of a run."""

    pre_s: float
    """Load before the fault."""
    post_s: float
    """Load after the fault (new requests stop then)."""
    timeout_ms: int
    """``Modelbus-Timeout-Ms`` of every request."""
    concurrency: int
    """Requests in flight."""


FULL = Timing(pre_s=3.0, post_s=5.0, timeout_ms=8000, concurrency=24)
SHORT = Timing(pre_s=2.0, post_s=3.0, timeout_ms=5000, concurrency=24)
