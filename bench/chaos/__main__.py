"""``python -m bench.chaos``: kill modelbus processes under load and count every answer at the wire.

Scenarios (``--scenario NAME``, repeatable or comma-separated):

  router                kill -9 one of two routers
  provider              kill -9 one of two provider workers
  provider-mid-stream   kill -9 a provider worker, streamed load only
  router-mid-stream     kill -9 a router, streamed load only
  config                kill -9 the config service
  secrets               kill -9 the secrets service
  nats-restart          kill -9 nats-server, restart it on the same port and store
  cluster-node-1..3     3-node cluster: kill -9 that node
  cluster-busiest-node  3-node cluster: kill -9 the node with most service connections

The full run takes every scenario but cluster-busiest-node (each node is
killed in turn instead); ``--short`` (what CI runs) takes router, provider,
nats-restart and cluster-busiest-node with shorter phases. Prints one
Markdown row per fault, writes chaos.json and chaos.md to --out.

Exit status: 0 when every scenario ran and none had a request never answered,
answered twice or streamed out of order; 1 otherwise; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import progress
from bench.chaos import report
from bench.chaos.runner import run_scenario, source_facts
from bench.chaos.scenarios import BY_NAME, FULL, FULL_RUN, SHORT, SHORT_RUN
from bench.runner import machine_facts

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench" / "results" / "chaos"
DEFAULT_LOGS = DEFAULT_OUT / "logs"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, validated."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="the CI subset with shorter phases (< 90 s)")
    parser.add_argument(
        "--scenario", action="append", default=[], metavar="NAME", help="run only these (repeatable, or a,b,c)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where chaos.json and chaos.md go (%(default)s)")
    parser.add_argument(
        "--logs", type=Path, default=DEFAULT_LOGS, help="every process's output, per scenario (%(default)s)"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="the modelbus tree whose services are run (default: this one); e.g. a `git archive` export of an "
        "older commit, to measure it with this harness",
    )
    parser.add_argument("--commit", help="the commit --source was exported from, when it is not a git checkout")
    parser.add_argument("--note", default="", help="a sentence stored with the results (e.g. 'before the fix')")
    args = parser.parse_args(argv)
    names = [name.strip() for value in args.scenario for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    args.names = names or list(SHORT_RUN if args.short else FULL_RUN)
    if not (args.source / "services" / "router" / "__main__.py").is_file():
        parser.error(f"--source {args.source} is not a modelbus tree (no services/router/__main__.py)")
    args.source = args.source.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print and write the report, return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    timing = SHORT if args.short else FULL
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        del os.environ[name]  # the harness measures; it exports nothing
    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join([sys.executable, "-m", "bench.chaos", *argv]),
        "short": args.short,
        "note": args.note,
        "source": source_facts(args.source, args.commit),
        "machine": machine_facts(),
        "scenarios": [],
    }
    out: Path = args.out
    try:
        for name in args.names:
            progress(f"chaos: {name}")
            results["scenarios"].append(run_scenario(BY_NAME[name], timing, args.source, args.logs))
    except KeyboardInterrupt:
        progress("interrupted: every process this run started was stopped; no report written")
        return 130
    results["duration_s"] = round(time.monotonic() - started, 1)
    broken = [s["name"] for s in results["scenarios"] if s.get("status") == "ok" and s["figures"]["contract_broken"]]
    errored = [s["name"] for s in results["scenarios"] if s.get("status") != "ok"]
    results["contract_broken_in"] = broken
    results["errored"] = errored
    json_path, _ = report.write(results, out)
    print(report.render_markdown(results))
    progress(f"wrote {json_path} and {out / report.CHAOS_MD} (process logs in {args.logs})")
    if broken:
        progress(f"FAILED: a request was never answered, answered twice or streamed out of order in {broken}")
    if errored:
        progress(f"FAILED: scenario(s) could not run: {errored}")
    return 1 if broken or errored else 0


if __name__ == "__main__":
    sys.exit(main())
