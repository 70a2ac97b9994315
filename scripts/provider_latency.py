"""Latency each provider adapter adds, against calling llm-katan's native route directly.

Starts llm-katan (echo backend, every provider enabled) and a modelbus stack
with one endpoint per provider type pointing at it, then for each type
measures, at concurrency 1 and in alternating rounds so machine drift hits
both alike:

* **direct**: one pooled httpx client calling the provider's native route;
* **modelbus**: client → router → provider worker → the same route.

Types whose adapter is not registered in this build are skipped.

    python scripts/provider_latency.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.stack import running_stack  # noqa: E402
from services.providers.registry import ADAPTERS  # noqa: E402
from shared.client import ModelbusClient  # noqa: E402
from tests.conftest import start_katan, stop_process  # noqa: E402

KEY = "bench-key"
PROMPT = "hello from the latency benchmark"
AWS = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}


def endpoints(base: str) -> dict[str, dict[str, Any]]:
    """Endpoint spec per provider type, all pointing at llm-katan."""
    return {
        "openai": {"provider": "openai", "base_url": f"{base}/v1", "auth": {"secretRef": "env:BENCH_KEY"}},
        "anthropic": {"provider": "anthropic", "base_url": f"{base}/v1", "auth": {"secretRef": "env:BENCH_KEY"}},
        "azure-openai": {
            "provider": "azure-openai",
            "base_url": base,
            "options": {"api_version": "2024-10-21"},
            "auth": {"secretRef": "env:BENCH_KEY"},
        },
        # llm-katan's Gemini route checks only `Authorization: Bearer` (or ?key=), not x-goog-api-key.
        "gemini": {
            "provider": "gemini",
            "base_url": base,
            "options": {"credential": "access_token"},
            "auth": {"secretRef": "env:BENCH_KEY"},
        },
        "bedrock": {
            "provider": "bedrock",
            "base_url": base,
            "options": {"region": "us-east-1"},
            "auth": {"secretRef": "env:BENCH_AWS"},
        },
    }


def direct_request(kind: str, base: str) -> tuple[str, dict[str, str], bytes]:
    """The native call llm-katan serves for ``kind``."""
    if kind == "openai":
        body = {"model": "echo", "messages": [{"role": "user", "content": PROMPT}]}
        return f"{base}/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, json.dumps(body).encode()
    if kind == "azure-openai":
        body = {"messages": [{"role": "user", "content": PROMPT}]}
        url = f"{base}/openai/deployments/echo/chat/completions?api-version=2024-10-21"
        return url, {"api-key": KEY}, json.dumps(body).encode()
    if kind == "anthropic":
        body = {"model": "echo", "max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}]}
        return f"{base}/v1/messages", {"x-api-key": KEY, "anthropic-version": "2023-06-01"}, json.dumps(body).encode()
    if kind == "gemini":
        body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
        return (
            f"{base}/v1beta/models/echo:generateContent",
            {"authorization": f"Bearer {KEY}"},
            json.dumps(body).encode(),
        )
    raise KeyError(kind)


def signed_bedrock(base: str) -> tuple[str, dict[str, str], bytes]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = json.dumps({"messages": [{"role": "user", "content": [{"text": PROMPT}]}]}).encode()
    url = f"{base}/model/echo/converse"
    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(AWS["access_key_id"], AWS["secret_access_key"]), "bedrock", "us-east-1").add_auth(request)
    return url, dict(request.headers.items()), body


async def time_direct(http: httpx.AsyncClient, kind: str, base: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        url, headers, body = signed_bedrock(base) if kind == "bedrock" else direct_request(kind, base)
        headers = {**headers, "content-type": "application/json"}
        t0 = time.perf_counter()
        reply = await http.post(url, content=body, headers=headers)
        out.append((time.perf_counter() - t0) * 1000)
        reply.raise_for_status()
    return out


async def time_bus(client: ModelbusClient, kind: str, n: int) -> list[float]:
    body = {"model": kind, "messages": [{"role": "user", "content": PROMPT}]}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        reply = await client.request_raw(body, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
        if reply.status != 200:
            raise RuntimeError(f"{kind}: {reply.status} {reply.body[:300]!r}")
    return out


async def measure(url: str, base: str, kinds: list[str], args: argparse.Namespace) -> None:
    client = await ModelbusClient.connect(url)
    results: dict[str, dict[str, list[float]]] = {k: {"direct": [], "bus": []} for k in kinds}
    async with httpx.AsyncClient() as http:
        for kind in kinds:  # warm-up: connections, caches, credentials
            await time_direct(http, kind, base, 20)
            await time_bus(client, kind, 20)
        for _ in range(args.rounds):
            for kind in kinds:
                results[kind]["direct"] += await time_direct(http, kind, base, args.requests // args.rounds)
                results[kind]["bus"] += await time_bus(client, kind, args.requests // args.rounds)
    await client.close()
    print(f"\n{args.requests} sequential requests per path, concurrency 1, {args.rounds} alternating rounds\n")
    print("| provider type | direct p50 ms | modelbus p50 ms | added p50 ms | modelbus p99 ms |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        direct, bus = results[kind]["direct"], results[kind]["bus"]
        d50, b50 = statistics.median(direct), statistics.median(bus)
        b99 = sorted(bus)[int(0.99 * (len(bus) - 1))]
        print(f"| {kind} | {d50:.2f} | {b50:.2f} | {b50 - d50:.2f} | {b99:.2f} |")


def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="modelbus-provider-latency-"))
    katan = start_katan(
        tmp,
        "--validate-keys",
        "--api-keys",
        f"openai={KEY},anthropic={KEY},azure_openai={KEY},vertexai={KEY},bedrock={AWS['access_key_id']}",
    )
    try:
        kinds = [k for k in endpoints(katan.base_url) if k in ADAPTERS and (not args.types or k in args.types)]
        docs = []
        for kind in kinds:
            spec = endpoints(katan.base_url)[kind] | {"allowPrivate": True, "default_model": "echo"}
            docs.append(
                {"apiVersion": "modelbus.dev/v1", "kind": "ModelEndpoint", "metadata": {"name": kind}, "spec": spec}
            )
        config = tmp / "config.yaml"
        config.write_text("\n---\n".join(json.dumps(d) for d in docs))
        env = {"BENCH_KEY": KEY, "BENCH_AWS": json.dumps(AWS)}
        with running_stack("--config", str(config), env=env, prefix="modelbus-provider-latency-") as url:
            asyncio.run(measure(url, katan.base_url, kinds, args))
    finally:
        stop_process(katan.proc)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--types", type=lambda v: v.split(","), default=None, help="e.g. openai,bedrock (default: all)")
    main(parser.parse_args())
