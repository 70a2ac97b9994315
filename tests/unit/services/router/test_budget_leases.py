"""Which budgets a router leases a slice of, and how large the slice is (no I/O)."""

from __future__ import annotations

from decimal import Decimal

from services.router.budget_leases import LEASE_MIN_REQUESTS, LEASE_SHARE, Leases, lease_slice
from shared.routing import Budget


def budget(max_tokens: int | None, max_cost: Decimal | None = None) -> Budget:
    return Budget(name="b", scope="agent", period="day", max_tokens=max_tokens, max_cost=max_cost)


def test_a_slice_is_one_share_of_the_limit() -> None:
    assert lease_slice(budget(64_000)) == 64_000 // LEASE_SHARE == 1000


def test_a_token_budget_leases_only_when_a_slice_covers_several_requests() -> None:
    big = budget(LEASE_SHARE * LEASE_MIN_REQUESTS * 100)
    assert Leases.eligible(big, 100)
    assert not Leases.eligible(big, 101)


def test_a_run_budget_of_140_tokens_never_leases() -> None:
    assert not Leases.eligible(budget(140), 5)


def test_a_cost_budget_and_a_budget_without_a_token_limit_never_lease() -> None:
    assert not Leases.eligible(budget(10**12, Decimal("5")), 10)
    assert not Leases.eligible(budget(None, Decimal("5")), 10)
