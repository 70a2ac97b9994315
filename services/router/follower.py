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
followed afresh too. Both are :class:`shared.config_stream.ConfigStream`'s, which
the HTTP gateway uses as well.

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

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from services.router.table import RoutingTable
from shared.admin import BreakerState, RouterStatus, RoutingRecord, TargetHealth, admin_encoder
from shared.bus import ReplyGuard
from shared.config_stream import ConfigStream, unsubscribe_quietly
from shared.subjects import CONFIG_STREAM, ROUTER_REVISIONS, ROUTER_STATUS

log = logging.getLogger("modelbus.router")

KEEP_TABLES = 64
"""Tables kept in memory by revision, for pinned runs."""

_record_decoder = msgspec.json.Decoder(RoutingRecord)


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
        self._restart = False
        """The stream was made anew: install its next record whatever its revision."""
        self.swap_lag_s: float | None = None
        """Seconds from the last installed record's publish (its JetStream timestamp) to the swap."""
        self.stream = ConfigStream(self.state_nc, "config follower", self._on_record, self._remade)
        self.keeper = self.stream.keeper
        """Re-follows the config stream after reconnects and when it was made anew."""

    async def start(self, timeout_s: float) -> None:
        """Subscribe to status requests and the config log; wait for the first table."""
        self._subs.append(await self.nc.subscribe(ROUTER_STATUS, cb=self._answer_status))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await self.stream.look()
                break
            except NotFoundError:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"config stream {CONFIG_STREAM!r} does not exist after {timeout_s}s; "
                        "is the config service running?"
                    ) from None
                await asyncio.sleep(0.1)
        await self.stream.follow()
        left = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._first.wait(), max(left, 0.1))
        except TimeoutError:
            raise RuntimeError(
                f"no configuration revision after {timeout_s}s; is the config service running?"
            ) from None
        self.keeper.start()

    def _remade(self) -> None:
        self._restart = True
        self._tables.clear()

    async def stop(self) -> None:
        await self.stream.stop()
        for sub in self._subs:
            await unsubscribe_quietly(sub)

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
            self.swap_lag_s = _lag_s(msg)
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


def _lag_s(msg: Msg) -> float | None:
    """Wall-clock seconds since the server stored ``msg`` (the config service's publish), or ``None``."""
    try:
        stamp = msg.metadata.timestamp
    except Exception:  # not a JetStream message (a test's), or no metadata
        return None
    return max(0.0, dt.datetime.now(dt.UTC).timestamp() - stamp.timestamp())
