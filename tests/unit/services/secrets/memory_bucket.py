"""An in-memory KV bucket with JetStream's revision semantics, for unit tests of the store and the rotation.

One sequence for the whole bucket, history per key, compare-and-set on a key's
last revision, a rollup that drops the history, and every write sealed for the
sequence it is stored at, as :class:`services.secrets.versioned.VersionedBucket`
does on a real server. A crash switch stops it before a chosen write.
"""

from __future__ import annotations

from collections.abc import Callable

from services.secrets.versioned import Seal, Stored


class Crash(Exception):
    """Stands in for the process dying."""


class MemoryBucket:
    """An in-memory KV bucket with JetStream's revision semantics, and a crash switch."""

    def __init__(self) -> None:
        self.seq = 0
        self.history: dict[str, list[tuple[int, bytes]]] = {}
        self.writes_left: int | None = None  # crash before the write after this many more
        self.before_replace: Callable[[str], None] | None = None

    # -- direct access for the tests

    def put(self, key: str, value: bytes | Seal) -> int:
        """An unconditional write, as a secrets service's put (``value`` sealed for its revision)."""
        self.seq += 1
        self.history.setdefault(key, []).append((self.seq, value if isinstance(value, bytes) else value(self.seq)))
        return self.seq

    def latest(self, key: str) -> bytes:
        return self.history[key][-1][1]

    def stored(self, key: str) -> tuple[bytes, int]:
        revision, value = self.history[key][-1]
        return value, revision

    def snapshot(self) -> dict[str, list[tuple[int, bytes]]]:
        return {k: list(v) for k, v in self.history.items()}

    def _write(self) -> None:
        if self.writes_left is not None:
            if self.writes_left == 0:
                raise Crash
            self.writes_left -= 1

    # -- the Bucket protocol

    async def keys(self) -> list[str]:
        return [k for k, h in self.history.items() if h]

    async def read(self, key: str) -> Stored | None:
        h = self.history.get(key)
        return Stored(value=h[-1][1], revision=h[-1][0]) if h else None

    async def replace(self, key: str, seal: Seal, *, last: int) -> int | None:
        if self.before_replace is not None:
            self.before_replace(key)
        self._write()
        h = self.history.get(key)
        if (h[-1][0] if h else 0) != last:
            return None
        self.seq += 1
        self.history[key] = [(self.seq, seal(self.seq))]  # the rollup drops the history
        return self.seq

    async def create(self, key: str, seal: Seal) -> bool:
        self._write()
        if self.history.get(key):
            return False
        self.put(key, seal)
        return True

    async def write(self, key: str, seal: Seal, *, last: int | None = None, rollup: bool = False) -> int | None:
        self._write()
        h = self.history.get(key)
        if last is not None and (h[-1][0] if h else 0) != last:
            return None
        self.seq += 1
        entry = (self.seq, seal(self.seq))
        self.history[key] = [entry] if rollup else [*(h or []), entry]
        return self.seq

    async def remove(self, key: str) -> None:
        self._write()
        self.history.pop(key, None)
