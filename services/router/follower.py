"""Follow the config log and keep the router's routing tables.

The router consumes the config stream with an ordered consumer starting at the
last message: it gets the current state first and every later revision after
it, with no window in between. An ordered consumer detects gaps in its own
delivery and recreates itself from the right place, so a lost message or a
reconnect cannot leave the router behind without it noticing; and since each
record holds the whole state, catching up is taking the newest record.

After a reconnect the router follows the stream afresh from its newest record
rather than wait ~10 s for the ordered consumer to miss its heartbeats (its
consumer may have died with a server); a stream made anew (a lost store) is
followed afresh too (:class:`shared.jetstream.StateKeeper`).

Recent tables are kept by revision so a pinned run (``Modelbus-Run-Id``) can
keep using the revision its first request was routed at; older ones are read
back from the stream on demand.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StreamInfo
from nats.js.errors import NotFoundError

from services.router.table import RoutingTable
from shared.admin import BreakerState, RouterStatus, RoutingRecord, TargetHealth, admin_encoder
from shared.bus import ReplyGuard
from shared.jetstream import StateKeeper
from shared.subjects import CONFIG_LOG, CONFIG_STREAM, ROUTER_REVISIONS, ROUTER_STATUS

log = logging.getLogger("modelbus.router")

KEEP_TABLES = 64
"""Tables kept in memory by revision, for pinned runs."""

_record_decoder = msgspec.json.Decoder(RoutingRecord)


def _created(info: StreamInfo) -> float | None:
    return info.created.timestamp() if info.created is not None else None


async def _unsubscribe(sub: Any) -> None:
    try:
        # Bounded: with the server gone, deleting the consumer would wait for a timeout.
        await asyncio.wait_for(sub.unsubscribe(), 1.0)
    except Exception:  # the connection may be closing, or the consumer already gone
        pass


class TableFollower:
    """Owns the current table and the recent ones; announces every install."""

    def __init__(
        self,
        nc: Client,
        router_id: str,
        in_flight: Callable[[], int],
        *,
        health: Callable[[], tuple[list[TargetHealth], list[BreakerState]]] | None = None,
        state_nc: Client | None = None,
    ) -> None:
        """``nc`` answers status requests; ``state_nc`` (default ``nc``) reads the config
        stream and announces revisions (the router's state identity, see shared.identities)."""
        self._health = health
        self.nc = nc
        self.state_nc = state_nc or nc
        # Only the config service asks for status (scatter/gather from its inbox).
        self._status_guard = ReplyGuard("router", ("_INBOX_config",))
        self.router_id = router_id
        self.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.current: RoutingTable | None = None
        self._in_flight = in_flight
        self._tables: OrderedDict[int, RoutingTable] = OrderedDict()
        self._first = asyncio.Event()
        self._subs: list[object] = []
        self._log_sub: Any = None
        self._created: float | None = None
        """When the followed config stream was created: another time means it was made anew."""
        self._restart = False
        """The stream was made anew: install its next record whatever its revision."""
        self.keeper = StateKeeper(self.state_nc, "config follower", self._repair)
        """Re-follows the config stream after reconnects and when it was made anew."""

    async def start(self, timeout_s: float) -> None:
        """Subscribe to status requests and the config log; wait for the first table."""
        self._subs.append(await self.nc.subscribe(ROUTER_STATUS, cb=self._answer_status))
        js = self.state_nc.jetstream()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                self._created = _created(await js.stream_info(CONFIG_STREAM))
                break
            except NotFoundError:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"config stream {CONFIG_STREAM!r} does not exist after {timeout_s}s; "
                        "is the config service running?"
                    ) from None
                await asyncio.sleep(0.1)
        await self._follow()
        left = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._first.wait(), max(left, 0.1))
        except TimeoutError:
            raise RuntimeError(
                f"no configuration revision after {timeout_s}s; is the config service running?"
            ) from None
        self.keeper.start()

    async def _follow(self) -> None:
        """(Re)subscribe to the config log from its newest record: each holds the whole state, so
        the newest is all a router needs to catch up, and every later one follows."""
        old, self._log_sub = self._log_sub, None
        self._log_sub = await self.state_nc.jetstream().subscribe(
            CONFIG_LOG,
            stream=CONFIG_STREAM,
            cb=self._on_record,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST,
        )
        if old is not None:
            await _unsubscribe(old)

    async def _repair(self, reason: str) -> None:
        """After a reconnect the ordered consumer may have died with its server (nats-py would notice
        only after missing heartbeats, ~10 s): follow afresh. A config stream made anew (a lost
        store) would be followed from its old sequence and every new record missed: follow afresh."""
        try:
            created = _created(await self.state_nc.jetstream().stream_info(CONFIG_STREAM))
        except NotFoundError:
            raise RuntimeError(f"config stream {CONFIG_STREAM!r} is missing; waiting for the config service") from None
        if created != self._created:
            log.warning(
                "config stream %s was made anew (%s); following it from its newest record", CONFIG_STREAM, reason
            )
            self._created, self._restart = created, True
            self._tables.clear()
        elif reason != "reconnected":
            return
        await self._follow()

    async def stop(self) -> None:
        await self.keeper.stop()
        for sub in [*self._subs, self._log_sub]:
            if sub is not None:
                await _unsubscribe(sub)
        self._log_sub = None

    def status(self, *, detailed: bool = False) -> RouterStatus:
        """Revision and load; with ``detailed``, per-target health and open breakers too."""
        table = self.current
        targets, breakers = self._health() if (detailed and self._health) else ([], [])
        return RouterStatus(
            router_id=self.router_id,
            revision=table.revision if table else 0,
            config_hash=table.config_hash if table else "",
            in_flight=self._in_flight(),
            started_at=self.started_at,
            targets=targets,
            breakers=breakers,
        )

    async def _answer_status(self, msg: Msg) -> None:
        if not msg.reply:
            return
        if not self._status_guard.allows(msg.reply):
            self._status_guard.refuse(ROUTER_STATUS, msg.reply)
            return
        await self.nc.publish(msg.reply, admin_encoder.encode(self.status(detailed=True)))

    async def _on_record(self, msg: Msg) -> None:
        try:
            record = _record_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            log.exception("ignoring an unreadable config record")
            return
        table = RoutingTable(record.routing)
        self._remember(table)
        if self.current is None or table.revision > self.current.revision or self._restart:
            self._restart = False
            self.current = table  # the swap: one assignment, no lock on the hot path
            self._first.set()
            log.info("routing table at revision %d (%d aliases)", table.revision, len(table.alias_names))
            await self.state_nc.publish(ROUTER_REVISIONS, admin_encoder.encode(self.status()))

    def _remember(self, table: RoutingTable) -> None:
        self._tables[table.revision] = table
        self._tables.move_to_end(table.revision)
        while len(self._tables) > KEEP_TABLES:
            self._tables.popitem(last=False)

    async def table_at(self, revision: int) -> RoutingTable | None:
        """The table of an older revision, from memory or the config stream."""
        table = self._tables.get(revision)
        if table is not None:
            return table
        try:
            msg = await self.state_nc.jetstream().get_msg(CONFIG_STREAM, seq=revision)
        except NotFoundError:
            return None
        table = RoutingTable(_record_decoder.decode(msg.data or b"").routing)
        self._remember(table)
        return table
