"""The report's PNGs, drawn with matplotlib's Agg backend (no display needed).

* ``latency_cdf.png``: scenario a, one CDF line per contender, log ms axis;
* ``throughput.png``: req/s against concurrency, one line per contender of
  b plus the bus-only mock line of c;
* ``streaming.png``: scenario d, CDFs of TTFT and ITL.

A plot whose scenario did not run is still written, saying so, so the set of
files is the same after every run. Every title carries the machine and date.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.load import cdf_points

LATENCY_CDF = "latency_cdf.png"
THROUGHPUT = "throughput.png"
STREAMING = "streaming.png"


def _caption(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    quick = ", quick smoke run" if results["settings"]["quick"] else ""
    return f"{machine['cores']} cores, Python {machine['python']}, {results['started_at']}{quick}"


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _not_measured(ax: Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _cdf(ax: Axes, series: Mapping[str, list[float]], xlabel: str, *, log: bool) -> None:
    drawn = False
    for name, samples in series.items():
        if samples:
            xs, ys = cdf_points(samples)
            ax.step(xs, ys, where="post", label=f"{name} (n={len(samples):,})")
            drawn = True
    if not drawn:
        _not_measured(ax, "no samples")
        return
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction at or below")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right")


def latency_cdf(results: Mapping[str, Any], raw: Mapping[str, Any], path: Path) -> None:
    """Scenario a's latency CDF."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_title(f"a. Latency at concurrency 1 through llm-katan\n{_caption(results)}")
    if results["scenarios"].get("a", {}).get("status") == "ok":
        _cdf(ax, raw["a"], "latency per request, ms (log scale)", log=True)
    else:
        _not_measured(ax, "scenario a was not measured")
    _save(fig, path)


def throughput(results: Mapping[str, Any], path: Path) -> None:
    """req/s against concurrency for b's contenders and c's bus-only line."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_title(f"b, c. Throughput (closed loop) against concurrency\n{_caption(results)}")
    lines: dict[str, tuple[list[int], list[float]]] = {}
    for letter, suffix in (("b", " via llm-katan"), ("c", ", no upstream")):
        section = results["scenarios"].get(letter, {})
        if section.get("status") != "ok":
            continue
        for level, by_name in section["levels"].items():
            for name, summary in by_name.items():
                xs, ys = lines.setdefault(name + suffix, ([], []))
                xs.append(int(level))
                ys.append(summary["requests_per_s"])
    if not lines:
        _not_measured(ax, "scenarios b and c were not measured")
    else:
        for name, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        levels = sorted({x for xs, _ in lines.values() for x in xs})
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.set_xlabel("requests in flight (concurrency)")
        ax.set_ylabel("successful requests per second")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    _save(fig, path)


def streaming(results: Mapping[str, Any], raw: Mapping[str, Any], path: Path) -> None:
    """Scenario d's TTFT and ITL CDFs."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    upstream = results["scenarios"].get("d", {}).get("upstream", {})
    delays = f" (--ttft-ms {upstream['ttft_ms']} --itl-ms {upstream['itl_ms']})" if upstream else ""
    fig.suptitle(f"d. Streaming through llm-katan{delays}\n{_caption(results)}")
    if results["scenarios"].get("d", {}).get("status") == "ok":
        left.set_title("time to first token")
        _cdf(left, raw["d"]["ttft_ms"], "ms from sending the request", log=False)
        right.set_title("mean inter-token gap per stream")
        _cdf(right, raw["d"]["itl_ms"], "mean ms between content chunks", log=False)
    else:
        _not_measured(left, "scenario d was not measured")
        _not_measured(right, "scenario d was not measured")
    _save(fig, path)


def draw_all(results: Mapping[str, Any], raw: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write every PNG to ``out_dir``; return their paths."""
    paths = [out_dir / LATENCY_CDF, out_dir / THROUGHPUT, out_dir / STREAMING]
    latency_cdf(results, raw, paths[0])
    throughput(results, paths[1])
    streaming(results, raw, paths[2])
    return paths
