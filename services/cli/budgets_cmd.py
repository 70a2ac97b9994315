"""``modelbus get budgets``: every budget window's limits, spend, reservations and what remains.

Read as ``admin``: the limits from the current configuration (``CONFIG_GET``),
the windows from the KV bucket :data:`shared.subjects.BUDGETS_BUCKET` (read
only; the broker refuses ``admin`` any write there). Reservations already
expired (their router died mid-request) are left out, as the next write of the
entry would drop them.
"""

from __future__ import annotations

import argparse
import json
import time
from decimal import Decimal
from typing import Any

import yaml
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError

from services.cli.rpc import call
from shared.budgets import LEASE_PREFIX, BudgetEntry, decode_entry, parse_entry_key, window_of
from shared.routing import Budget, RoutingConfig
from shared.subjects import BUDGETS_BUCKET, CONFIG_GET

BUDGET_KINDS = ("budget", "budgets")
READ_TIMEOUT_S = 10.0


async def read_entries(nc: Client, *, timeout_s: float = READ_TIMEOUT_S) -> dict[str, BudgetEntry]:
    """Every entry of the budgets bucket by key (empty when there is no bucket yet)."""
    try:
        kv = await nc.jetstream().key_value(BUDGETS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return {}
    watcher = await kv.watchall()
    entries: dict[str, BudgetEntry] = {}
    give_up = time.monotonic() + timeout_s
    try:
        while time.monotonic() < give_up:
            got = await watcher.updates(timeout=timeout_s)  # type: ignore[no-untyped-call]
            if got is None:  # the end of the current values
                return entries
            if got.operation is None and got.value:
                entries[got.key] = decode_entry(got.value)
        raise TimeoutError(f"reading the budgets bucket took more than {timeout_s:g}s")
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _row(budget: Budget, value: str | None, window: str, entry: BudgetEntry, now: float) -> dict[str, Any]:
    entry = entry.without_expired(now)
    remaining_tokens = None
    if budget.max_tokens is not None:
        remaining_tokens = max(0, budget.max_tokens - entry.spent_tokens - entry.reserved_tokens)
    remaining_cost = None
    if budget.max_cost is not None:
        remaining_cost = max(Decimal(0), budget.max_cost - entry.spent_cost - entry.reserved_cost)
    return {
        "budget": budget.name,
        "scope": budget.scope,
        "scope_value": value,
        "period": budget.period,
        "window": window,
        "current": window == window_of(budget.period, now),
        "max_tokens": budget.max_tokens,
        "max_cost": _money(budget.max_cost),
        "spent_tokens": entry.spent_tokens,
        "spent_cost": _money(entry.spent_cost),
        "reserved_tokens": entry.reserved_tokens,
        "reserved_cost": _money(entry.reserved_cost),
        "in_flight": sum(1 for rid in entry.reserved if not rid.startswith(LEASE_PREFIX)),
        "leases": sum(1 for rid in entry.reserved if rid.startswith(LEASE_PREFIX)),
        "leased_tokens": sum(r.tokens for rid, r in entry.reserved.items() if rid.startswith(LEASE_PREFIX)),
        "remaining_tokens": remaining_tokens,
        "remaining_cost": _money(remaining_cost),
    }


def budgets_report(config: RoutingConfig, entries: dict[str, BudgetEntry], now: float) -> dict[str, Any]:
    """One row per (budget, scope value, window) with an entry, and one per budget without any
    (nothing spent yet, ``scope_value`` ``None``); entries of budgets no longer configured are left out."""
    by_name = {b.name: b for b in config.budgets}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for key, entry in entries.items():
        parsed = parse_entry_key(key)
        if parsed is None or parsed[0] not in by_name:
            continue
        name, value, window = parsed
        seen.add(name)
        rows.append(_row(by_name[name], value, window, entry, now))
    for budget in config.budgets:
        if budget.name not in seen:
            rows.append(_row(budget, None, window_of(budget.period, now), BudgetEntry(), now))
    rows.sort(key=lambda r: (r["budget"], r["scope_value"] or "", r["window"]))
    return {"revision": config.revision, "budgets": rows}


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _limit(row: dict[str, Any], tokens: str, cost: str) -> str:
    parts = []
    if row["max_tokens"] is not None:
        parts.append(f"{_cell(row[tokens])}/{row['max_tokens']} tok")
    if row["max_cost"] is not None:
        parts.append(f"${_cell(row[cost])}/${row['max_cost']}")
    return ", ".join(parts)


async def cmd_get_budgets(nc: Client, args: argparse.Namespace) -> int:
    config = await call(nc, CONFIG_GET, None, RoutingConfig)
    report = budgets_report(config, await read_entries(nc), time.time())
    if args.name:
        report["budgets"] = [r for r in report["budgets"] if r["budget"] == args.name]
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump(report, sort_keys=False).rstrip())
        return 0
    table: list[tuple[str, ...]] = [("BUDGET", "SCOPE", "WINDOW", "SPENT", "RESERVED", "REMAINING", "IN-FLIGHT")]
    for r in report["budgets"]:
        scope = f"{r['scope']}={r['scope_value']}" if r["scope_value"] is not None else f"{r['scope']} (none yet)"
        window = r["window"] + ("" if r["current"] else " (past)")
        table.append(
            (
                r["budget"],
                scope,
                window,
                _limit(r, "spent_tokens", "spent_cost"),
                _limit(r, "reserved_tokens", "reserved_cost"),
                _limit(r, "remaining_tokens", "remaining_cost"),
                str(r["in_flight"]) + (f" (+{r['leases']} router leases)" if r["leases"] else ""),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"revision {report['revision']}; windows are UTC; refused at >= the limit")
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
