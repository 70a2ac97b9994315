"""Following the config log: every service that reads the routing configuration does it this way.

The config service appends one record per revision to the JetStream stream
:data:`shared.subjects.CONFIG_STREAM`, each holding the whole state. A reader
(a router, the HTTP gateway) consumes it with an ordered consumer starting at
the newest record: it gets the current state first and every later revision
after it, with no window in between. An ordered consumer notices gaps in its
own delivery and recreates itself from the right place.

After a reconnect the reader follows afresh from the newest record rather than
wait ~10 s for the ordered consumer to miss its heartbeats (its consumer may
have died with a server), and a stream made anew (a lost store) is followed
afresh too, since its old sequence would miss every new record
(:class:`shared.jetstream.StateKeeper` calls :meth:`ConfigStream.repair`).

JetStream API subjects used, the read permissions of ``router-state`` and
``gateway``: ``$JS.API.STREAM.INFO.<stream>``, ``$JS.API.CONSUMER.CREATE.<stream>[.>]``,
``$JS.API.CONSUMER.DELETE.<stream>.>``, flow-control replies on ``$JS.FC.<stream>.>``,
deliveries on the reader's inbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StreamInfo
from nats.js.errors import NotFoundError

from shared.jetstream import StateKeeper
from shared.subjects import CONFIG_LOG, CONFIG_STREAM

log = logging.getLogger("modelbus.config_stream")


def _created(info: StreamInfo) -> float | None:
    return info.created.timestamp() if info.created is not None else None


async def unsubscribe_quietly(sub: Any) -> None:
    """Unsubscribe, bounded: with the server gone, deleting a consumer would wait for a timeout."""
    try:
        await asyncio.wait_for(sub.unsubscribe(), 1.0)
    except Exception:  # the connection may be closing, or the consumer already gone
        pass


class ConfigStream:
    """One reader's subscription to the config log, kept alive across reconnects and remade streams."""

    def __init__(
        self,
        nc: Client,
        name: str,
        on_record: Callable[[Msg], Awaitable[None]],
        on_remade: Callable[[], None],
    ) -> None:
        """``on_record`` gets each record; ``on_remade`` is called when the stream was made anew,
        before its newest record arrives (the reader then takes that record whatever its revision)."""
        self.nc = nc
        self._on_record = on_record
        self._on_remade = on_remade
        self._sub: Any = None
        self._created: float | None = None
        """When the followed stream was created: another time means it was made anew."""
        self.keeper = StateKeeper(nc, name, self.repair)

    async def look(self) -> None:
        """Note the stream's creation time; raises ``NotFoundError`` while it does not exist."""
        self._created = _created(await self.nc.jetstream().stream_info(CONFIG_STREAM))

    async def follow(self) -> None:
        """(Re)subscribe to the log from its newest record."""
        old, self._sub = self._sub, None
        self._sub = await self.nc.jetstream().subscribe(
            CONFIG_LOG,
            stream=CONFIG_STREAM,
            cb=self._on_record,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST,
        )
        if old is not None:
            await unsubscribe_quietly(old)

    async def repair(self, reason: str) -> None:
        """Follow afresh after a reconnect, or when the stream was made anew."""
        try:
            created = _created(await self.nc.jetstream().stream_info(CONFIG_STREAM))
        except NotFoundError:
            raise RuntimeError(f"config stream {CONFIG_STREAM!r} is missing; waiting for the config service") from None
        if created != self._created:
            log.warning(
                "config stream %s was made anew (%s); following it from its newest record", CONFIG_STREAM, reason
            )
            self._created = created
            self._on_remade()
        elif reason != "reconnected":
            return
        await self.follow()

    async def stop(self) -> None:
        """Stop repairing and unsubscribe."""
        await self.keeper.stop()
        if self._sub is not None:
            await unsubscribe_quietly(self._sub)
            self._sub = None
