"""The Grafana dashboard (deploy/grafana/dashboards/modelbus.json) asks only for metrics modelbus has.

Every PromQL expression of every panel is reduced to the metric names it selects, and each must
be a sample name of a metric family modelbus services expose. Here the families come from this
process's registry, rendered and parsed as Prometheus would scrape it (every service defines
them in :mod:`shared.metrics` and its own metrics module); tests/integration/test_metrics.py
checks the same against the endpoints of a running stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import services.providers.metrics
import services.router.metrics
import shared.metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "modelbus.json"
PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def expressions(dashboard: Mapping[str, object]) -> list[str]:
    """Every ``expr`` of every panel's targets."""
    found: list[str] = []
    for panel in dashboard.get("panels", []):  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(target["expr"])
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and numbers left out)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        name = match.group(0)
        if rest.startswith("(") or name in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def sample_names(exposition: str) -> set[str]:
    """Every sample name a scrape of ``exposition`` can have: a family's own, and a counter's
    ``_total``/``_created``, a histogram's ``_bucket``/``_sum``/``_count``/``_created``."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def unknown_metrics(dashboard: Mapping[str, object], known: Iterable[str]) -> dict[str, set[str]]:
    """``{expression: names it selects that no service exposes}`` (empty: all exist)."""
    have = set(known)
    return {e: missing for e in expressions(dashboard) if (missing := metric_names(e) - have)}


def load_dashboard() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def test_every_query_of_the_dashboard_names_a_metric_modelbus_exposes() -> None:
    known = sample_names(generate_latest(REGISTRY).decode())
    dashboard = load_dashboard()
    assert expressions(dashboard), "the dashboard has no queries"
    assert unknown_metrics(dashboard, known) == {}


def test_a_query_naming_a_metric_nobody_exposes_is_caught() -> None:
    known = sample_names(generate_latest(REGISTRY).decode())
    bogus = {"panels": [{"targets": [{"expr": 'sum by (status) (rate(modelbus_no_such_total{a="b"}[1m]))'}]}]}
    assert unknown_metrics(bogus, known) == {
        'sum by (status) (rate(modelbus_no_such_total{a="b"}[1m]))': {"modelbus_no_such_total"}
    }


def test_the_metric_names_of_a_query_leave_out_functions_labels_and_ranges() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{route!~"a|b"}[5m]))) / on (le) y'
    assert metric_names(expr) == {"x_bucket", "y"}


def test_the_dashboard_reads_the_provisioned_prometheus_datasource() -> None:
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    for panel in load_dashboard()["panels"]:  # type: ignore[attr-defined]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]


_DEFINED = (shared.metrics, services.router.metrics, services.providers.metrics)
"""Imported for their families, defined on import."""
