"""Fewer, larger socket writes under load: a flush policy for a nats-py connection.

nats-py writes a message to its socket on the loop iteration after it was
published, so each request's message is its own ``send`` when requests do
not arrive together. On this VM a loopback send is expensive (it runs the
receiver's side of TCP and wakes the receiver): 33-40 % of the router's and
the provider worker's CPU at 32 requests in flight was that one call, and
nats-server paid again for every small read. :func:`coalesce_writes`
replaces the connection's flusher with one that, **while the process has
more than one request in flight** (the ``busy`` callable the service gives),
lets the loop run up to :data:`YIELDS` more iterations before it writes, so
the messages other requests publish meanwhile go in the same write. With one
request in flight it writes at once, as nats-py does, so a lone request pays
nothing for it.

The policy relies on nats-py internals (its pending buffer, flush queue and
flusher task; checked on 2.16): :func:`coalesce_writes` changes nothing and
returns ``False`` when they are not there, and tests/unit/shared/test_flush.py
fails on a nats-py without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import types
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

log = logging.getLogger("modelbus.flush")

YIELDS = 3
"""Loop iterations a busy connection waits before it writes (measured best of 1, 2 and 3)."""

ENV = "MODELBUS_COALESCE_WRITES"
"""``off`` (or ``0``) keeps nats-py's own flusher, e.g. to measure what the policy does."""

_NEEDS = ("_pending", "_pending_data_size", "_flush_queue", "_flusher_task", "_transport", "_process_op_err")


def coalesce_writes(nc: Client, busy: Callable[[], bool]) -> bool:
    """Install the policy on a connected client; ``False`` (nothing changed) if this nats-py cannot take it
    or :data:`ENV` turns it off."""
    if os.environ.get(ENV, "on").strip().lower() in ("off", "0", "false", "no"):
        return False
    if not all(hasattr(nc, name) for name in _NEEDS) or not nc.is_connected:
        log.debug("write coalescing not installed: this nats-py lacks what it needs, or is not connected")
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    nc._flusher = types.MethodType(_coalescing_flusher(busy), nc)  # type: ignore[method-assign]
    old = nc._flusher_task
    # The flusher nats-py started at connect; it waits on the flush queue, so cancelling it loses nothing.
    # nats-py starts ``self._flusher()`` again after each reconnect, which is now this one.
    if old is not None and not old.done():
        old.cancel()
    nc._flusher_task = loop.create_task(nc._flusher())
    return True


def _coalescing_flusher(busy: Callable[[], bool]) -> Callable[[Client], Any]:
    async def flusher(self: Any) -> None:
        while True:
            if not self.is_connected or self.is_connecting:
                break
            future: asyncio.Future[None] = await self._flush_queue.get()
            if busy():
                for _ in range(YIELDS):
                    await asyncio.sleep(0)  # publishes of other requests join this write
            try:
                if self._pending_data_size > 0:
                    self._transport.writelines(self._pending[:])
                    self._pending = []
                    self._pending_data_size = 0
                    await self._transport.drain()
            except OSError as exc:
                await self._error_cb(exc)
                await self._process_op_err(exc)
                break
            except (asyncio.CancelledError, RuntimeError, AttributeError):
                break  # the connection is closing (as in nats-py's own flusher)
            finally:
                _settle(future)
                while not self._flush_queue.empty():  # asked for while we waited: written above
                    with contextlib.suppress(asyncio.QueueEmpty):
                        _settle(self._flush_queue.get_nowait())

    return flusher


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
