"""``python -m bench``: compare modelbus with direct calls and with LiteLLM on the same llm-katan.

Scenarios (letters as in the issue):

  p  peers: modelbus against vllm-router, sglang-router, envoy, TensorZero,
     Portkey and LiteLLM, one client, one upstream, CPU per request
  a  added latency at concurrency 1 (direct, litellm, modelbus, modelbus+tracing)
  b  throughput through llm-katan at rising concurrency
  c  bus-only throughput with the mock provider
  d  streaming: time to first token and inter-token latency
  e  hot swap: config changes reaching every router, under load
  f  memory (RSS) of every modelbus process, idle and under load
  g  tracing cost (measured together with a)

Writes results.json, raw_latencies.json, results.md and PNGs to --out, and
prints the Markdown. Exit status 0 for a clean run, 1 when a scenario (or
LiteLLM) failed, 130 on Ctrl-C. No target is asserted: the report shows them.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from bench import plots, progress, report
from bench.peers.registry import PEERS
from bench.runner import run_benchmark
from bench.settings import FULL, QUICK, SCENARIOS, Settings


def parse_settings(argv: list[str]) -> Settings:
    """The run's settings from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=FULL.out_dir, help="output directory (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (numbers mean little)")
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out: no install, not measured")
    parser.add_argument(
        "--peers",
        help=f"p: comma-separated peer gateways, or 'none' (default: {','.join(FULL.peers)})",
    )
    parser.add_argument("--requests", type=int, help="a, g: measured requests per contender (default 2000)")
    parser.add_argument("--rounds", type=int, help="rounds per interleaved measurement (default 10)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated letters to run (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    scenarios = tuple(dict.fromkeys(letter.strip() for letter in args.scenarios.split(",") if letter.strip()))
    unknown = [letter for letter in scenarios if letter not in SCENARIOS]
    if unknown or not scenarios:
        parser.error(f"--scenarios takes letters from {','.join(SCENARIOS)}; got {args.scenarios!r}")
    base = QUICK if args.quick else FULL
    peers = base.peers if args.peers is None else tuple(p.strip() for p in args.peers.split(",") if p.strip())
    if peers == ("none",):
        peers = ()
    unknown_peers = [p for p in peers if p not in PEERS]
    if unknown_peers:
        parser.error(f"--peers takes names from {','.join(PEERS)} or 'none'; got {args.peers!r}")
    if args.skip_litellm:
        peers = tuple(p for p in peers if p != "litellm")
    settings = dataclasses.replace(
        base,
        out_dir=args.out,
        scenarios=scenarios,
        skip_litellm=args.skip_litellm,
        peers=peers,
        latency_requests=args.requests if args.requests is not None else base.latency_requests,
        rounds=args.rounds if args.rounds is not None else base.rounds,
    )
    if settings.rounds < 1:
        parser.error("--rounds must be at least 1")
    if settings.latency_requests < settings.rounds:
        parser.error("--requests must be at least --rounds (each round needs a request per contender)")
    return settings


def main(argv: list[str] | None = None) -> int:
    """Run, report, and return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    settings = parse_settings(argv)
    command = shlex.join([sys.executable, "-m", "bench", *argv])
    try:
        run = run_benchmark(settings, command)
    except KeyboardInterrupt:
        progress("interrupted: every server was stopped; no report written")
        return 130
    out = settings.out_dir
    report.write_json(run.results, run.raw, out)
    markdown = report.render_markdown(run.results)
    (out / report.RESULTS_MD).write_text(markdown)
    plots.draw_all(run.results, run.raw, out)
    print(markdown)
    progress(f"wrote {out / report.RESULTS_JSON}, {out / report.RESULTS_MD} and the plots in {out}")
    return 0 if run.clean else 1


if __name__ == "__main__":
    sys.exit(main())
