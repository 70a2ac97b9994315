"""The router's metrics, all taken from a request's :class:`~services.router.ledger.Outcome` once
its final answer is out (the same point the usage ledger records it), so the request path itself
does no metric work.

Label children are bound once per label tuple and cached in a dict keyed by the outcome's own
fields, so a request costs one tuple, one dict lookup and a few ``observe``/``inc`` calls. The
in-flight count, breaker states and the config revision are read at scrape time
(:mod:`shared.metrics`). With ``MODELBUS_METRICS=off`` the router makes no :class:`RouterMetrics`
at all and the request path skips it with one ``is None`` test.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from prometheus_client import Counter, Histogram

from services.router.budgets import BudgetSnapshot
from services.router.ledger import Outcome
from services.router.quotas import QuotaCount
from services.router.ratelimits import LimitCount
from shared import metrics as M

log = logging.getLogger("modelbus.router")

MAX_CACHED = 10_000
"""Label tuples kept bound; past it the cache starts again (the label values are bounded by the
configuration: route, endpoint and model names, statuses)."""


class _Bound(NamedTuple):
    requests: Counter
    duration: Histogram
    ttft: Histogram
    input_tokens: Histogram
    output_tokens: Histogram
    usage: Callable[[str], Histogram]
    """The token histogram of another token type (cache_read, cache_write, reasoning), bound on use."""


def budget_rows(snapshots: Iterable[BudgetSnapshot]) -> list[M.BudgetRow]:
    """The budgets' windows as :class:`shared.metrics.BudgetRow`\\ s: one row per budget, whom it
    counts and unit (tokens, usd) that has a limit, from the newest window of each (windows of one
    period name themselves in order: ``2026-12-07`` before ``2026-12-08``)."""
    newest: dict[tuple[str, str], BudgetSnapshot] = {}
    for s in snapshots:
        kept = newest.get((s.budget, s.scope_value))
        if kept is None or s.window > kept.window:
            newest[(s.budget, s.scope_value)] = s
    rows = []
    for s in newest.values():
        if s.limit_tokens is not None:
            rows.append(M.BudgetRow(s.budget, s.scope_value, "tokens", float(s.spent_tokens), float(s.limit_tokens)))
        if s.limit_cost is not None:
            rows.append(M.BudgetRow(s.budget, s.scope_value, "usd", float(s.spent_cost), float(s.limit_cost)))
    return rows


def rate_rows(limits: Iterable[LimitCount]) -> list[M.RateRow]:
    """Each rate limit's present minute as :class:`shared.metrics.RateRow`\\ s, one per unit it limits."""
    rows = []
    for c in limits:
        if c.rpm is not None:
            rows.append(M.RateRow(c.name, c.value, "requests", float(c.requests), float(c.rpm)))
        if c.tpm is not None:
            rows.append(M.RateRow(c.name, c.value, "tokens", float(c.tokens), float(c.tpm)))
    return rows


def quota_rows(quotas: Iterable[QuotaCount]) -> list[M.RateRow]:
    """Each endpoint quota's present minute as :class:`shared.metrics.RateRow`\\ s."""
    rows = []
    for q in quotas:
        if q.rpm is not None:
            rows.append(M.RateRow(q.endpoint, "", "requests", float(q.requests), float(q.rpm)))
        if q.tpm is not None:
            rows.append(M.RateRow(q.endpoint, "", "tokens", float(q.tokens), float(q.tpm)))
    return rows


_Key = tuple[str | None, str | None, str | None, str | None, int | None, str | None]


class RouterMetrics:
    """Records each answered request; one per router."""

    def __init__(self) -> None:
        self._bound: dict[_Key, _Bound] = {}

    def observe(self, outcome: Outcome, tried: Sequence[str]) -> None:
        """One request's final answer (call once it is out; never raises into the request)."""
        try:
            self._observe(outcome, tried)
        except Exception:  # a metric must never fail a request's ending
            log.exception("metrics: an answer could not be recorded")

    def _observe(self, outcome: Outcome, tried: Sequence[str]) -> None:
        status = outcome.status
        if status is None:
            return
        key = (outcome.route, outcome.endpoint, outcome.provider, outcome.model, status, outcome.error_code)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bind(key)
        bound.requests.inc()
        now = asyncio.get_running_loop().time()
        bound.duration.observe(now - outcome.received)
        if outcome.first_content is not None:
            bound.ttft.observe(outcome.first_content - outcome.received)
        if outcome.usage is not None:
            tokens = outcome.tokens
            if tokens is not None:
                bound.input_tokens.observe(tokens.input_tokens)
                bound.output_tokens.observe(tokens.output_tokens)
                if tokens.cache_read_tokens:
                    bound.usage("cache_read").observe(tokens.cache_read_tokens)
                if tokens.cache_write_tokens:
                    bound.usage("cache_write").observe(tokens.cache_write_tokens)
                if tokens.reasoning_tokens:
                    bound.usage("reasoning").observe(tokens.reasoning_tokens)
        if len(tried) > 1:
            alias = outcome.route or ""
            moved = sum(1 for before, after in itertools.pairwise(tried) if before != after)
            if moved:
                M.fallbacks_total.labels(alias).inc(moved)
            if len(tried) - 1 - moved:
                M.retries_total.labels(alias).inc(len(tried) - 1 - moved)

    def _bind(self, key: _Key) -> _Bound:
        route, endpoint, provider, model, status, error = key
        if len(self._bound) >= MAX_CACHED:
            self._bound.clear()
        alias = route or ""
        gen_ai = ("chat", alias, model or "", provider or "")
        bound = _Bound(
            requests=M.requests_total.labels(alias, endpoint or "", model or "", str(status)),
            duration=M.operation_duration.labels(*gen_ai, "" if status == 200 else (error or str(status))),
            ttft=M.time_to_first_token.labels(*gen_ai),
            input_tokens=M.token_usage.labels(*gen_ai, "input"),
            output_tokens=M.token_usage.labels(*gen_ai, "output"),
            usage=lambda kind: M.token_usage.labels(*gen_ai, kind),
        )
        self._bound[key] = bound
        return bound
