"""Admin commands of the ``modelbus`` CLI, spoken over the config service's NATS subjects."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import yaml
from nats.aio.client import Client

from services.cli.budgets_cmd import BUDGET_KINDS, cmd_get_budgets
from services.cli.clients_cmd import cmd_create_client
from services.cli.keys_cmd import KEY_KINDS, add_create_parser, cmd_delete_key, cmd_get_keys
from services.cli.ratelimits_cmd import RATE_LIMIT_KINDS, cmd_get_ratelimits
from services.cli.rpc import actor, call
from services.cli.secrets_cmd import SECRET_KINDS, cmd_create_secret, cmd_get_secrets
from shared.admin import (
    KINDS,
    SECRET_KIND,
    ApplyRequest,
    ApplyResult,
    AuditReport,
    DeleteRequest,
    HistoryList,
    HistoryQuery,
    ResourceList,
    ResourceQuery,
    RollbackRequest,
    RouterList,
    StoredResource,
    WaitRequest,
    canonical_kind,
)
from shared.pricing import PriceTable
from shared.probe import probe_endpoint
from shared.routing import Price, RoutingConfig
from shared.subjects import (
    AUDIT_VERIFY,
    CONFIG_APPLY,
    CONFIG_DELETE,
    CONFIG_GET,
    CONFIG_HISTORY,
    CONFIG_RESOURCES,
    CONFIG_ROLLBACK,
    CONFIG_ROUTERS,
    CONFIG_WAIT,
)


def _print_result(verb: str, result: ApplyResult) -> None:
    lines = [f"{c.kind} {c.name} {c.op}{'d' if c.op.endswith('e') else 'ed'}" for c in result.changes]
    prefix = "dry run: " if result.dry_run else ""
    if not lines:
        print(f"{prefix}{verb}: no changes (revision {result.revision})")
    for line in lines:
        print(f"{prefix}{line}")
    for name in result.secrets:
        print(f"{prefix}secret {name} handed to the secrets service")
    if result.changes and not result.dry_run:
        print(f"revision {result.revision}")


async def wait_for(nc: Client, revision: int, timeout_s: float) -> None:
    """Block until every live router serves ``revision``; print them."""
    routers = await call(
        nc,
        CONFIG_WAIT,
        WaitRequest(revision=revision, timeout_ms=int(timeout_s * 1000)),
        RouterList,
        timeout=timeout_s + 5,
    )
    if not routers.items:
        print(f"warning: no live routers; nothing to wait for at revision {revision}", file=sys.stderr)
    else:
        print(f"{len(routers.items)} router(s) at revision {revision} or later")


async def cmd_apply(nc: Client, args: argparse.Namespace) -> int:
    if args.filename == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        path = Path(args.filename)
        text, source = path.read_text(), str(path)
    result = await call(
        nc, CONFIG_APPLY, ApplyRequest(documents=text, actor=actor(), dry_run=args.dry_run, source=source), ApplyResult
    )
    _print_result("apply", result)
    if args.wait and not args.dry_run:
        await wait_for(nc, result.revision, args.wait_timeout)
    return 0


def _table(items: list[StoredResource]) -> str:
    rows = [("KIND", "NAME", "SUMMARY", "SOURCE")]
    for r in items:
        rows.append((r.kind, r.name, _summary(r), r.source))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _summary(r: StoredResource) -> str:
    s = r.spec
    if r.kind == "ModelEndpoint":
        return f"{s.get('provider')} {s.get('base_url', '')} {s.get('default_model', '')}".strip()
    if r.kind == "ModelAlias":
        return ", ".join(f"{t['endpoint']}/{t.get('model', '*')}" for t in s.get("targets", []))
    if r.kind == "Agent":
        return " -> ".join([s.get("model_ref", ""), *s.get("fallback_model_refs", [])])
    if r.kind == "Budget":
        limits = [f"{s['max_tokens']} tokens"] if s.get("max_tokens") else []
        limits += [f"${s['max_cost']}"] if s.get("max_cost") else []
        return f"{s['scope']}={s.get('match') or '*'} per {s['period']}: {' and '.join(limits)}"
    if r.kind == "ModelPrice":
        target = f"{s['endpoint']}/{s['model']}" if s.get("endpoint") else f"{s.get('model_pattern')}"
        if s.get("provider"):
            target += f" ({s['provider']})"
        return f"{target} in={s.get('input')} out={s.get('output')} {s.get('currency', 'USD')}/M"
    if r.kind == "AgentPolicy":
        parts = []
        if s.get("allowed_models") is not None:
            parts.append(f"allowed_models={','.join(s['allowed_models'])}")
        if s.get("max_tokens_per_run"):
            parts.append(f"max_tokens_per_run={s['max_tokens_per_run']}")
        return " ".join(parts)
    return json.dumps(s, sort_keys=True)


def as_document(r: StoredResource) -> dict[str, Any]:
    """A resource as a native document (what ``-o yaml`` prints; it can be re-applied)."""
    name, _, namespace = r.name.rpartition("/")[::-1] if "/" in r.name else (r.name, "", "")
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "modelbus.dev/v1", "kind": r.kind, "metadata": metadata, "spec": r.spec}


async def cmd_get(nc: Client, args: argparse.Namespace) -> int:
    if args.kind.lower() in SECRET_KINDS:
        return await cmd_get_secrets(nc, args)
    if args.kind.lower() in KEY_KINDS:
        return await cmd_get_keys(nc, args)
    if args.kind.lower() in PRICE_KINDS:
        return await cmd_get_prices(nc, args)
    if args.kind.lower() in RATE_LIMIT_KINDS:
        return await cmd_get_ratelimits(nc, args)
    if args.kind.lower() in BUDGET_KINDS:
        return await cmd_get_budgets(nc, args)
    if args.kind.lower() in ("router", "routers"):
        routers = await call(nc, CONFIG_ROUTERS, None, RouterList)
        if args.output == "json":
            print(json.dumps(msgspec.to_builtins(routers), indent=2))
            return 0
        print(f"{'ROUTER':14} {'REVISION':>8}  {'IN-FLIGHT':>9}  {'CONFIG-HASH':16}  STARTED")
        for s in routers.items:
            print(f"{s.router_id:14} {s.revision:>8}  {s.in_flight:>9}  {s.config_hash:16}  {s.started_at}")
        for s in routers.items:
            if s.targets:
                print(f"\nrouter {s.router_id}: targets")
                header = f"{'ENDPOINT/MODEL':32} {'IN-FLIGHT':>9} {'LATENCY-EWMA':>12} {'TTFT-EWMA':>10}"
                print(f"  {header} {'OK':>7} {'ERRORS':>6}")
                for t in s.targets:
                    latency = f"{t.latency_ewma_ms:.1f}ms" if t.latency_ewma_ms is not None else "-"
                    ttft = f"{t.ttft_ewma_ms:.1f}ms" if t.ttft_ewma_ms is not None else "-"
                    last = f" (last {t.last_error_status})" if t.last_error_status else ""
                    name = f"{t.endpoint}/{t.model}"
                    print(f"  {name:32} {t.in_flight:>9} {latency:>12} {ttft:>10} {t.successes:>7} {t.errors:>6}{last}")
            for b in s.breakers:
                print(f"  breaker OPEN {b.endpoint}/{b.model}: probe in {b.retry_after_s:.1f}s")
        return 0
    kind = None if args.kind.lower() == "all" else canonical_kind(args.kind)
    listing = await call(nc, CONFIG_RESOURCES, ResourceQuery(kind=kind, name=args.name), ResourceList)
    if args.output == "json":
        print(json.dumps([as_document(r) for r in listing.items], indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump_all([as_document(r) for r in listing.items], sort_keys=False).rstrip())
    else:
        print(_table(listing.items))
    return 0


PRICE_KINDS = ("price", "prices")
"""``modelbus get prices``: the prices routers apply (ModelPrices and the shipped table)."""


def _price_target(p: Price) -> str:
    if p.endpoint is not None:
        return f"{p.endpoint}/{p.model}"
    return f"{p.model_pattern}" + (f" [{p.provider}]" if p.provider else "")


def _price_row(p: Price) -> dict[str, Any]:
    # Every field, defaults included, so a reader need not know them; rates as exact text.
    row: dict[str, Any] = {k: str(v) if isinstance(v, Decimal) else v for k, v in msgspec.structs.asdict(p).items()}
    row["target"] = _price_target(p)
    return row


def prices_report(config: RoutingConfig) -> dict[str, Any]:
    """What applies at one revision: each alias target and endpoint default model with the price
    that applies to it (``None``: unknown), and every price in precedence order."""
    table = PriceTable(config.prices)
    seen: set[tuple[str, str]] = set()
    applies: list[dict[str, Any]] = []
    pairs = [(t.endpoint, t.model) for a in config.aliases.values() for t in a.targets]
    pairs += [(name, ep.default_model) for name, ep in config.endpoints.items() if ep.default_model]
    for endpoint_name, model in pairs:
        if (endpoint_name, model) in seen or endpoint_name not in config.endpoints:
            continue
        seen.add((endpoint_name, model))
        provider = config.endpoints[endpoint_name].provider
        price = table.lookup(endpoint_name, provider, model)
        applies.append(
            {"endpoint": endpoint_name, "provider": provider, "model": model, "price": price.name if price else None}
        )
    return {
        "revision": config.revision,
        "default_prices": config.defaults.default_prices,
        "applies": sorted(applies, key=lambda r: (r["endpoint"], r["model"])),
        "prices": [_price_row(p) for p in table.prices],
    }


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def cmd_get_prices(nc: Client, args: argparse.Namespace) -> int:
    msg = await call(nc, CONFIG_GET, None, RoutingConfig)
    report = prices_report(msg)
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump(report, sort_keys=False).rstrip())
        return 0
    shipped = "on" if report["default_prices"] else "off (RoutingDefaults default_prices: false)"
    print(f"revision {report['revision']}; shipped default prices {shipped}")
    if report["applies"]:
        applies: list[tuple[str, ...]] = [("ENDPOINT/MODEL", "PROVIDER", "PRICE")]
        for a in report["applies"]:
            applies.append((f"{a['endpoint']}/{a['model']}", a["provider"], a["price"] or "unknown (no price)"))
        print("\n" + _columns(applies))
    header = "PRICE TARGET CURRENCY INPUT CACHE-READ CACHE-WRITE OUTPUT REASONING PER-REQUEST SOURCE"
    rows: list[tuple[str, ...]] = [tuple(header.split())]
    for p in report["prices"]:
        rates = tuple(str(p[k]) for k in ("input", "cache_read", "cache_write", "output", "reasoning"))
        source = f"{p['source']} ({p['as_of']})" if p.get("source") else "ModelPrice"
        rows.append((p["name"], p["target"], p["currency"], *rates, p["per_request"], source))
    print("\nper million tokens; first match wins: endpoint/model, then patterns (longest first), then shipped")
    print(_columns(rows))
    return 0


async def cmd_describe(nc: Client, args: argparse.Namespace) -> int:
    kind = canonical_kind(args.kind)
    listing = await call(nc, CONFIG_RESOURCES, ResourceQuery(kind=kind, name=args.name), ResourceList)
    resource = listing.items[0]
    history = await call(nc, CONFIG_HISTORY, HistoryQuery(kind=kind, name=args.name, limit=5), HistoryList)
    print(yaml.safe_dump(as_document(resource), sort_keys=False).rstrip())
    print(f"# source: {resource.source}; current revision: {listing.revision}")
    for h in history.items:
        ops = ", ".join(c.op for c in h.changes)
        print(f"# revision {h.revision}  {h.time}  {h.actor}  {h.action}: {ops}")
    return 0


async def cmd_delete(nc: Client, args: argparse.Namespace) -> int:
    if args.kind.lower() in KEY_KINDS:
        return await cmd_delete_key(nc, args)
    if args.kind.lower() in SECRET_KINDS:
        # Through the config service, which refuses while an endpoint still uses it and audits it.
        request = DeleteRequest(kind=SECRET_KIND, name=args.name, actor=actor())
        await call(nc, CONFIG_DELETE, request, ApplyResult)
        print(f"secret {args.name} deleted")
        return 0
    result = await call(nc, CONFIG_DELETE, DeleteRequest(kind=args.kind, name=args.name, actor=actor()), ApplyResult)
    _print_result("delete", result)
    return 0


async def cmd_history(nc: Client, args: argparse.Namespace) -> int:
    kind = canonical_kind(args.kind) if args.kind else None
    history = await call(nc, CONFIG_HISTORY, HistoryQuery(kind=kind, name=args.name, limit=args.limit), HistoryList)
    print(f"{'REVISION':>8}  {'TIME':24}  {'ACTOR':16}  {'ACTION':8}  CHANGES")
    for h in history.items:
        changes = ", ".join(f"{c.op} {c.kind} {c.name}" for c in h.changes)
        print(f"{h.revision:>8}  {h.time:24}  {h.actor:16}  {h.action:8}  {changes}")
    return 0


async def cmd_rollback(nc: Client, args: argparse.Namespace) -> int:
    result = await call(nc, CONFIG_ROLLBACK, RollbackRequest(to=args.to, actor=actor()), ApplyResult)
    _print_result(f"rollback to {args.to}", result)
    if args.wait and result.changes:
        await wait_for(nc, result.revision, args.wait_timeout)
    return 0


async def cmd_audit_verify(nc: Client, args: argparse.Namespace) -> int:
    report = await call(nc, AUDIT_VERIFY, None, AuditReport, timeout=120)
    if report.ok:
        print(f"audit chain intact: {report.entries} entries verified")
        return 0
    print(
        f"audit chain BROKEN at stream sequence {report.broken_at}: {report.reason} ({report.entries} entries checked)",
        file=sys.stderr,
    )
    return 1


async def cmd_test_endpoint(nc: Client, args: argparse.Namespace) -> int:
    result = await probe_endpoint(nc, args.name, timeout_ms=int(args.timeout * 1000))
    if args.output == "json":
        print(json.dumps(msgspec.to_builtins(result), indent=2))
    elif result.ok:
        print(f"ok: {result.endpoint} answered with model {result.model} in {result.latency_ms:.1f} ms")
    else:
        err = result.error
        detail = f"{err.status} {err.message}" if err else "unknown error"
        print(f"failed: {result.endpoint} after {result.latency_ms:.1f} ms: {detail}", file=sys.stderr)
    return 0 if result.ok else 1


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the admin subcommands."""
    kinds = ", ".join(KINDS)
    apply = sub.add_parser("apply", help="apply configuration documents (any supported format)")
    apply.add_argument("-f", "--filename", required=True, help="file, or - for standard input")
    apply.add_argument("--dry-run", action="store_true", help="validate and show changes; store nothing")
    apply.add_argument("--wait", action="store_true", help="return once every live router serves the new revision")
    apply.add_argument("--wait-timeout", type=float, default=10.0, help="seconds (default 10)")
    apply.set_defaults(admin=cmd_apply)

    get = sub.add_parser(
        "get", help=f"list resources ({kinds}, all), routers, prices, budgets, ratelimits, secrets, clients or keys"
    )
    get.add_argument("kind")
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    get.set_defaults(admin=cmd_get)

    describe = sub.add_parser("describe", help="one resource with its recent history")
    describe.add_argument("kind")
    describe.add_argument("name")
    describe.set_defaults(admin=cmd_describe)

    delete = sub.add_parser(
        "delete", help="delete one resource, a stored secret, an application's identity or a gateway API key"
    )
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.set_defaults(admin=cmd_delete)

    history = sub.add_parser("history", help="configuration revisions, newest first")
    history.add_argument("kind", nargs="?")
    history.add_argument("name", nargs="?")
    history.add_argument("--limit", type=int, default=50)
    history.set_defaults(admin=cmd_history)

    rollback = sub.add_parser("rollback", help="make an earlier revision current again (as a new revision)")
    rollback.add_argument("--to", type=int, required=True, help="revision to return to")
    rollback.add_argument("--wait", action="store_true")
    rollback.add_argument("--wait-timeout", type=float, default=10.0)
    rollback.set_defaults(admin=cmd_rollback)

    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="walk the chain and report the first broken link")
    verify.set_defaults(admin=cmd_audit_verify)

    test = sub.add_parser("test", help="probe an endpoint with a one-token request")
    test_sub = test.add_subparsers(dest="test_what", required=True)
    endpoint = test_sub.add_parser("endpoint", help="one-token reachability probe through the bus")
    endpoint.add_argument("name")
    endpoint.add_argument("--timeout", type=float, default=15.0, help="seconds")
    endpoint.add_argument("-o", "--output", choices=("text", "json"), default="text")
    endpoint.set_defaults(admin=cmd_test_endpoint)

    create = sub.add_parser("create", help="store a secret, issue an application its own identity, or make an API key")
    create_sub = create.add_subparsers(dest="create_what", required=True)
    secret = create_sub.add_parser(
        "secret",
        help="store a secret (encrypted) for auth.secretRef",
        description="The value comes from standard input (--from-stdin; prompted without echo on a terminal) "
        "or a file (--from-file). --from-literal works but puts the value in the command line, which other "
        "local users can read (ps, /proc) and your shell may keep in its history.",
    )
    secret.add_argument("name")
    source = secret.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-stdin", action="store_true", help="read the value from standard input")
    source.add_argument("--from-file", metavar="PATH", help="read the value from a file")
    source.add_argument("--from-literal", metavar="value=SECRET", help="the value itself (visible to other users)")
    secret.set_defaults(admin=cmd_create_secret)
    client = create_sub.add_parser(
        "client",
        help="issue an application its own broker identity (credentials file in <data-dir>/clients/)",
        description="Writes <data-dir>/clients/NAME.json (mode 0600) and has the running `modelbus up` accept it "
        "without a restart. `modelbus delete client NAME` revokes it.",
    )
    client.add_argument("name", help="1 to 32 characters: lower-case letters, digits and '-'")
    client.set_defaults(local=cmd_create_client, admin=None)
    add_create_parser(create_sub)
