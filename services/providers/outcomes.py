"""What a provider worker last told each router about its calls, for a router that missed it.

A router that hears nothing about an attempt for
:data:`~shared.replies.LOST_AFTER_S` cannot tell a dead worker from messages
that never reached it: its own connection may have dropped while the worker's
outcome was on its way (the outcome went to a subscription that did not exist
for that moment), or the NATS node between them died. Trying again at once
answers the client a second time whenever the worker had already answered it.
So before it gives an attempt up, the router asks every worker of the type on
:func:`~shared.subjects.provider_outcome_subject`, the body being the
attempt's reply subject. The worker that holds the attempt answers; the others
say nothing, and a router that hears no answer within
:data:`~shared.replies.ASK_S` takes the worker for lost, as before.

* **In flight**: a heartbeat (``Modelbus-Heartbeat: <delivered>``, plus
  ``Modelbus-Committed`` once a stream has begun): the router keeps waiting.
* **Ended**: the message the worker sent the router at the end, again (the
  outcome with ``Modelbus-Delivered``, a fenced completion to relay, an error).

Of an ended call only its last message is kept (body and headers, the objects
already sent), for :data:`KEEP_S` to :data:`2 x KEEP_S <KEEP_S>` in two
generations that rotate (no timer, no per-entry clock), and at most
:data:`MAX_KEPT` per generation, so a worker's memory stays bounded at any
rate: about 10 MB at the cap, against ~60 MB more when whole deliveries were
kept (bus-only load, 128 in flight: 62.6 → 125.7 MB).
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.providers.delivery import Delivery
from shared import headers as H
from shared.bus import ReplyGuard
from shared.subjects import provider_outcome_subject

log = logging.getLogger("modelbus.providers")

KEEP_S = 3.0
"""How long an ended call's outcome is kept at least. A router asks after one
:data:`~shared.replies.LOST_AFTER_S` of silence counted from when it is back
on the bus, so this covers a router that was off the bus for up to ~2 s."""
MAX_KEPT = 16_384
"""Ended calls per generation; a busier worker rotates sooner (its retention then shrinks
below :data:`KEEP_S`: at 5,000 calls a second, to about 3.3 s)."""

Outcome = tuple[bytes, dict[str, str]]
"""The last message of an ended call to its router: body and headers."""


class Outcomes:
    """Calls in flight and recently ended, by the router's reply subject, and the answers to questions about them."""

    def __init__(self, nc: Client, types: list[str], guard: ReplyGuard) -> None:
        self._nc = nc
        self._types = types
        self._guard = guard
        self._inflight: dict[str, Delivery] = {}
        self._current: dict[str, Outcome] = {}
        self._previous: dict[str, Outcome] = {}
        self._rotated = 0.0
        self._subs: list[Subscription] = []
        self.answered = 0
        """Questions answered (each one an attempt a router would otherwise have given up)."""

    async def start(self) -> None:
        self._rotated = asyncio.get_running_loop().time()
        for t in self._types:
            self._subs.append(await self._nc.subscribe(provider_outcome_subject(t), cb=self._on_question))

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection is going away anyway
                pass
        self._subs.clear()

    def begin(self, d: Delivery) -> None:
        """A call has started."""
        self._inflight[d.reply] = d

    def end(self, d: Delivery) -> None:
        """A call has ended; its last message to the router is its outcome."""
        d.done = True
        self._inflight.pop(d.reply, None)
        if d.last is None:
            return  # nothing was sent to the router: nothing to send again
        now = asyncio.get_running_loop().time()
        if now - self._rotated >= KEEP_S or len(self._current) >= MAX_KEPT:
            self._previous = self._current
            self._current = {}
            self._rotated = now
        self._current[d.reply] = d.last

    @property
    def kept(self) -> int:
        """Ended calls whose outcome is held now."""
        return len(self._current) + len(self._previous)

    def find(self, reply: str) -> Delivery | Outcome | None:
        """The call in flight, or the outcome of the ended one, or ``None``."""
        return self._inflight.get(reply) or self._current.get(reply) or self._previous.get(reply)

    async def _on_question(self, msg: Msg) -> None:
        if not self._guard.allows(msg.reply):
            self._guard.refuse(msg.subject, msg.reply)
            return
        try:
            asked = msg.data.decode("ascii")
        except UnicodeDecodeError:
            return
        found = self.find(asked)
        if found is None:
            return  # another worker's call (or one forgotten long ago): whoever holds it answers
        if isinstance(found, Delivery):
            hdrs = {H.HEARTBEAT: str(found.signal.delivered)}
            if found.last is not None and H.COMMITTED in found.last[1]:
                hdrs[H.COMMITTED] = found.last[1][H.COMMITTED]
            await self._nc.publish(msg.reply, b"", headers=hdrs)
        else:
            data, sent = found
            await self._nc.publish(msg.reply, data, headers=dict(sent))
        self.answered += 1
