"""Prometheus metrics: one HTTP endpoint per service process, and the metrics every service shares.

Each process serves its own registry (``prometheus_client``'s default one, with the process
collector) on its own port, started by :func:`start_metrics_server` before the service announces
itself ready; the ready line then names it (``metrics=http://HOST:PORT/metrics``) and
``modelbus up`` lists every one in its own ready line.

=========================== ===================================================================
``MODELBUS_METRICS``        ``off`` (or ``0``, ``false``): no endpoint and no metric work at all
``MODELBUS_METRICS_ADDR``   address to listen on; default ``127.0.0.1`` (loopback)
``MODELBUS_METRICS_PORT``   port; default ``0`` (a free port, named in the ready line)
=========================== ===================================================================

The GenAI metrics follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``,
``gen_ai.server.time_to_first_token``), translated to Prometheus names the way the OTel
Prometheus exporter does (dots to underscores, the unit as a suffix) and with the convention's
bucket boundaries. Everything a request touches is recorded once, where its final answer is known
(:mod:`services.router.metrics`), through label children bound once per label tuple; state that
already exists elsewhere (in-flight counts, breakers, the config revision, budgets) is read at
scrape time by collectors, so it costs requests nothing.

Scrapes run on ``prometheus_client``'s own server thread: the collectors only read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("modelbus.metrics")

METRICS_ENV = "MODELBUS_METRICS"
ADDR_ENV = "MODELBUS_METRICS_ADDR"
PORT_ENV = "MODELBUS_METRICS_PORT"
DEFAULT_ADDR = "127.0.0.1"

# Bucket boundaries the OpenTelemetry GenAI conventions advise.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

GEN_AI_LABELS = ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model", "gen_ai_provider_name")
"""The GenAI attributes as labels (``error_type`` is added to the duration, as the conventions say)."""


def metrics_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether :data:`METRICS_ENV` leaves metrics on (the default)."""
    return (os.environ if env is None else env).get(METRICS_ENV, "").strip().lower() not in ("off", "0", "false")


_url: str | None = None


def start_metrics_server(service: str, env: Mapping[str, str] | None = None) -> str | None:
    """Serve this process's metrics (once), as ``service`` (``modelbus_service_info{service=...}``);
    the URL of the endpoint, or ``None`` when metrics are off."""
    global _url
    env = os.environ if env is None else env
    if not metrics_enabled(env):
        return None
    if _url is None:
        Gauge("modelbus_service_info", "1, labelled with the service this process runs.", ["service"]).labels(
            service
        ).set(1)
        addr = env.get(ADDR_ENV, "").strip() or DEFAULT_ADDR
        port = int(env.get(PORT_ENV, "").strip() or "0")
        server, _thread = start_http_server(port, addr=addr)
        host = f"[{addr}]" if ":" in addr else addr
        _url = f"http://{host}:{server.server_port}/metrics"
    return _url


def metrics_url() -> str | None:
    """The URL :func:`start_metrics_server` serves on, or ``None`` (not started, or off)."""
    return _url


def with_metrics_url(detail: str) -> str:
    """A ready line's detail with `` metrics=URL`` when this process serves metrics."""
    return f"{detail} metrics={_url}" if _url else detail


# ---------------------------------------------------------------- the metrics
# Defined in every process (each exposes the families it uses; the others have no samples).

token_usage = Histogram(
    "gen_ai_client_token_usage",
    "Tokens used per request (OTel gen_ai.client.token.usage), by gen_ai_token_type: "
    "input, output (totals, cached and reasoning tokens included), cache_read, cache_write, reasoning.",
    [*GEN_AI_LABELS, "gen_ai_token_type"],
    buckets=TOKEN_BUCKETS,
)
operation_duration = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Time from the router taking a request to its final answer (OTel gen_ai.client.operation.duration).",
    [*GEN_AI_LABELS, "error_type"],
    buckets=DURATION_BUCKETS,
)
time_to_first_token = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Streams: time from the router taking the request to its first content reaching the client "
    "(OTel gen_ai.server.time_to_first_token).",
    list(GEN_AI_LABELS),
    buckets=TTFT_BUCKETS,
)
requests_total = Counter(
    "modelbus_requests",
    "Requests answered by this router, by final status, alias (route), endpoint and model.",
    ["alias", "endpoint", "model", "status"],
)
retries_total = Counter(
    "modelbus_retries", "Extra attempts on the target of the attempt before (same endpoint/model).", ["alias"]
)
fallbacks_total = Counter("modelbus_fallbacks", "Attempts that moved on to another target.", ["alias"])
overhead_seconds = Histogram(
    "modelbus_overhead_seconds",
    "Modelbus-Overhead-Ms of answers, in seconds, as the service that set it last measured it.",
    ["service"],
    buckets=OVERHEAD_BUCKETS,
)
provider_calls_total = Counter(
    "modelbus_provider_calls",
    "Calls a provider worker made upstream, by outcome status.",
    ["provider", "endpoint", "model", "status"],
)
provider_call_duration = Histogram(
    "modelbus_provider_call_duration_seconds",
    "Provider worker: time of one upstream call (a stream's until its end).",
    ["provider", "endpoint", "model", "status"],
    buckets=DURATION_BUCKETS,
)
http_requests_total = Counter(
    "modelbus_http_requests", "HTTP requests the gateway answered, by route and status.", ["route", "status"]
)
http_request_duration = Histogram(
    "modelbus_http_request_duration_seconds",
    "Gateway: time to the response's headers (a stream's first chunk).",
    ["route"],
    buckets=DURATION_BUCKETS,
)


requests_in_flight = Gauge("modelbus_requests_in_flight", "Requests this process holds right now.")


def in_flight_gauge(read: Callable[[], float]) -> None:
    """``modelbus_requests_in_flight`` is read at scrape time from ``read`` (this process's own count;
    the last one registered wins, as in a process with one service)."""
    requests_in_flight.set_function(read)


# ---------------------------------------------------------------- read at scrape time


class BreakerRow(NamedTuple):
    endpoint: str
    model: str
    state: str
    """``open`` or ``half-open`` (closed breakers are not listed: their state is 0)."""


class BudgetRow(NamedTuple):
    budget: str
    """The budget's name."""
    scope_value: str
    """Whom it counts (the key, agent, namespace or run)."""
    unit: str
    """``tokens`` or ``usd``."""
    spent: float
    limit: float


class RateRow(NamedTuple):
    name: str
    """The rate limit's name, or the endpoint's for a provider quota."""
    scope_value: str
    """Whom a rate limit counts (the key, agent or namespace); ``""`` for an endpoint quota."""
    unit: str
    """``requests`` or ``tokens``."""
    used: float
    """Counted in the present minute, as this router last saw it (leases included)."""
    per_minute: float


class _Scraped(Collector):
    """Families made at scrape time from a registered callable (none registered: nothing)."""

    def __init__(self) -> None:
        self.breakers: Callable[[], Iterable[BreakerRow]] | None = None
        self.budgets: Callable[[], Iterable[BudgetRow]] | None = None
        self.config: Callable[[], tuple[int, float | None]] | None = None
        self.rate_limits: Callable[[], Iterable[RateRow]] | None = None
        self.quotas: Callable[[], Iterable[RateRow]] | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(empty=True)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families(empty=False)

    def _families(self, *, empty: bool) -> Iterator[GaugeMetricFamily]:
        breaker = GaugeMetricFamily(
            "modelbus_breaker_state",
            "Circuit breaker of each target not closed: 1 open, 0.5 half-open (closed ones are absent).",
            labels=["endpoint", "model"],
        )
        spent = GaugeMetricFamily(
            "modelbus_budget_spent",
            "Spend of each budget (settled), in its unit.",
            labels=["budget", "scope_value", "unit"],
        )
        limit = GaugeMetricFamily(
            "modelbus_budget_limit", "Limit of each budget.", labels=["budget", "scope_value", "unit"]
        )
        revision = GaugeMetricFamily("modelbus_config_revision", "The routing config revision this router routes on.")
        lag = GaugeMetricFamily(
            "modelbus_config_propagation_lag_seconds",
            "Time from the config record's publish (JetStream timestamp) to this router's table swap, last swap.",
        )
        rate_used = GaugeMetricFamily(
            "modelbus_rate_limit_used",
            "Requests or tokens counted by each rate limit in the present minute, as this router last saw them.",
            labels=["limit", "scope_value", "unit"],
        )
        rate_max = GaugeMetricFamily(
            "modelbus_rate_limit_per_minute",
            "What each rate limit allows per minute.",
            labels=["limit", "scope_value", "unit"],
        )
        quota_used = GaugeMetricFamily(
            "modelbus_endpoint_quota_used",
            "Requests or tokens sent to each endpoint with a declared quota in the present minute (all routers).",
            labels=["endpoint", "unit"],
        )
        quota_max = GaugeMetricFamily(
            "modelbus_endpoint_quota_per_minute",
            "The provider quota each endpoint declares.",
            labels=["endpoint", "unit"],
        )
        if not empty:
            if self.rate_limits is not None:
                for rate in _read(self.rate_limits):
                    rate_used.add_metric([rate.name, rate.scope_value, rate.unit], rate.used)
                    rate_max.add_metric([rate.name, rate.scope_value, rate.unit], rate.per_minute)
            if self.quotas is not None:
                for quota in _read(self.quotas):
                    quota_used.add_metric([quota.name, quota.unit], quota.used)
                    quota_max.add_metric([quota.name, quota.unit], quota.per_minute)
            if self.breakers is not None:
                for row in _read(self.breakers):
                    breaker.add_metric([row.endpoint, row.model], 1.0 if row.state == "open" else 0.5)
            if self.budgets is not None:
                for budget, scope_value, unit, used, most in _read(self.budgets):
                    spent.add_metric([budget, scope_value, unit], used)
                    limit.add_metric([budget, scope_value, unit], most)
            if self.config is not None:
                got = _read(lambda: [self.config()] if self.config else [])
                if got:
                    rev, seconds = got[0]
                    revision.add_metric([], rev)
                    if seconds is not None:
                        lag.add_metric([], seconds)
        yield from (breaker, spent, limit, revision, lag, rate_used, rate_max, quota_used, quota_max)


T = TypeVar("T")


def _read(source: Callable[[], Iterable[T]]) -> list[T]:
    # The source belongs to the event loop's thread; a dict changing under us while we copy is
    # retried once, anything else is logged and the scrape goes on without these samples.
    for _ in range(2):
        try:
            return list(source())
        except RuntimeError:
            continue
        except Exception:
            log.exception("metrics: a scrape-time source failed")
            return []
    return []


scraped = _Scraped()
REGISTRY.register(scraped)


def register_breakers(source: Callable[[], Iterable[BreakerRow]]) -> None:
    """Breaker states are read from ``source`` at each scrape."""
    scraped.breakers = source


def register_budgets(source: Callable[[], Iterable[BudgetRow]]) -> None:
    """Budget spend and limits are read from ``source`` at each scrape: a callable returning
    :class:`BudgetRow` (or any ``(budget, scope_value, unit, spent, limit)`` tuples) from a snapshot."""
    scraped.budgets = source


def register_rate_limits(
    limits: Callable[[], Iterable[RateRow]], quotas: Callable[[], Iterable[RateRow]] | None = None
) -> None:
    """Rate-limit and endpoint-quota counts are read from these at each scrape (no I/O in them)."""
    scraped.rate_limits = limits
    scraped.quotas = quotas


def register_config(source: Callable[[], tuple[int, float | None]]) -> None:
    """``(revision, propagation lag in seconds or None)`` of this router, read at each scrape."""
    scraped.config = source


def budget_rows(rows: Iterable[tuple[str, str, str, float, float]]) -> list[BudgetRow]:
    """Snapshot rows ``(budget, scope_value, unit, spent, limit)`` as :class:`BudgetRow`\\ s."""
    return [BudgetRow(*row) for row in rows]
