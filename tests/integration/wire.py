"""Requests sent and answers counted at the wire, with raw nats-py (no bundled client).

Every message that comes back for a request is kept with its arrival time,
after the final answer too, so a second final answer shows up as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import headers as H
from shared.replies import MAX_SILENCE_S
from shared.subjects import CHAT_COMPLETIONS


@dataclass
class Seen:
    """One request and everything that came back for it."""

    request_id: str
    sent_at: float
    stream: bool
    messages: list[tuple[float, Msg]] = field(default_factory=list)

    def finals(self) -> list[tuple[float, Msg]]:
        """The final answers: a non-streamed reply, or a stream's terminator."""
        out = []
        for at, msg in self.messages:
            hdrs = msg.headers or {}
            if hdrs.get(H.KEEPALIVE) == "1":
                continue
            if self.stream and hdrs.get(H.STREAM) != H.STREAM_END:
                continue
            out.append((at, msg))
        return out

    def keepalives(self) -> int:
        return sum(1 for _, m in self.messages if (m.headers or {}).get(H.KEEPALIVE) == "1")

    def chunks(self) -> list[Msg]:
        return [m for _, m in self.messages if H.SEQ in (m.headers or {}) and (m.headers or {}).get(H.STREAM) is None]

    def status(self) -> str | None:
        finals = self.finals()
        return (finals[0][1].headers or {}).get(H.STATUS) if finals else None

    def error_code(self) -> str | None:
        finals = self.finals()
        if not finals:
            return None
        try:
            return str(json.loads(finals[0][1].data)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


class Wire:
    """One raw connection, one wildcard inbox, many requests."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.seen: dict[str, Seen] = {}
        self._arrived = asyncio.Event()

    @classmethod
    async def open(cls, url: str) -> Wire:
        nc = await nats.connect(servers=url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.25)
        wire = cls(nc)
        await nc.subscribe(wire.prefix + ".*", cb=wire._on_msg)
        await nc.flush()
        return wire

    async def _on_msg(self, msg: Msg) -> None:
        seen = self.seen.get(msg.subject.rsplit(".", 1)[-1])
        if seen is not None:
            seen.messages.append((time.monotonic(), msg))
            self._arrived.set()

    async def send(self, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> Seen:
        token = uuid.uuid4().hex
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        stream = isinstance(body, dict) and bool(body.get("stream"))
        seen = Seen(token, time.monotonic(), stream)
        self.seen[token] = seen
        hdrs = {H.REQUEST_ID: token, **(headers or {})}
        await self.nc.publish(CHAT_COMPLETIONS, data, reply=f"{self.prefix}.{token}", headers=hdrs)
        return seen

    async def _until(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return  # the caller asserts on what arrived
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def wait_final(self, seen: Seen, timeout_s: float) -> None:
        """Until ``seen`` has a final answer (or ``timeout_s`` passes: the caller asserts)."""
        await self._until(lambda: bool(seen.finals()), timeout_s)

    async def wait_chunks(self, seen: Seen, n: int, timeout_s: float) -> None:
        """Until ``seen`` has ``n`` stream chunks (or ``timeout_s`` passes)."""
        await self._until(lambda: len(seen.chunks()) >= n, timeout_s)

    async def close(self) -> None:
        await self.nc.close()


def verdict(sent: list[Seen], deadline_s: float) -> dict[str, int]:
    """Each request once: ``ok`` / ``error`` (one final answer), ``duplicated`` (more than one),
    ``lost_silence`` (none, after a silence of ``MAX_SILENCE_S`` that a contract-following client
    turns into ``RequestLost``) or ``never`` (none, and no such silence before its deadline)."""
    out = {"sent": len(sent), "ok": 0, "error": 0, "lost_silence": 0, "never": 0, "duplicated": 0}
    for seen in sent:
        finals = seen.finals()
        if len(finals) > 1:
            out["duplicated"] += 1
        elif len(finals) == 1:
            out["ok" if seen.status() == "200" else "error"] += 1
        else:
            heard = [at for at, _ in seen.messages] or [seen.sent_at]
            edges = [seen.sent_at, *heard, seen.sent_at + deadline_s]
            gaps = [b - a for a, b in itertools.pairwise(edges)]
            out["lost_silence" if max(gaps) >= MAX_SILENCE_S else "never"] += 1
    return out


def describe(seen: Seen, origin: float) -> str:
    """One request's messages as ``+seconds kind key=value ...`` (times from ``origin``), for a failure message."""
    parts = [f"{seen.request_id} sent +{seen.sent_at - origin:.3f}s stream={seen.stream}"]
    shown = (H.STATUS, H.SEQ, H.STREAM, H.ATTEMPTS, H.ENDPOINT, H.ROUTER, H.KEEPALIVE)
    for at, msg in seen.messages:
        hdrs = msg.headers or {}
        fields = " ".join(f"{name.removeprefix('Modelbus-')}={hdrs[name]}" for name in shown if name in hdrs)
        parts.append(f"  +{at - origin:.3f}s {fields} body={msg.data[:80]!r}")
    return "\n".join(parts)


def duplicates(sent: list[Seen], origin: float) -> str:
    """Every request answered more than once, described (empty when none was)."""
    return "\n".join(describe(s, origin) for s in sent if len(s.finals()) > 1)
