"""What the provider worker's upstream HTTP leg costs, against a minimal client, on llm-katan.

Starts one llm-katan (echo backend) and, in this one process on uvloop (as the
provider worker runs), sends the OpenAI adapter's request (``POST
/v1/chat/completions`` with its headers and a small JSON body) through each
contender, reading every whole answer:

* **minimal**: the floor. A keep-alive HTTP/1.1 client of a few lines: one
  prebuilt request, ``httptools`` parsing the answer on an asyncio
  ``Protocol``, a list of idle connections. No headers object, no response
  object, no timeouts, no guard.
* **current**: ``services.providers.http.UpstreamClient`` as it is in the work
  tree, called as the adapters call it (``post(url, content=, headers=,
  timeout=)``, then ``status_code`` and ``content``), with the SSRF check the
  endpoint uses (``allowPrivate`` here, llm-katan is on loopback).
* **baseline**: the same client loaded from ``--baseline-rev`` (default
  ``HEAD``) out of git, when that revision's client differs from the work tree.
* **httpx**: a plain ``httpx.AsyncClient``, for reference.
* **aiohttp**: ``aiohttp.ClientSession``, when aiohttp is importable (it is not
  a dependency; ``pip install --target DIR aiohttp`` and ``PYTHONPATH=DIR``
  measure it without touching the environment).

Every contender gets the same number of requests at concurrency 1 and the same
time at concurrency 32, in rounds whose order rotates, so drift of the shared
machine lands on all alike. Latency is the wall time of each call. CPU per
request is this process's CPU time (``time.process_time``, user + system, all
threads) over each contender's share divided by its successful requests: it
includes the load loop itself, which costs the same for everyone, so the
*minimal* row is the floor and differences between rows are the client's own.
llm-katan's CPU is not counted (the same for everyone).

    .venv/bin/python scripts/upstream_bench.py [--requests 400] [--duration 2] [--rounds 4]
        [--baseline-rev HEAD] [--only minimal,current] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httptools
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import closed_loop, percentile, rotated  # noqa: E402
from services.providers.ssrf import SsrfGuard  # noqa: E402
from tests.conftest import start_katan, stop_process  # noqa: E402

BODY = json.dumps(
    {"model": "echo", "messages": [{"role": "user", "content": "hello from the upstream bench"}]}
).encode()
HEADERS = {"authorization": "Bearer bench-key", "content-type": "application/json"}

Send = Callable[[], Awaitable[None]]


# ---------------------------------------------------------------- the floor


class _MinimalConnection(asyncio.Protocol):
    """One keep-alive connection; ``httptools`` finds where each answer ends."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(b"".join(self.body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("closed"))


class MinimalClient:
    """The floor: a prebuilt request and a list of idle connections."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port = host, port
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        self.request = head.encode() + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
        self.idle: list[_MinimalConnection] = []

    async def send(self) -> None:
        while self.idle and self.idle[-1].transport.is_closing():  # the server's keep-alive timeout
            self.idle.pop()
        if self.idle:
            conn = self.idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_MinimalConnection, self.host, self.port)
        conn.body = []
        conn.done = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.write(self.request)
        body = await conn.done
        if conn.parser.get_status_code() != 200 or not body:
            raise RuntimeError(f"status {conn.parser.get_status_code()}")
        self.idle.append(conn)

    async def aclose(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


# ---------------------------------------------------------------- the clients under test


CLIENT_MODULES = ("http", "netio", "h1", "pool", "response", "transport_errors")
"""The modules the upstream client is made of (in any revision: the older ones lack some)."""


def _at(rev: str, name: str) -> str | None:
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:services/providers/{name}.py"], capture_output=True, text=True
    )
    return shown.stdout if shown.returncode == 0 else None


def load_baseline(rev: str) -> Any | None:
    """``services.providers.http`` as of ``rev`` (with its own client modules), or ``None`` when
    that revision's client is the work tree's."""
    files = {name: text for name in CLIENT_MODULES if (text := _at(rev, name)) is not None}
    here = {
        name: path.read_text() for name in CLIENT_MODULES if (path := ROOT / f"services/providers/{name}.py").exists()
    }
    if files == here:
        return None
    package = Path(tempfile.mkdtemp(prefix="upstream-baseline-")) / "_baseline_upstream"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in files.items():
        for other in files:
            text = text.replace(f"services.providers.{other} ", f"_baseline_upstream.{other} ")
            text = text.replace(f"services.providers.{other}\n", f"_baseline_upstream.{other}\n")
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(package.parent))
    atexit.register(shutil.rmtree, package.parent, True)
    return importlib.import_module("_baseline_upstream.http")


def endpoint_client(cls: Any, guard: SsrfGuard) -> Any:
    """The client as ``EndpointConnection`` builds it, in either revision's spelling of the guard."""
    if "guard" in inspect.signature(cls).parameters:
        return cls(timeout_s=30, guard=guard)
    return cls(timeout_s=30, check=guard.check_url)


def adapter_send(client: Any, url: str) -> Send:
    """A call the way the adapters make it."""

    async def send() -> None:
        response = await client.post(url, content=BODY, headers=dict(HEADERS), timeout=30.0)
        if response.status_code != 200 or not response.content:
            raise RuntimeError(f"status {response.status_code}")

    return send


def aiohttp_send(session: Any, url: str) -> Send:
    async def send() -> None:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            body = await response.read()
            if response.status != 200 or not body:
                raise RuntimeError(f"status {response.status}")

    return send


def httpx_send(client: httpx.AsyncClient, url: str) -> Send:
    async def send() -> None:
        response = await client.post(url, content=BODY, headers=HEADERS)
        if response.status_code != 200 or not response.content:
            raise RuntimeError(f"status {response.status_code}")

    return send


# ---------------------------------------------------------------- measurement


async def measure(base: str, args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    from services.providers.http import UpstreamClient

    url = f"{base}/v1/chat/completions"
    port = int(base.rsplit(":", 1)[1])
    guard = SsrfGuard("bench", allow_private=True)
    closers: list[Callable[[], Awaitable[None]]] = []
    contenders: dict[str, Send] = {}

    minimal = MinimalClient("127.0.0.1", port, "/v1/chat/completions")
    contenders["minimal"] = minimal.send
    closers.append(minimal.aclose)
    current = endpoint_client(UpstreamClient, guard)
    contenders["current"] = adapter_send(current, url)
    closers.append(current.aclose)
    baseline_module = load_baseline(args.baseline_rev)
    if baseline_module is not None:
        baseline = endpoint_client(baseline_module.UpstreamClient, guard)
        contenders["baseline"] = adapter_send(baseline, url)
        closers.append(baseline.aclose)
    else:
        print(f"baseline: {args.baseline_rev}'s client is the work tree's; not measured separately")
    plain = httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    contenders["httpx"] = httpx_send(plain, url)
    closers.append(plain.aclose)
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        contenders["aiohttp"] = aiohttp_send(session, url)
        closers.append(session.close)
    if args.only:
        wanted = args.only.split(",")
        contenders = {name: send for name, send in contenders.items() if name in wanted}

    for send in contenders.values():  # warm-up: connections (up to 32), caches
        await closed_loop(send, 32, requests=200)
        await closed_loop(send, 1, requests=50)

    samples: dict[str, dict[int, list[float]]] = {name: {1: [], 32: []} for name in contenders}
    cpu: dict[str, dict[int, float]] = {name: {1: 0.0, 32: 0.0} for name in contenders}
    wall: dict[str, dict[int, float]] = {name: {1: 0.0, 32: 0.0} for name in contenders}
    errors: dict[str, int] = dict.fromkeys(contenders, 0)
    for round_index in range(args.rounds):
        for concurrency in (1, 32):
            for name in rotated(list(contenders), round_index):
                cpu0 = time.process_time()
                if concurrency == 1:
                    result = await closed_loop(contenders[name], 1, requests=args.requests // args.rounds)
                else:
                    result = await closed_loop(contenders[name], 32, duration_s=args.duration / args.rounds)
                cpu[name][concurrency] += time.process_time() - cpu0
                wall[name][concurrency] += result.elapsed_s
                samples[name][concurrency] += result.latencies_ms
                errors[name] += result.errors
                if result.error_samples:
                    print(f"{name}: {result.error_samples}")
    for close in closers:
        await close()

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in contenders:
        summary[name] = {}
        for concurrency in (1, 32):
            got = samples[name][concurrency]
            summary[name][f"c{concurrency}"] = {
                "requests": len(got),
                "errors": errors[name],
                "p50_ms": percentile(got, 50),
                "p99_ms": percentile(got, 99),
                "cpu_ms_per_request": cpu[name][concurrency] * 1000 / max(1, len(got)),
                "requests_per_s": len(got) / wall[name][concurrency] if wall[name][concurrency] else 0.0,
            }
    return summary


def print_table(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    print("\n| client | c=1 p50 ms | c=1 p99 ms | c=1 CPU ms/req ", end="")
    print("| c=32 p50 ms | c=32 p99 ms | c=32 req/s | c=32 CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in summary.items():
        one, many = rows["c1"], rows["c32"]
        print(
            f"| {name} | {one['p50_ms']:.2f} | {one['p99_ms']:.2f} | {one['cpu_ms_per_request']:.3f} "
            f"| {many['p50_ms']:.2f} | {many['p99_ms']:.2f} | {many['requests_per_s']:.0f} "
            f"| {many['cpu_ms_per_request']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per contender at concurrency 1")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per contender at concurrency 32")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (order rotates)")
    parser.add_argument("--baseline-rev", default="HEAD", help="git revision of the baseline client")
    parser.add_argument("--only", default="", help="comma-separated contenders to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()

    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        katan = start_katan(Path(tmp))
        try:
            summary = uvloop.run(measure(katan.base_url, args))
        finally:
            stop_process(katan.proc)
    print(
        f"\n{args.requests} requests per client at concurrency 1, {args.duration:.1f} s each at 32, "
        f"{args.rounds} rotating rounds; llm-katan echo; CPU = this process's time / successful requests"
    )
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
