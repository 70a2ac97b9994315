"""Fire-and-forget records published in batches, off the request path.

The usage ledger (``services.router.ledger``) and the text records
(``services.providers.text_record``) both queue what a request leaves behind with
no I/O and no await, and publish it in the background: what queues up within
``linger_s`` of the first item goes out as one core NATS message, so the server
stores one message per few milliseconds rather than one per request, and that
work is off the moments answers go out. Nobody waits for an ack; a publish that
raises loses its batch, which is counted in :attr:`LingeringPublisher.failed` and
logged once per streak of failures.

A subclass owns its queue and says how to cut a batch from it
(:meth:`LingeringPublisher._next_batch`); this class owns the task, the linger,
the counting and the bounded drain at stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod

from nats.aio.client import Client


class LingeringPublisher(ABC):
    """Publishes a subclass's queue to ``subject`` in batches, in one background task."""

    def __init__(self, nc: Client, subject: str, *, linger_s: float, what: str, log: logging.Logger) -> None:
        self.nc = nc
        self.subject = subject
        self.linger_s = linger_s
        self.what = what
        """What the records are, for log lines (``usage ledger``, ``text records``)."""
        self.log = log
        self.published = 0
        """Records published (each counted once; a batch holds several)."""
        self.failed = 0
        """Records that could not be made, or whose publish raised (lost)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ what a subclass gives

    @abstractmethod
    def _queued(self) -> int:
        """How many records wait (0: nothing to publish)."""

    @abstractmethod
    def _next_batch(self) -> tuple[bytes, int] | None:
        """The next message and how many records it holds, taken off the queue; ``None`` when what
        was taken held nothing publishable (its records are counted in :attr:`failed` already)."""

    def _full(self) -> bool:
        """Whether the queue already holds a whole batch, so lingering would only delay it."""
        return False

    # ------------------------------------------------------------ the task

    def _start(self, name: str) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._publish_queued(), name=name)

    def _wake_up(self) -> None:
        self._wake.set()

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Publish what is queued (bounded by ``timeout_s``), then stop; what is left is lost."""
        task, self._task = self._task, None
        if task is None:
            return
        deadline = time.monotonic() + timeout_s
        while self._queued() and time.monotonic() < deadline and not task.done():
            self._wake.set()
            await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        try:
            await self.nc.flush(timeout=max(1, round(deadline - time.monotonic())))
        except Exception:  # the connection is going away: what is unsent is lost
            pass

    async def _publish_queued(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            if not self._full():
                await asyncio.sleep(self.linger_s)
            self._wake.clear()
            while self._queued():
                batch = self._next_batch()
                if batch is None:
                    continue
                data, count = batch
                try:
                    await self.nc.publish(self.subject, data)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failed += count
                    if not failing:  # once per streak of failures
                        self.log.warning("%s: records not published (%d so far): %s", self.what, self.failed, exc)
                    failing = True
                else:
                    self.published += count
                    failing = False
                await asyncio.sleep(0)  # answers in flight go first
