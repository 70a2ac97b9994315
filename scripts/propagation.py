"""Measure hot-swap propagation: from an apply to every router serving the new revision.

Starts its own nats-server and ``modelbus up --routers N`` (mock provider), then
applies ``--changes`` alias changes one after another. For each, the clock
starts when the apply request is sent to the config service and stops when the
last router has announced the new revision on ``modelbus.v1.router.revisions``
(each router announces right after swapping its table). Meanwhile a client
keeps ``--concurrency`` requests in flight against the changing alias, and
every failed request is counted: there must be none.

    python scripts/propagation.py [--routers 4] [--changes 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import msgspec
import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.stack import running_stack  # noqa: E402
from shared.admin import ApplyRequest, ApplyResult, RouterStatus  # noqa: E402
from shared.subjects import CHAT_COMPLETIONS, CONFIG_APPLY, ROUTER_REVISIONS  # noqa: E402


def alias(model: str) -> str:
    return json.dumps(
        {
            "apiVersion": "modelbus.dev/v1",
            "kind": "ModelAlias",
            "metadata": {"name": "hot"},
            "spec": {"targets": [{"endpoint": "mock", "model": model}]},
        }
    )


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    with running_stack("--routers", str(args.routers), prefix="modelbus-propagation-") as url:
        await measure(url, args)


async def measure(url: str, args: argparse.Namespace) -> None:
    nc = await nats.connect(url)
    status_decoder = msgspec.json.Decoder(RouterStatus)
    reached: dict[int, set[str]] = {}
    done: dict[int, asyncio.Event] = {}
    finished_at: dict[int, float] = {}

    async def on_revision(msg: nats.aio.msg.Msg) -> None:
        status = status_decoder.decode(msg.data)
        routers = reached.setdefault(status.revision, set())
        routers.add(status.router_id)
        if len(routers) == args.routers and status.revision not in finished_at:
            finished_at[status.revision] = time.perf_counter()
            done.setdefault(status.revision, asyncio.Event()).set()

    await nc.subscribe(ROUTER_REVISIONS, cb=on_revision)
    await nc.flush()
    errors = 0
    requests = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal errors, requests
        body = json.dumps({"model": "hot", "messages": [{"role": "user", "content": "hi"}]}).encode()
        while not stop.is_set():
            try:
                reply = await nc.request(CHAT_COMPLETIONS, body, timeout=10)
                if (reply.headers or {}).get("Modelbus-Status") != "200":
                    errors += 1
            except Exception:
                errors += 1
            requests += 1

    first = msgspec.json.decode(
        (await nc.request(CONFIG_APPLY, msgspec.json.encode(ApplyRequest(documents=alias("m-0"))), timeout=10)).data,
        type=ApplyResult,
    )
    await asyncio.wait_for(done.setdefault(first.revision, asyncio.Event()).wait(), 10)
    workers = [asyncio.create_task(traffic()) for _ in range(args.concurrency)]
    samples: list[float] = []
    for i in range(1, args.changes + 1):
        started = time.perf_counter()
        reply = await nc.request(
            CONFIG_APPLY, msgspec.json.encode(ApplyRequest(documents=alias(f"m-{i}"), actor="bench")), timeout=10
        )
        result = msgspec.json.decode(reply.data, type=ApplyResult)
        event = done.setdefault(result.revision, asyncio.Event())
        await asyncio.wait_for(event.wait(), 10)
        samples.append((finished_at[result.revision] - started) * 1000)
    stop.set()
    await asyncio.gather(*workers)
    await nc.close()
    print(f"\n{args.changes} changes, {args.routers} routers, {args.concurrency} requests in flight meanwhile\n")
    print("| apply → all routers on the revision | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    print(
        f"| ms | {statistics.median(samples):.2f} | {_pct(samples, 0.9):.2f} | "
        f"{_pct(samples, 0.99):.2f} | {max(samples):.2f} |"
    )
    print(f"\nrequests during the changes: {requests}, failed: {errors}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routers", type=int, default=4)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
