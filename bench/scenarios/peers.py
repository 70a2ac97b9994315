"""Scenario p: modelbus against the fastest gateways, in one run, on one upstream, with one client.

Every HTTP contender (direct llm-katan, each peer gateway, and modelbus's own
HTTP gateway as **modelbus-http**) is driven by the same minimal keep-alive
HTTP/1.1 client (:mod:`bench.h1load`); modelbus by nats-py
(:class:`shared.client.ModelbusClient`), its native protocol. All send the
same body to the same llm-katan. modelbus-http is the same stack as modelbus
(``modelbus up`` starts the gateway beside the routers), reached on the
gateway's port with its default key as ``Authorization: Bearer``: gateway →
NATS → router → provider worker → llm-katan. The protocol, per contender:

* a warm-up (connections, caches, lazy imports), not measured;
* ``peer_c1_rounds`` rounds of ``peer_c1_requests`` requests at concurrency 1,
  then ``peer_c32_rounds`` rounds of ``peer_c32_seconds`` at concurrency 32;
  in each round every contender runs once, and the order rotates by one each
  round, so drift of the machine lands on all alike;
* around every measured run, the CPU time (utime + stime from ``/proc``) of
  the contender's whole process tree (for modelbus and modelbus-http alike:
  nats-server, router, provider worker, gateway, config, secrets and their
  supervisor, so each carries the other's idle processes), and the load
  generator's own CPU time (``time.process_time`` of this process, which runs
  nothing else meanwhile). Each is divided by the successful requests.

"Added" latency is the contender's percentile minus direct's, from the same
rounds. Peers that cannot be installed or started here are reported as
unavailable with the reason; so is Bifrost, whose npm package downloads its
Go binary at run time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import uvloop

from bench import procs, progress, servers
from bench.contenders import bus_sender, chat_body
from bench.h1load import H1Client, h1_sender
from bench.load import LoadResult, Send, closed_loop, difference, distribution, rotated, warm_up
from bench.peers import CHAT_PATH, Peer, PeerUnavailable, Running, Upstream, registry
from bench.settings import Settings
from shared.client import ModelbusClient

DIRECT = "direct"
MODELBUS = "modelbus"
MODELBUS_HTTP = "modelbus-http"
UNAVAILABLE_ELSEWHERE = {
    "bifrost": "Bifrost (Go): its npm package is a launcher that downloads the Go binary at run time, "
    "and this machine reaches no download host but the package registries",
}


@dataclass
class Contender:
    """One series: how to send, and which processes are its cost."""

    name: str
    title: str
    family: str
    send: Send
    pids: tuple[int, ...] = ()
    """Its process tree at the start (empty for direct: llm-katan is everyone's upstream)."""
    version: str | None = None


@dataclass
class Tally:
    """What one contender's measured runs added up to."""

    c1: LoadResult = field(default_factory=LoadResult)
    c32: LoadResult = field(default_factory=LoadResult)
    gateway_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    warmup_errors: int = 0

    @property
    def ok(self) -> int:
        return len(self.c1.latencies_ms) + len(self.c32.latencies_ms)


def tree(pid: int) -> tuple[int, ...]:
    """``pid`` and its descendants now (a contender's processes, found from our own child)."""
    return (pid, *procs.descendants_of(pid))


def cpu_of(pids: Sequence[int]) -> float:
    return sum(procs.cpu_seconds(pid) for pid in pids)


async def measure(contenders: Sequence[Contender], settings: Settings) -> dict[str, Tally]:
    """The protocol above, for every contender at once."""
    tallies = {c.name: Tally() for c in contenders}
    by_name = {c.name: c for c in contenders}
    for c in contenders:
        tallies[c.name].warmup_errors = await warm_up(c.send, 1, settings.peer_warmup)
        tallies[c.name].warmup_errors += await warm_up(c.send, 32, settings.peer_warmup * 4)

    async def one(
        c: Contender, concurrency: int, *, requests: int | None = None, seconds: float | None = None
    ) -> LoadResult:
        gateway0, loadgen0 = cpu_of(c.pids), time.process_time()
        result = await closed_loop(c.send, concurrency, requests=requests, duration_s=seconds)
        tally = tallies[c.name]
        tally.gateway_cpu_s += cpu_of(c.pids) - gateway0
        tally.loadgen_cpu_s += time.process_time() - loadgen0
        return result

    names = [c.name for c in contenders]
    for round_index in range(settings.peer_c1_rounds):
        for name in rotated(names, round_index):
            tallies[name].c1.merge(await one(by_name[name], 1, requests=settings.peer_c1_requests))
    for round_index in range(settings.peer_c32_rounds):
        for name in rotated(names, round_index):
            tallies[name].c32.merge(await one(by_name[name], 32, seconds=settings.peer_c32_seconds))
    return tallies


def section(contenders: Sequence[Contender], tallies: dict[str, Tally], unavailable: dict[str, str]) -> dict[str, Any]:
    """The JSON section: per contender its latency, added latency, throughput and CPU per request."""
    direct = tallies[DIRECT]
    direct_c1 = distribution(direct.c1.latencies_ms)
    direct_rps = direct.c32.requests_per_s
    rows: dict[str, Any] = {}
    for c in contenders:
        t = tallies[c.name]
        c1 = distribution(t.c1.latencies_ms)
        rows[c.name] = {
            "title": c.title,
            "family": c.family,
            "version": c.version,
            "c1": {**c1, "requests": len(t.c1.latencies_ms), "errors": t.c1.errors},
            "added_p50_ms": None if c.name == DIRECT else difference(c1["p50_ms"], direct_c1["p50_ms"]),
            "added_p99_ms": None if c.name == DIRECT else difference(c1["p99_ms"], direct_c1["p99_ms"]),
            "c32_requests_per_s": t.c32.requests_per_s,
            "c32_errors": t.c32.errors,
            "c32_percent_of_direct": 100.0 * t.c32.requests_per_s / direct_rps if direct_rps else None,
            "gateway_cpu_ms_per_request": 1000.0 * t.gateway_cpu_s / t.ok if c.pids and t.ok else None,
            "loadgen_cpu_ms_per_request": 1000.0 * t.loadgen_cpu_s / t.ok if t.ok else None,
            "warmup_errors": t.warmup_errors,
            "error_samples": [*t.c1.error_samples, *t.c32.error_samples][:5],
        }
    rust = [r["gateway_cpu_ms_per_request"] for r in rows.values() if r["family"] == "rust"]
    rust = [v for v in rust if v is not None]
    return {
        "status": "ok",
        "contenders": rows,
        "unavailable": unavailable,
        "rust_cpu_median_ms": statistics.median(rust) if rust else None,
    }


def gateway_client(stack: servers.ModelbusStack) -> H1Client:
    """The load generator's client for the stack's HTTP gateway; ``RuntimeError`` if it has none."""
    if stack.http_url is None:
        raise RuntimeError("the modelbus stack announced no HTTP gateway (no http_url in its run.json)")
    parts = urlsplit(stack.http_url)
    if parts.hostname is None or parts.port is None:
        raise RuntimeError(f"the gateway's URL names no host and port: {stack.http_url!r}")
    return H1Client(parts.hostname, parts.port)


def gateway_auth(stack: servers.ModelbusStack) -> dict[str, str]:
    """The gateway's ``Authorization`` header with the stack's default key."""
    if not stack.api_key:
        raise RuntimeError("the modelbus stack has no gateway key (no gateway.key in its data dir)")
    return {"Authorization": f"Bearer {stack.api_key}"}


def run_peers(lab: servers.Lab, settings: Settings, peers: Sequence[Peer]) -> dict[str, Any]:
    """Install and start every peer, measure all contenders together, stop every peer."""
    katan = lab.katan()
    stack = lab.plain_stack()
    upstream = Upstream("127.0.0.1", katan.port, servers.BENCH_KEY)
    unavailable = dict(UNAVAILABLE_ELSEWHERE)
    started: list[tuple[Peer, Running]] = []
    install_s: dict[str, float] = {}
    try:
        for peer in peers:
            log = lab.log_dir / f"peer-{peer.name}.log"
            try:
                t0 = time.monotonic()
                peer.install(lab.log_dir / f"peer-{peer.name}-install.log")
                install_s[peer.name] = time.monotonic() - t0
                work = lab.work_dir / f"peer-{peer.name}"
                work.mkdir(parents=True, exist_ok=True)
                started.append((peer, peer.start(upstream, work, log)))
                progress(f"p: {peer.name} serving")
            except PeerUnavailable as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                unavailable[peer.name] = f"{peer.title}: {first} (see {log.name} in the output directory)"
                progress(f"p: {peer.name} unavailable: {first}")
        result = uvloop.run(_measure_all(settings, katan.port, stack, started))
        result["unavailable"] = unavailable
        result["not_selected"] = [name for name in registry.PEERS if name not in {p.name for p in peers}]
        result["install_s"] = install_s
        result["modelbus_stack"] = stack.describe()
        return result
    finally:
        for peer, running in started:
            peer.stop(running)


async def _measure_all(
    settings: Settings, katan_port: int, stack: servers.ModelbusStack, started: list[tuple[Peer, Running]]
) -> dict[str, Any]:
    body = chat_body("echo")
    auth = {"Authorization": f"Bearer {servers.BENCH_KEY}"}
    clients = [H1Client("127.0.0.1", katan_port)]
    contenders = [
        Contender(
            DIRECT, "direct (llm-katan itself)", "upstream", h1_sender(clients[0], "/v1/chat/completions", body, auth)
        )
    ]
    bus = await ModelbusClient.connect(stack.url)
    stack_root = stack.processes[servers.SUPERVISOR]
    nats_pid = stack.processes.get("nats-server")
    pids = tree(stack_root) + ((nats_pid,) if nats_pid else ())
    contenders.append(
        Contender(MODELBUS, f"modelbus ({stack.describe()})", "modelbus", bus_sender(bus, body), pids, None)
    )
    gateway = gateway_client(stack)
    clients.append(gateway)
    contenders.append(
        Contender(
            MODELBUS_HTTP,
            f"modelbus-http (HTTP gateway → {stack.describe()})",
            "modelbus",
            h1_sender(gateway, CHAT_PATH, body, gateway_auth(stack)),
            pids,
            None,
        )
    )
    for peer, running in started:
        client = H1Client(running.host, running.port)
        clients.append(client)
        peer_body = body if running.model == "echo" else chat_body(running.model)
        send = h1_sender(client, running.path, peer_body, dict(running.headers))
        contenders.append(Contender(peer.name, peer.title, peer.family, send, tree(running.pid), running.version))
    try:
        tallies = await measure(contenders, settings)
    finally:
        await bus.close()
        for client in clients:
            await client.aclose()
    return section(contenders, tallies, {})
