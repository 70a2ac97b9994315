"""Measure the mock path's latency and capacity: client → router → provider → client.

Starts its own nats-server and ``modelbus up --nats-url`` with a mock-only
config, then measures, in the same run:

* ``nats floor``: a bare nats-py request/reply echo on the same server, the
  least any NATS hop can cost here;
* ``modelbus mock``: a full completion through router and provider worker.

Sequential requests give p50/p90/p99; a run with N requests in flight gives
req/s. Usage::

    python scripts/latency.py [--requests 2000] [--concurrency 64] [--trace]

``--trace`` exports spans from every service to a throwaway local OTLP/HTTP
receiver, to see what tracing costs. Timing claims live here, not in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.stack import running_stack  # noqa: E402

CONFIG = """\
apiVersion: modelbus.dev/v1
kind: ModelEndpoint
metadata: {name: mock}
spec: {provider: mock, default_model: mock-1}
---
apiVersion: modelbus.dev/v1
kind: ModelAlias
metadata: {name: default}
spec: {targets: [{endpoint: mock}]}
"""
BODY = json.dumps({"model": "default", "messages": [{"role": "user", "content": "ping " * 20}]}).encode()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(nc: nats.NATS, subject: str, body: bytes, n: int) -> list[float]:
    for _ in range(min(200, n)):  # warm-up: connections, caches, JIT-less but still
        await nc.request(subject, body, timeout=10)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        msg = await nc.request(subject, body, timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        if msg.headers and msg.headers.get("Modelbus-Status", "200") != "200":
            raise RuntimeError(f"request failed: {msg.data[:200]!r}")
    return out


async def _concurrent(nc: nats.NATS, subject: str, body: bytes, n: int, concurrency: int) -> tuple[float, int]:
    errors = 0
    left = n

    async def worker() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            try:
                msg = await nc.request(subject, body, timeout=30)
                if msg.headers and msg.headers.get("Modelbus-Status", "200") != "200":
                    errors += 1
            except Exception:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), errors


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def main(args: argparse.Namespace) -> None:
    env: dict[str, str] = {}
    sink = None
    if args.trace:
        sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_port}"
    config = Path(tempfile.mkdtemp(prefix="modelbus-latency-config-")) / "config.yaml"
    config.write_text(CONFIG)
    try:
        with running_stack("--config", str(config), env=env, prefix="modelbus-latency-") as url:
            await measure(url, args)
    finally:
        if sink is not None:
            sink.shutdown()


async def measure(url: str, args: argparse.Namespace) -> None:
    nc = await nats.connect(url)
    echo = await nats.connect(url)

    async def echo_reply(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    await echo.subscribe("latency.echo", cb=echo_reply)
    await echo.flush()
    rows = []
    for name, subject in (
        ("nats floor (nats-py echo)", "latency.echo"),
        ("modelbus mock path", "llm.v1.chat.completions"),
    ):
        seq = await _sequential(nc, subject, BODY, args.requests)
        rps, errors = await _concurrent(nc, subject, BODY, args.requests * 2, args.concurrency)
        rows.append((name, statistics.median(seq), _percentile(seq, 0.9), _percentile(seq, 0.99), rps, errors))
    floor = rows[0][1]
    print(
        f"\n{args.requests} sequential requests, {args.requests * 2} at concurrency {args.concurrency}, "
        f"tracing {'on (OTLP/HTTP export)' if args.trace else 'off'}\n"
    )
    print(f"| path | p50 ms | p90 ms | p99 ms | req/s @{args.concurrency} | errors |")
    print("|---|---|---|---|---|---|")
    for name, p50, p90, p99, rps, errors in rows:
        print(f"| {name} | {p50:.3f} | {p90:.3f} | {p99:.3f} | {rps:,.0f} | {errors} |")
    print(f"\nmodelbus mock path minus the NATS floor at p50: {rows[1][1] - floor:.3f} ms")
    await nc.close()
    await echo.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--trace", action="store_true", help="export spans to a local OTLP/HTTP sink")
    asyncio.run(main(parser.parse_args()))
