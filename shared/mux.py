"""Waiting for replies that come in several messages, and sending signs of life.

:class:`ReplyMux` is one wildcard subscription (``<inbox>.*``) for every reply
a process waits for, like nats-py's own request inbox, but a reply may be many
messages (a worker's heartbeats then its outcome, a stream's chunks), and a
waiter that hears nothing for its ``silence_s`` is woken with :class:`Silence`.
Silence is counted only while this process is connected and its event loop is
running on time: a NATS restart or a stalled loop on *our* side is no evidence
that the other side is gone, so the clocks restart when we are back.

:class:`Beats` sends the messages that keep the other side's clocks from
running out: heartbeats to a router (:data:`shared.headers.HEARTBEAT`) and
keepalives to a client (:data:`shared.headers.KEEPALIVE`), one timer task per
process, none per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import headers as H
from shared.replies import HEARTBEAT_S, KEEPALIVE_HEADERS, KEEPALIVE_S

log = logging.getLogger("modelbus.mux")

TICK_S = HEARTBEAT_S / 2
"""How often silence is checked and signs of life are due."""
STALL_S = 0.3
"""A tick this late means our own loop stalled: every silence clock restarts."""


class Silence(Exception):
    """Nothing arrived for a waiter's ``silence_s`` while we were connected."""


class Waiter:
    """One reply's messages, in order, as they arrive."""

    __slots__ = ("_msgs", "_skip", "_wake", "delivered", "last_heard", "lost", "silence_s", "subject", "token")

    def __init__(self, subject: str, token: str, silence_s: float, now: float, skip: tuple[str, ...]) -> None:
        self.subject = subject
        """The reply subject to send with the request."""
        self.token = token
        self.silence_s = silence_s
        self.last_heard = now
        self.delivered = 0
        """The last count a heartbeat reported (messages the worker delivered to the client)."""
        self.lost = False
        self._msgs: deque[Msg] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._skip = skip

    def restart_clock(self, now: float) -> None:
        """Count silence from ``now`` (a new attempt, or we were away)."""
        self.last_heard = now

    def resume(self, now: float) -> None:
        """The other side proved alive some other way (it answered a question): wait again from ``now``."""
        self.lost = False
        self.last_heard = now

    def _push(self, msg: Msg, now: float) -> None:
        self.last_heard = now
        hdrs = msg.headers
        if hdrs:
            beat = hdrs.get(H.HEARTBEAT)
            if beat is not None:
                if beat.isdigit():
                    self.delivered = max(self.delivered, int(beat))
                return
            for name in self._skip:
                if name in hdrs:
                    return
        self._msgs.append(msg)
        self._poke()

    def _lose(self) -> None:
        self.lost = True
        self._poke()

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def next(self, until: float) -> Msg:
        """The next message; :class:`Silence` if the other side went quiet, ``TimeoutError``
        once the loop's clock passes ``until``."""
        loop = asyncio.get_running_loop()
        while True:
            if self._msgs:
                return self._msgs.popleft()
            if self.lost:
                raise Silence
            left = until - loop.time()
            if left <= 0:
                raise TimeoutError
            wake: asyncio.Future[None] = loop.create_future()
            self._wake = wake
            # A timer that only wakes the future, cheaper than asyncio.timeout (no Timeout object,
            # no task cancellation when it fires); the loop above decides what a wake-up meant.
            timer = loop.call_at(until, _set_done, wake)
            try:
                await wake
            finally:
                timer.cancel()
                self._wake = None


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ReplyMux:
    """Many multi-message replies on one subscription, with silence detection."""

    def __init__(self, nc: Client, *, skip: tuple[str, ...] = ()) -> None:
        """``skip``: header names of messages that only prove life (e.g. keepalives) and are not queued."""
        self._nc = nc
        self._skip = skip
        self._waiters: dict[str, Waiter] = {}
        self._prefix = ""
        self._next = 0
        self._sub: object | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        """Subscribe and start the silence clock."""
        if self._sub is not None:
            return
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._prefix + ".*", cb=self._on_msg, pending_msgs_limit=262_144, pending_bytes_limit=512 * 1024 * 1024
        )
        self._task = asyncio.create_task(self._watch(), name="reply-mux-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None

    def open(self, silence_s: float = math.inf) -> Waiter:
        """A new reply subject and the waiter that gets its messages."""
        self._next += 1
        token = format(self._next, "x")
        waiter = Waiter(f"{self._prefix}.{token}", token, silence_s, asyncio.get_running_loop().time(), self._skip)
        self._waiters[token] = waiter
        return waiter

    def close(self, waiter: Waiter) -> None:
        """Stop listening for ``waiter``'s messages; late ones are dropped."""
        self._waiters.pop(waiter.token, None)

    @property
    def open_count(self) -> int:
        return len(self._waiters)

    async def _on_msg(self, msg: Msg) -> None:
        waiter = self._waiters.get(msg.subject[len(self._prefix) + 1 :])
        if waiter is not None:
            waiter._push(msg, asyncio.get_running_loop().time())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            away = now - last > TICK_S + STALL_S or not self._nc.is_connected
            last = now
            for waiter in list(self._waiters.values()):
                if away:
                    waiter.last_heard = max(waiter.last_heard, now)
                elif not waiter.lost and now - waiter.last_heard > waiter.silence_s:
                    waiter._lose()


class Signal:
    """A request this process holds: where its heartbeats and keepalives go."""

    __slots__ = ("deliver_to", "delivered", "keepalive", "last_client", "last_signal", "reply")

    def __init__(self, reply: str | None, deliver_to: str | None, keepalive: bool, now: float) -> None:
        self.reply = reply
        """The router's reply subject (heartbeats), or ``None``."""
        self.deliver_to = deliver_to
        """The client's reply subject (keepalives), or ``None``."""
        self.keepalive = keepalive
        self.last_signal = now
        """When the router last heard about this call from us (or when it sent it)."""
        self.last_client = now
        """When the client last got a message from us."""
        self.delivered = 0


class Beats:
    """Sends heartbeats and keepalives for the requests in :attr:`held`."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.held: set[Signal] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="beats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            for sig in list(self.held):
                try:
                    await self._due(sig, now)
                except Exception as exc:  # a full buffer while reconnecting: the next tick tries again
                    log.debug("sign of life not sent: %s", exc)

    async def _due(self, sig: Signal, now: float) -> None:
        if sig.reply is not None and now - sig.last_signal >= HEARTBEAT_S:
            sig.last_signal = now
            await self._nc.publish(sig.reply, b"", headers={H.HEARTBEAT: str(sig.delivered)})
        if sig.keepalive and sig.deliver_to is not None and now - sig.last_client >= KEEPALIVE_S:
            sig.last_client = now
            await self._nc.publish(sig.deliver_to, b"", headers=dict(KEEPALIVE_HEADERS))


def keepalive_headers() -> Mapping[str, str]:
    """A fresh copy of the keepalive headers (nats-py may keep the mapping it is given)."""
    return dict(KEEPALIVE_HEADERS)
