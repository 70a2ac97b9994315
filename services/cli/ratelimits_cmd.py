"""``modelbus get ratelimits``: every RateLimit and endpoint quota, with this minute's counts.

Read as ``admin``: the limits from the current configuration (``CONFIG_GET``), the counters
from the KV bucket :data:`shared.subjects.RATE_LIMITS_BUCKET` (read only; the broker refuses
``admin`` any write there). Counts include capacity routers have leased and not used yet
(see :mod:`services.router.windows`), so they are what the limit is checked against.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import time
from typing import Any

import yaml
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError

from services.cli.rpc import call
from shared.routing import RoutingConfig
from shared.subjects import CONFIG_GET, RATE_LIMITS_BUCKET

RATE_LIMIT_KINDS = ("ratelimit", "ratelimits", "rate-limits", "quotas")
READ_TIMEOUT_S = 10.0
WINDOW_S = 60  # services.router.windows.WINDOW_S (the CLI may not import a service's module)


def _unb64(text: str) -> str | None:
    if text == "_":
        return ""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def parse_counter_key(key: str) -> tuple[str, str, str, int] | None:
    """``(kind, name, value, window)`` of a counter key ``<kind>.<b64 name>.<b64 value>.<window>``."""
    parts = key.split(".")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    name, value = _unb64(parts[1]), _unb64(parts[2])
    if name is None or value is None:
        return None
    return parts[0], name, value, int(parts[3])


async def read_counters(nc: Client, *, timeout_s: float = READ_TIMEOUT_S) -> dict[str, tuple[int, int]]:
    """Every counter of the bucket by key: ``(requests, tokens)`` (empty when there is no bucket yet)."""
    try:
        kv = await nc.jetstream().key_value(RATE_LIMITS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return {}
    watcher = await kv.watchall()
    counters: dict[str, tuple[int, int]] = {}
    give_up = time.monotonic() + timeout_s
    try:
        while time.monotonic() < give_up:
            got = await watcher.updates(timeout=timeout_s)  # type: ignore[no-untyped-call]
            if got is None:  # the end of the current values
                return counters
            if got.operation is None and got.value:
                requests, _, tokens = got.value.partition(b" ")
                counters[got.key] = (int(requests or b"0"), int(tokens or b"0"))
        raise TimeoutError(f"reading the rate limit bucket took more than {timeout_s:g}s")
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


def ratelimits_report(config: RoutingConfig, counters: dict[str, tuple[int, int]], now: float) -> dict[str, Any]:
    """Limits and quotas of ``config`` with the present minute's counts per value (and the last minute's)."""
    window = int(now // WINDOW_S)
    elapsed = now - window * WINDOW_S
    seen: dict[tuple[str, str, str], dict[int, tuple[int, int]]] = {}
    for key, counts in counters.items():
        parsed = parse_counter_key(key)
        if parsed is not None and parsed[3] >= window - 1:
            kind, name, value, at = parsed
            seen.setdefault((kind, name, value), {})[at] = counts

    def rows(kind: str, name: str) -> list[dict[str, Any]]:
        out = []
        for (k, n, value), by_window in sorted(seen.items()):
            if (k, n) != (kind, name):
                continue
            now_r, now_t = by_window.get(window, (0, 0))
            prev_r, prev_t = by_window.get(window - 1, (0, 0))
            weight = 1 - elapsed / WINDOW_S
            out.append(
                {
                    "value": value,
                    "requests": now_r,
                    "tokens": now_t,
                    "previous_requests": prev_r,
                    "previous_tokens": prev_t,
                    "sliding_requests": round(prev_r * weight + now_r, 1),
                    "sliding_tokens": round(prev_t * weight + now_t, 1),
                }
            )
        return out

    limits = [
        {
            "name": limit.name,
            "scope": limit.scope,
            "match": limit.match,
            "rpm": limit.rpm,
            "tpm": limit.tpm,
            "values": rows("r", limit.name),
        }
        for limit in config.rate_limits
    ]
    quotas = [
        {"endpoint": name, "rpm": ep.rpm, "tpm": ep.tpm, "values": rows("q", name)}
        for name, ep in sorted(config.endpoints.items())
        if ep.rpm is not None or ep.tpm is not None
    ]
    return {"revision": config.revision, "window_start": window * WINDOW_S, "limits": limits, "quotas": quotas}


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


async def cmd_get_ratelimits(nc: Client, args: argparse.Namespace) -> int:
    config = await call(nc, CONFIG_GET, None, RoutingConfig)
    report = ratelimits_report(config, await read_counters(nc), time.time())
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump(report, sort_keys=False).rstrip())
        return 0
    table: list[tuple[str, ...]] = [("LIMIT", "SCOPE", "VALUE", "RPM", "REQUESTS", "TPM", "TOKENS")]
    for limit in report["limits"]:
        scope = limit["scope"] + (f"={limit['match']}" if limit["match"] else "")
        values = limit["values"] or [{"value": "-", "sliding_requests": 0, "sliding_tokens": 0}]
        for v in values:
            table.append(
                (
                    limit["name"],
                    scope,
                    v["value"] or "-",
                    _limit(limit["rpm"]),
                    str(v["sliding_requests"]),
                    _limit(limit["tpm"]),
                    str(v["sliding_tokens"]),
                )
            )
    for quota in report["quotas"]:
        values = quota["values"] or [{"sliding_requests": 0, "sliding_tokens": 0}]
        for v in values:
            table.append(
                (
                    "quota",
                    "endpoint",
                    quota["endpoint"],
                    _limit(quota["rpm"]),
                    str(v["sliding_requests"]),
                    _limit(quota["tpm"]),
                    str(v["sliding_tokens"]),
                )
            )
    print(f"revision {report['revision']}; counts over the last 60 s (sliding estimate)")
    if len(table) == 1:
        print("no RateLimit and no endpoint quota configured")
        return 0
    print(_columns(table))
    return 0
