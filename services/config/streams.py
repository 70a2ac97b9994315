"""JetStream helpers the config log and the audit log share: protection and forward scans."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import NotFoundError

log = logging.getLogger("modelbus.config")


class StreamReadError(Exception):
    """A stream did not answer (in time) while being read."""


async def protect(js: JetStreamContext, info: StreamInfo) -> StreamInfo:
    """Turn on ``deny_delete`` and ``deny_purge`` on an existing stream (created before they were set).

    nats-server refuses any later update that would turn them off again, so
    once set they hold against every identity, including this one.
    """
    config = info.config
    if config.deny_delete and config.deny_purge:
        return info
    config.deny_delete = True
    config.deny_purge = True
    updated = await js.update_stream(config)
    log.info("stream %s now refuses message deletes and purges", config.name)
    return updated


async def scan(
    js: JetStreamContext, stream: str, subject: str, start: int, last: int, *, timeout: float = 5.0
) -> AsyncGenerator[tuple[int, bytes], None]:
    """``(sequence, data)`` of every stored message from ``start`` up to ``last``.

    One ordered consumer rather than a request per message; deleted messages
    simply do not arrive, so callers see them as sequence gaps.
    """
    if last < start:
        return
    try:
        # A consumer with nothing to deliver would only time out; ask where the first message is.
        first = await js.get_msg(stream, seq=start, subject=subject, next=True)
    except NotFoundError:
        return
    except nats.errors.TimeoutError as exc:
        raise StreamReadError(f"stream {stream} did not answer") from exc
    if first.seq is None or first.seq > last:
        return
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first.seq),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError as exc:
                raise StreamReadError(f"timed out reading stream {stream}") from exc
            sequence = msg.metadata.sequence.stream
            if sequence > last:
                return
            yield sequence, msg.data
            if sequence >= last or msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
