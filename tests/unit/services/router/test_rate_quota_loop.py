"""The attempt loop with endpoint quotas: skip a target at its quota, wait within the deadline, or
answer 429 with the computed wait (no network: the attempts and the quota counts are stand-ins)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, cast

import msgspec
import pytest
from opentelemetry.trace import Span

from services.router.breakers import Decision
from services.router.call import Call
from services.router.forward import Forwarder
from services.router.quotas import EndpointQuotas
from services.router.table import ResolvedTarget, Route
from services.router.windows import Ticket
from shared.errors import RateLimited
from shared.mux import Signal
from shared.routing import Endpoint, RoutingDefaults


def target(name: str, rpm: int | None = None) -> ResolvedTarget:
    return ResolvedTarget(
        endpoint=Endpoint(name=name, provider="openai-compatible", rpm=rpm),
        model="m",
        subject="modelbus.test.provider",
        endpoint_raw=msgspec.Raw(b"{}"),
    )


class Quotas:
    """Answers ``take`` from a script per endpoint: ``0`` admits, a number is the wait, ``None`` never fits."""

    def __init__(self, script: dict[str, list[float | None]]) -> None:
        self.script = script
        self.asked: list[str] = []
        self.given_back: list[Ticket] = []

    async def take(self, endpoint: Endpoint, estimate: int) -> tuple[Ticket | None, float | None]:
        self.asked.append(endpoint.name)
        answers = self.script[endpoint.name]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer == 0:
            return Ticket(endpoint.name, 0, estimate, False), 0.0
        return None, answer

    def give_back(self, ticket: Ticket) -> None:
        self.given_back.append(ticket)


class Breakers:
    def __init__(self, cooling: frozenset[str] = frozenset()) -> None:
        self.cooling = cooling
        self.decided: list[str] = []

    def decide(self, key: tuple[str, str]) -> Decision:
        self.decided.append(key[0])
        return Decision("skip", 5.0) if key[0] in self.cooling else Decision("allow")

    async def failure(self, key: tuple[str, str], defaults: RoutingDefaults) -> None:
        raise AssertionError("a target skipped at its quota is no breaker failure")

    async def success(self, key: tuple[str, str]) -> None:
        pass


class Attempts(Forwarder):
    """Every attempt succeeds at once; records which endpoint it went to."""

    sent: list[str]

    async def _attempt(self, call: Call, target: ResolvedTarget, attempt: int, span: Span) -> bool | None:
        self.sent.append(target.endpoint.name)
        return True


def forward(
    plan: list[ResolvedTarget], quotas: Quotas, deadline_s: float = 5.0, breakers: Breakers | None = None
) -> tuple[list[str], Call]:
    async def main() -> tuple[list[str], Call]:
        forwarder = Attempts(
            cast(Any, None),
            stats=cast(Any, None),
            breakers=breakers or Breakers(),
            mux=cast(Any, None),
            beats=cast(Any, None),
            rng=random.Random(1),
            quotas=cast(EndpointQuotas, quotas),
        )
        forwarder.sent = []
        call = Call(
            msg=cast(Any, None),
            reply="_INBOX.test",
            request_id="r-1",
            route=Route("shaped", tuple(plan), "failover"),
            plan=plan,
            deadline=time.monotonic() + deadline_s,
            revision=1,
            defaults=RoutingDefaults(),
            router_id="router",
            signal=Signal(None, "_INBOX.test", False, 0.0),
            tokens_estimate=42,
        )
        await forwarder.forward(call)
        return forwarder.sent, call

    return asyncio.run(main())


def test_a_target_at_its_quota_is_skipped_for_the_next_one() -> None:
    quotas = Quotas({"limited": [30.0]})
    sent, call = forward([target("limited", rpm=5), target("spare")], quotas)
    assert sent == ["spare"]
    assert call.quota_tickets == []  # nothing was taken from the limited endpoint


def test_a_target_under_its_quota_is_used_and_its_ticket_kept() -> None:
    quotas = Quotas({"limited": [0]})
    sent, call = forward([target("limited", rpm=5), target("spare")], quotas)
    assert sent == ["limited"]
    assert call.quota_tickets == [Ticket("limited", 0, 42, False)]


def test_endpoints_without_a_quota_are_never_asked() -> None:
    quotas = Quotas({})
    sent, _ = forward([target("a"), target("b")], quotas)
    assert (sent, quotas.asked) == (["a"], [])


def test_with_every_target_at_its_quota_the_loop_waits_for_the_soonest_within_the_deadline() -> None:
    quotas = Quotas({"a": [0.05, 0], "b": [0.02, 0.01]})
    sent, _ = forward([target("a", rpm=1), target("b", rpm=1)], quotas)
    # First pass: both at quota, b frees up sooner; after the wait, a (first in the plan) has room.
    assert quotas.asked == ["a", "b", "a"]
    assert sent == ["a"]


def test_a_wait_past_the_deadline_is_a_429_with_the_soonest_wait_as_retry_after() -> None:
    quotas = Quotas({"a": [40.0], "b": [25.0]})
    with pytest.raises(RateLimited) as info:
        forward([target("a", rpm=1), target("b", rpm=1)], quotas, deadline_s=2.0)
    err = info.value
    assert (err.http_status, err.code, err.retryable, err.retry_after) == (429, "rate_limited", True, 25.0)
    assert "provider quota" in err.message


def test_a_request_larger_than_every_tpm_quota_is_refused_for_good() -> None:
    quotas = Quotas({"a": [None]})
    with pytest.raises(RateLimited) as info:
        forward([target("a", rpm=1)], quotas)
    assert not info.value.retryable and info.value.retry_after is None


def test_a_target_at_its_quota_never_takes_its_breakers_probe() -> None:
    quotas = Quotas({"limited": [30.0]})
    breakers = Breakers()
    sent, _ = forward([target("limited", rpm=5), target("spare")], quotas, breakers=breakers)
    assert sent == ["spare"]
    assert breakers.decided == ["spare"]  # the limited target's breaker was not asked (no probe handed out)


def test_quota_taken_for_a_target_whose_breaker_is_open_is_given_back() -> None:
    quotas = Quotas({"limited": [0]})
    sent, call = forward([target("limited", rpm=5), target("spare")], quotas, breakers=Breakers(frozenset({"limited"})))
    assert sent == ["spare"]
    assert quotas.given_back == [Ticket("limited", 0, 42, False)]
    assert call.quota_tickets == []
