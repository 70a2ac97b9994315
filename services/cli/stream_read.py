"""Read what a JetStream stream stored in a recent window, as ``admin``: the usage ledger for
``modelbus usage`` and the text records for ``modelbus usage --text``."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

IDLE_S = 0.25
"""How long a read waits for the next message before asking the consumer whether any are left."""


async def stored_since(
    nc: Client, stream: str, subject: str, since_s: float, *, timeout_s: float, missing: str, what: str
) -> AsyncIterator[bytes]:
    """The data of every message ``stream`` stored in the last ``since_s`` seconds (by its storage
    time), oldest first, with an ordered consumer; it ends at the last message the stream held
    when the read began. :class:`LookupError` (``missing``) when there is no such stream,
    :class:`TimeoutError` when the read takes more than ``timeout_s``."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        raise LookupError(missing) from None
    if not info.state.messages:
        return
    start = dt.datetime.fromtimestamp(time.time() - since_s, dt.UTC)
    last = info.state.last_seq
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start),
    )
    give_up = time.monotonic() + timeout_s
    try:
        while time.monotonic() < give_up:
            try:
                msg = await sub.next_msg(timeout=IDLE_S)
            except nats.errors.TimeoutError:
                if (await sub.consumer_info()).num_pending == 0:
                    return
                continue
            yield msg.data
            meta = msg.metadata
            if meta.sequence.stream >= last or meta.num_pending == 0:
                return
        raise TimeoutError(f"reading {what} took more than {timeout_s:g}s")
    finally:
        await sub.unsubscribe()
