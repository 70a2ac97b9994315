"""Micro-benchmark of the router's per-request decisions (no I/O).

Times, per call: decoding a request, resolving its model, estimating its
needs, filtering targets (sensitivity, policy, capabilities, context window),
ordering them with each strategy, and the breaker decision. These run on every
request before the first NATS hop; the point is that they cost microseconds.

    python scripts/routing_bench.py [--number 20000]
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from services.config.documents import compile_text  # noqa: E402
from services.router.breakers import BreakerBook  # noqa: E402
from services.router.filters import needs_of, select_targets, tool_names  # noqa: E402
from services.router.stats import TargetStats  # noqa: E402
from services.router.strategies import Rotation, order_targets  # noqa: E402
from services.router.table import RoutingTable  # noqa: E402
from shared.chat import decode_request  # noqa: E402
from shared.routing import PROVIDER_TYPES  # noqa: E402

CONFIG = "\n---\n".join(
    [
        *(
            f"apiVersion: modelbus.dev/v1\nkind: ModelEndpoint\nmetadata: {{name: ep{i}}}\n"
            f"spec: {{provider: mock, default_model: m{i}}}"
            for i in range(3)
        ),
        "apiVersion: modelbus.dev/v1\nkind: ModelAlias\nmetadata: {name: smart}\n"
        "spec: {targets: [{endpoint: ep0, capabilities: [code, vision], context_window: 128000},"
        " {endpoint: ep1, capabilities: [code], context_window: 32000},"
        " {endpoint: ep2, weight: 2, context_window: 8000}]}",
        "apiVersion: modelbus.dev/v1\nkind: AgentPolicy\nmetadata: {name: p}\n"
        "spec: {allowed_models: [m0, m1, m2], max_tokens_per_run: 100000}",
    ]
)
BODY = msgspec.json.encode(
    {
        "model": "smart",
        "messages": [
            {"role": "system", "content": "You are a careful assistant. " * 10},
            {"role": "user", "content": "Summarise the following text. " + "lorem ipsum dolor sit amet " * 60},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "temperature": 0.2,
    }
)


def main(number: int) -> None:
    config = compile_text(CONFIG)
    table = RoutingTable(config)
    policies = tuple(config.policies.values())
    request = decode_request(BODY)
    route = table.resolve("smart")
    needs = needs_of(request)
    tools = tool_names(request)
    targets = select_targets(route.targets, needs, confidential=False, policies=policies, request_tools=tools)
    stats, rotation, rng = TargetStats(), Rotation(), random.Random(1)
    for t in targets:
        stats.start(t.key)
        stats.finish(t.key, latency_s=0.01, ttft_s=0.005, error_status=None)
    book = BreakerBook()
    cases = {
        f"decode request ({len(BODY)} bytes)": lambda: decode_request(BODY),
        "resolve alias": lambda: table.resolve("smart"),
        "resolve endpoint/model": lambda: table.resolve("ep1/some-model"),
        "estimate needs": lambda: needs_of(request),
        "filter targets (3, policy, tools)": lambda: select_targets(
            route.targets, needs, confidential=False, policies=policies, request_tools=tools
        ),
        "breaker decision": lambda: book.check(("ep0", "m0"), 0.0),
    }
    for strategy in ("failover", "prefer-local", "round-robin", "weighted", "least-latency", "least-busy"):
        cases[f"order targets: {strategy}"] = lambda s=strategy: order_targets(  # type: ignore[misc]
            s,
            targets,
            route_name="smart",
            default_provider="ep1",
            stats=stats,
            rotation=rotation,
            rng=rng,
            streaming=False,
        )
    print(f"\n{number} calls each, best of 5 repeats (provider types known: {len(PROVIDER_TYPES)})\n")
    print("| decision | µs per call |")
    print("|---|---|")
    total = 0.0
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
        if not name.startswith("order targets") or name.endswith("weighted"):
            total += best
        print(f"| {name} | {best:.2f} |")
    print(f"\nall decisions of one request (decode, resolve, needs, filter, breaker, weighted order): ~{total:.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20000)
    main(parser.parse_args().number)
