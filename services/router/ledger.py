"""The router's side of the usage ledger: one record per final answer, off the hot path.

The request path fills in an :class:`Outcome` as it goes (which attempt answered,
with what status and usage, when the first content went out). Once the answer
is out, :meth:`UsageLedger.record` turns it into a :class:`shared.usage.UsageRecord`
with the next sequence number and puts its bytes in a bounded queue: no I/O, no
await. A background task publishes the queue to :data:`shared.subjects.USAGE_RECORDS`
with core NATS publishes on the state connection (JetStream stores them; nobody
waits for an ack), so recording can neither delay an answer nor fail a request.
What queues up within 5 ms goes out together, one record per line
(:func:`shared.usage.decode_records`), so the server stores far fewer messages
than there are requests.

What can go wrong, and how it shows: the queue full (the connection down for a
long while) drops the record, the publish failing loses it; both are counted
(:attr:`UsageLedger.dropped`, :attr:`UsageLedger.failed`) and leave a gap in
this router's sequence that ``modelbus usage`` reports. A stream that does not
exist (yet) stores nothing; the records are gaps as well.

Cost. The record's ``cost`` is the answering attempt's tokens priced at the price
that applies to its endpoint and model in the table the request was served with
(a run's pinned revision included; :class:`shared.pricing.PriceTable`, a dict lookup
remembered per table, and integer arithmetic), as an exact decimal string
(:func:`cost_of_outcome` has the rules for errors, requests without usage, and token counts).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from nats.aio.client import Client

from services.router.table import RoutingTable
from shared import headers as H
from shared.batching import LingeringPublisher
from shared.errors import error_from_wire
from shared.subjects import USAGE_RECORDS
from shared.usage import (
    GATEWAY_CALLER,
    TokenCounts,
    UsageRecord,
    caller_of,
    namespace_of,
    parse_usage_header,
    usage_record_encoder,
)

log = logging.getLogger("modelbus.router")

LEDGER_ENV = "MODELBUS_USAGE_LEDGER"
"""``off`` stops this router recording usage (for measuring its cost); anything else: on."""
LINGER_S = 0.005
"""How long the first queued record waits for others to go out with it."""
MAX_BATCH = 128
"""Most records in one message (about 55 kB; JetStream's default limit is 1 MB)."""
MAX_QUEUED = 50_000
"""Records held while they cannot be published (about 20 MB); beyond it new ones are dropped."""


def ledger_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether :data:`LEDGER_ENV` leaves the ledger on (the default)."""
    return (os.environ if env is None else env).get(LEDGER_ENV, "").strip().lower() not in ("off", "0", "false")


@dataclass(slots=True)
class Outcome:
    """What one request's final answer was, filled in along the request path."""

    received: float
    """``loop.time()`` when the router took the request."""
    stream: bool = False
    status: int | None = None
    """Status of the final answer; ``None`` until it is known."""
    error_code: str | None = None
    route: str | None = None
    model_requested: str | None = None
    endpoint: str | None = None
    provider: str | None = None
    model: str | None = None
    attempts: int = 0
    usage: str | None = None
    """``Modelbus-Usage`` of the answer."""
    _tokens: TokenCounts | None = field(default=None, repr=False)
    _tokens_of: str | None = field(default=None, repr=False)
    first_content: float | None = None
    """``loop.time()`` when a stream's first content reached the client (``Modelbus-Committed``)."""
    table: RoutingTable | None = None
    """The table the request was served with (its prices cost the answer)."""
    operation: str | None = None
    """``Modelbus-Operation`` of a request that is not a completion (``count_tokens``)."""

    def answered(self, status: int, code: str | None = None) -> None:
        """The final answer's status (and error code), unless one is already set."""
        if self.status is None:
            self.status = status
            self.error_code = code

    def delivered(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """A provider's answer: its status, usage, provider and model (and an error's code)."""
        self.answered(status, error_from_wire(status, body).code if status != 200 and body else None)
        self.usage = headers.get(H.USAGE)
        self.provider = headers.get(H.PROVIDER, self.provider)
        self.model = headers.get(H.MODEL, self.model)

    @property
    def tokens(self) -> TokenCounts | None:
        """:attr:`usage` read (:func:`shared.usage.parse_usage_header`) once for the ledger, the
        metrics, budgets and rate limits; ``None`` when the answer reported none (or it was malformed)."""
        if self._tokens_of is not self.usage:
            self._tokens = parse_usage_header(self.usage)
            self._tokens_of = self.usage
        return self._tokens

    def committed(self, now: float) -> None:
        """The stream's first content is out (only the first notice counts)."""
        if self.first_content is None:
            self.first_content = now


def cost_of_outcome(outcome: Outcome, tokens: TokenCounts | None) -> tuple[str | None, str | None]:
    """``(cost, currency)`` of one answer: the cost as an exact decimal string, ``None`` if unknown.

    * No upstream attempt was made (no route, policy, budget, a bad request) or the request
      only counted tokens: ``"0"`` with no currency; nothing was billed.
    * No price applies to the endpoint and model that answered (or the table is unknown):
      ``None``, unknown, never 0.
    * The provider reported usage: every token kind at its own rate plus ``per_request``
      (:func:`shared.pricing.cost_of`, in integers by :meth:`PriceTable.cost_text`), whatever
      the status (a stream broken after its usage was billed costs what it used).
    * No usage reported: an error answer costs ``"0"`` (providers bill no tokens, and
      ``per_request`` is charged only with usage); a success is ``None``, since its tokens are
      not known and 0 would under-count.

    Only the answering attempt is priced: earlier attempts that failed over reported no usage.
    """
    if outcome.operation is not None or outcome.endpoint is None:
        return "0", None
    table, provider, model = outcome.table, outcome.provider, outcome.model
    if table is None or not provider or not model:
        return None, None
    prices = table.prices
    price = prices.lookup(outcome.endpoint, provider, model)
    if price is None:
        return None, None
    if tokens is None:
        return ("0", price.currency) if outcome.status != 200 else (None, None)
    return prices.cost_text(price, tokens), price.currency  # == shared.pricing.cost_of, in integers


class UsageLedger(LingeringPublisher):
    """Numbers, queues and publishes this router's usage records."""

    def __init__(self, nc: Client, router_id: str, *, enabled: bool = True, max_queued: int = MAX_QUEUED) -> None:
        super().__init__(nc, USAGE_RECORDS, linger_s=LINGER_S, what="usage ledger", log=log)
        self.router_id = router_id
        self.enabled = enabled
        self.seq = 0
        """Number of the last record made (published or not)."""
        self.dropped = 0
        """Records dropped because the queue was full (lost: a gap)."""
        self._queue: collections.deque[bytes] = collections.deque()
        self._max_queued = max_queued

    def start(self) -> None:
        """Start publishing in the background."""
        if self.enabled:
            self._start("usage-ledger")

    def record(self, outcome: Outcome, *, request_id: str, reply: str, headers: Mapping[str, str]) -> None:
        """Queue the record of one answered request (call after the answer went out; never raises).

        A request with no final answer (cancelled while the router stopped) has no record."""
        if not self.enabled or outcome.status is None:
            return
        try:
            data = self._encode(outcome, request_id, reply, headers)
        except Exception:
            log.exception("usage record of request %s could not be made", request_id)
            self.failed += 1
            return
        if len(self._queue) >= self._max_queued:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("usage ledger: %d record(s) dropped (not publishable for a while)", self.dropped)
            return
        self._queue.append(data)
        self._wake_up()

    def _encode(self, outcome: Outcome, request_id: str, reply: str, headers: Mapping[str, str]) -> bytes:
        self.seq += 1
        now = asyncio.get_running_loop().time()
        caller = caller_of(reply)
        agent = headers.get(H.AGENT)
        tokens = outcome.tokens
        cost, currency = cost_of_outcome(outcome, tokens)
        first = outcome.first_content
        return usage_record_encoder.encode(
            UsageRecord(
                request_id=request_id,
                time_ms=int(time.time() * 1000),
                router=self.router_id,
                seq=self.seq,
                status=outcome.status or 500,
                error_code=outcome.error_code,
                caller=caller,
                key=headers.get(H.KEY) if caller == GATEWAY_CALLER else None,
                agent=agent,
                namespace=namespace_of(agent),
                run_id=headers.get(H.RUN_ID),
                route=outcome.route,
                model_requested=outcome.model_requested,
                endpoint=outcome.endpoint,
                provider=outcome.provider,
                model=outcome.model,
                attempts=outcome.attempts,
                stream=outcome.stream,
                usage_reported=tokens is not None,
                input_tokens=tokens.input_tokens if tokens else 0,
                output_tokens=tokens.output_tokens if tokens else 0,
                cache_read_tokens=tokens.cache_read_tokens if tokens else 0,
                cache_write_tokens=tokens.cache_write_tokens if tokens else 0,
                reasoning_tokens=tokens.reasoning_tokens if tokens else 0,
                latency_ms=round((now - outcome.received) * 1000, 3),
                ttft_ms=round((first - outcome.received) * 1000, 3) if first is not None else None,
                cost=cost,
                currency=currency,
            )
        )

    def _queued(self) -> int:
        return len(self._queue)

    def _full(self) -> bool:
        return len(self._queue) >= MAX_BATCH

    def _next_batch(self) -> tuple[bytes, int]:
        # One record per line, at most MAX_BATCH (shared.usage.decode_records reads them).
        count = min(len(self._queue), MAX_BATCH)
        return b"\n".join([self._queue.popleft() for _ in range(count)]), count
