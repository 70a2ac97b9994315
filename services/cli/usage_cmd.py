"""``modelbus usage``: totals from the usage ledger, grouped, with the gaps it has.

The command reads the ledger stream (``MODELBUS_USAGE``) as the ``admin``
identity, with an ordered consumer from the start of the window (``--since``,
by the stream's own storage time; records are then also filtered by their
``time_ms``), and adds up every record once: requests, errors, tokens by kind
and cost. The groups' totals add up exactly to the total row, which adds up
exactly to the records read. Costs are summed as :class:`~decimal.Decimal` from the
records' exact strings, per currency, and shown unrounded (``-o json`` keeps them
as strings), so a total is exactly the sum of its records. A record whose cost is
unknown (no price for its model) adds nothing to the cost and is counted apart: a
cost total over such records says so (``12.34 USD + unknown (3)``), never pretends
to be complete.

Gaps: every router numbers its records 1, 2, 3, ... A number missing between
the first and the last record of a router in the window is a lost record, and
is reported per router. A loss after a router's last record shows once it
records again; records before the window are not looked at.

``--text REQUEST_ID`` prints instead the stored prompt and completion of one request of an
agent with ``record_text`` (:mod:`services.cli.usage_text_cmd`), looked for within ``--since``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import msgspec
from nats.aio.client import Client

from services.cli.stream_read import stored_since
from services.cli.usage_text_cmd import cmd_usage_text
from shared.subjects import USAGE_RECORDS, USAGE_STREAM
from shared.usage import UsageRecord, decode_records, parse_duration_s

GROUPS = {
    "key": "key",
    "agent": "agent",
    "run": "run_id",
    "namespace": "namespace",
    "alias": "route",
    "endpoint": "endpoint",
    "model": "model",
}
"""``--by`` value → the :class:`UsageRecord` field it groups by."""
TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
READ_TIMEOUT_S = 60.0
_SUM = Context(prec=80)
"""Sums in 80 digits: far beyond any ledger's total, so no addition ever rounds."""


@dataclass
class Totals:
    """Sums over a set of records."""

    requests: int = 0
    errors: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))
    costs: dict[str, Decimal] = field(default_factory=dict)
    """Sum of the known costs per currency (exact); a cost of 0 with no currency adds nothing."""
    cost_unknown: int = 0
    """Records whose cost is unknown (or not a decimal: counted as unknown, never as 0)."""

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        if record.status != 200:
            self.errors += 1
        for kind in TOKEN_KINDS:
            self.tokens[kind] += getattr(record, kind)
        if record.cost is None:
            self.cost_unknown += 1
            return
        try:
            cost = Decimal(record.cost)
        except InvalidOperation:
            self.cost_unknown += 1
            return
        if not cost.is_finite():
            self.cost_unknown += 1
        elif record.currency is not None:
            self.costs[record.currency] = _SUM.add(self.costs.get(record.currency, Decimal(0)), cost)
        elif cost:  # an amount without a currency (not what routers write): USD, the default
            self.costs["USD"] = _SUM.add(self.costs.get("USD", Decimal(0)), cost)

    @property
    def cost(self) -> Decimal | None:
        """The known costs' sum when there is one currency (0 with none); ``None`` for several."""
        if len(self.costs) > 1:
            return None
        return next(iter(self.costs.values()), Decimal(0))

    def cost_text(self) -> str:
        if self.requests and self.cost_unknown == self.requests:
            return "unknown"
        known = " + ".join(f"{_money(v)} {c}" for c, v in sorted(self.costs.items())) or "0"
        return known if self.cost_unknown == 0 else f"{known} + unknown ({self.cost_unknown})"

    def as_json(self) -> dict[str, Any]:
        only = next(iter(self.costs)) if len(self.costs) == 1 else None
        total = self.cost
        all_unknown = self.requests > 0 and self.cost_unknown == self.requests
        return {
            "requests": self.requests,
            "errors": self.errors,
            "tokens": dict(self.tokens),
            "cost": None if all_unknown or total is None else _money(total),
            "currency": only,
            "costs": {c: _money(v) for c, v in sorted(self.costs.items())},
            "cost_complete": self.cost_unknown == 0,
            "cost_unknown_requests": self.cost_unknown,
        }


def _money(amount: Decimal) -> str:
    """An exact amount as plain decimal text, never in exponent form (``0.000000375``, ``0``)."""
    return format(amount, "f")


@dataclass
class RouterSequence:
    """One router's record numbers as read: where they start and end, and what is missing."""

    first: int
    last: int
    records: int = 1
    duplicates: int = 0
    missing: list[list[int]] = field(default_factory=list)
    """Missing ranges ``[from, to]`` (inclusive), in order."""

    def see(self, seq: int) -> bool:
        """Note ``seq``; ``False`` when it was seen already (a duplicate, not counted again)."""
        if seq == self.last + 1:
            self.last = seq
        elif seq > self.last:
            self.missing.append([self.last + 1, seq - 1])
            self.last = seq
        elif not self._fill(seq):
            self.duplicates += 1
            return False
        self.records += 1
        return True

    def _fill(self, seq: int) -> bool:
        """A late record inside a gap (out of order): the gap shrinks."""
        if seq < self.first:
            if seq + 1 < self.first:
                self.missing.insert(0, [seq + 1, self.first - 1])
            self.first = seq
            return True
        for i, (lo, hi) in enumerate(self.missing):
            if lo <= seq <= hi:
                pieces = [r for r in ([lo, seq - 1], [seq + 1, hi]) if r[0] <= r[1]]
                self.missing[i : i + 1] = pieces
                return True
        return False

    @property
    def missing_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.missing)


@dataclass
class Report:
    """What ``modelbus usage`` found."""

    by: str | None
    since_s: int
    total: Totals = field(default_factory=Totals)
    groups: dict[str | None, Totals] = field(default_factory=dict)
    routers: dict[str, RouterSequence] = field(default_factory=dict)
    unreadable: int = 0
    """Stored messages that are not usage records (counted, not added)."""

    def add(self, record: UsageRecord) -> None:
        seq = self.routers.get(record.router)
        if seq is None:
            self.routers[record.router] = RouterSequence(first=record.seq, last=record.seq)
        elif not seq.see(record.seq):
            return
        self.total.add(record)
        if self.by is not None:
            name = getattr(record, GROUPS[self.by])
            self.groups.setdefault(name, Totals()).add(record)

    @property
    def gaps(self) -> int:
        return sum(r.missing_count for r in self.routers.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "since_s": self.since_s,
            "by": self.by,
            "groups": [{"group": name, **t.as_json()} for name, t in _ordered(self.groups)],
            "total": self.total.as_json(),
            "routers": [
                {
                    "router": router,
                    "records": s.records,
                    "first_seq": s.first,
                    "last_seq": s.last,
                    "missing": s.missing_count,
                    "missing_ranges": s.missing,
                    "duplicates": s.duplicates,
                }
                for router, s in sorted(self.routers.items())
            ],
            "missing_records": self.gaps,
            "unreadable": self.unreadable,
        }


def _ordered(groups: dict[str | None, Totals]) -> list[tuple[str | None, Totals]]:
    return sorted(groups.items(), key=lambda item: (-item[1].requests, item[0] or ""))


async def read_report(nc: Client, since_s: int, by: str | None, *, timeout_s: float = READ_TIMEOUT_S) -> Report:
    """Every ledger record stored in the last ``since_s`` seconds, added up."""
    report = Report(by=by, since_s=since_s)
    cutoff_ms = int((time.time() - since_s) * 1000)
    async for data in stored_since(
        nc,
        USAGE_STREAM,
        USAGE_RECORDS,
        since_s,
        timeout_s=timeout_s,
        missing=f"there is no usage ledger ({USAGE_STREAM}) on this server yet",
        what="the usage ledger",
    ):
        try:
            records = decode_records(data)
        except msgspec.MsgspecError:
            report.unreadable += 1
            continue
        for record in records:
            if record.time_ms >= cutoff_ms:
                report.add(record)
    return report


def print_table(report: Report) -> None:
    """The report as an aligned table, then the gaps."""
    header = ("REQUESTS", "ERRORS", "INPUT", "OUTPUT", "CACHE_READ", "CACHE_WRITE", "REASONING", "COST")
    rows: list[tuple[str, ...]] = []
    if report.by is not None:
        rows.append((report.by.upper(), *header))
        for name, t in _ordered(report.groups):
            rows.append((name if name is not None else "-", *_cells(t)))
        rows.append(("TOTAL", *_cells(report.total)))
    else:
        rows.append(("", *header))
        rows.append(("TOTAL", *_cells(report.total)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    print()
    if not report.routers:
        print(f"no usage records in the last {_since_text(report.since_s)}")
        return
    if report.total.cost_unknown:
        print(
            f"cost: {report.total.cost_unknown} record(s) with unknown cost (no price for the model, or no usage "
            "reported), not counted as 0"
        )
    if report.gaps == 0:
        print(f"gaps: none ({len(report.routers)} router(s), every record numbered without a hole)")
    for router, s in sorted(report.routers.items()):
        if s.missing:
            ranges = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in s.missing[:10])
            more = f" and {len(s.missing) - 10} more range(s)" if len(s.missing) > 10 else ""
            print(f"gaps: router {router} is missing {s.missing_count} record(s): seq {ranges}{more}")
        if s.duplicates:
            print(f"note: router {router}: {s.duplicates} duplicate record(s) counted once")
    if report.unreadable:
        print(f"note: {report.unreadable} stored message(s) are not usage records and were left out")


def _cells(t: Totals) -> tuple[str, ...]:
    k = t.tokens
    return (
        str(t.requests),
        str(t.errors),
        str(k["input_tokens"]),
        str(k["output_tokens"]),
        str(k["cache_read_tokens"]),
        str(k["cache_write_tokens"]),
        str(k["reasoning_tokens"]),
        t.cost_text(),
    )


def _since_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _since(text: str) -> int:
    try:
        seconds = parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("--since must be more than 0")
    return seconds


async def cmd_usage(nc: Client, args: argparse.Namespace) -> int:
    """Print the usage totals of the window, grouped, and the gaps of the ledger."""
    if args.text is not None:
        return await cmd_usage_text(nc, args)
    try:
        report = await read_report(nc, args.since, args.by)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_table(report)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``modelbus usage``."""
    usage = sub.add_parser(
        "usage",
        help="usage totals from the ledger: requests, tokens by kind and cost, grouped, with gaps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    usage.add_argument("--by", choices=tuple(GROUPS), default=None, help="group by this field")
    usage.add_argument(
        "--since", type=_since, default=86400, metavar="DURATION", help="window, e.g. 1h, 24h, 7d (default 24h)"
    )
    usage.add_argument("-o", "--output", choices=("table", "json"), default="table")
    usage.add_argument(
        "--text", metavar="REQUEST_ID", default=None, help="print the stored prompt and completion of one request"
    )
    usage.set_defaults(admin=cmd_usage)
