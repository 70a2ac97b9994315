"""Which budgets apply to a request, with what scope value, and what the request reserves.

Pure functions of the request (headers, reply inbox, what :func:`services.router.filters.needs_of`
estimated) and the table's budgets: no I/O, so :mod:`services.router.budgets` calls them
on the request path only when a budget exists at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from services.router.filters import Needs
from shared import headers as H
from shared.errors import InvalidRequest
from shared.routing import Budget, Policy, Price
from shared.usage import GATEWAY_CALLER, caller_of, namespace_of


def scope_value(budget: Budget, headers: Mapping[str, str], reply: str) -> str | None:
    """The value of ``budget``'s scope for one request, or ``None`` when it has none."""
    scope = budget.scope
    if scope == "run":
        run_id = headers.get(H.RUN_ID)
        if run_id == "":
            raise InvalidRequest(f"{H.RUN_ID} must not be empty", param=H.RUN_ID)
        return run_id
    if scope == "agent":
        return headers.get(H.AGENT)
    if scope == "namespace":
        return namespace_of(headers.get(H.AGENT))
    caller = caller_of(reply)
    if caller == GATEWAY_CALLER:
        return headers.get(H.KEY) or caller
    return caller


def applying(
    budgets: Sequence[Budget], policies: Sequence[Policy], headers: Mapping[str, str], reply: str
) -> list[tuple[Budget, str | None]]:
    """The budgets that apply to one request, with its scope value (``None``: a run-scoped
    budget and a request without ``Modelbus-Run-Id``, which is a run of its own)."""
    out: list[tuple[Budget, str | None]] = []
    names: set[str] | None = None
    for budget in budgets:
        if budget.policy is not None:
            if names is None:
                names = {p.name for p in policies}
            if budget.policy not in names:
                continue
        value = scope_value(budget, headers, reply)
        if budget.match is not None and value != budget.match:
            continue
        if value is None and budget.scope != "run":
            continue
        out.append((budget, value))
    return out


def reserved_tokens(budget: Budget, needs: Needs) -> int:
    """What a request reserves of ``budget``: its prompt estimate plus its ``max_tokens`` (or the
    budget's ``estimate_tokens`` when it set none)."""
    output = needs.output_tokens if needs.output_tokens is not None else budget.estimate_tokens
    return needs.prompt_tokens + output


def upper_cost(price: Price, prompt_tokens: int, output_tokens: int) -> Decimal:
    """The most ``prompt_tokens`` in and ``output_tokens`` out can cost at ``price`` (each at the
    dearest rate of its side: input, cache read or write; output or reasoning)."""
    per_in = max(price.input, price.cache_read, price.cache_write)
    per_out = max(price.output, price.reasoning)
    return (per_in * prompt_tokens + per_out * output_tokens).scaleb(-6) + price.per_request
