"""shared.batching: what queues within the linger goes out as one message; failures are counted."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared.batching import LingeringPublisher


class FakeNats:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = fail

    async def publish(self, subject: str, data: bytes) -> None:
        if self.fail:
            raise ConnectionError("connection closed")
        self.sent.append((subject, data))

    async def flush(self, timeout: float = 1) -> None:
        return None


class Lines(LingeringPublisher):
    def __init__(self, nc: Any, batch: int = 3) -> None:
        super().__init__(nc, "records", linger_s=0.005, what="lines", log=logging.getLogger("test"))
        self.queue: list[bytes] = []
        self.batch = batch

    def add(self, item: bytes) -> None:
        self.queue.append(item)
        self._start("lines")
        self._wake_up()

    def _queued(self) -> int:
        return len(self.queue)

    def _full(self) -> bool:
        return len(self.queue) >= self.batch

    def _next_batch(self) -> tuple[bytes, int]:
        taken, self.queue = self.queue[: self.batch], self.queue[self.batch :]
        return b"\n".join(taken), len(taken)


def test_records_queued_together_go_out_as_few_messages_each_counted_once() -> None:
    async def go() -> None:
        nc = FakeNats()
        lines = Lines(nc)
        for i in range(7):
            lines.add(b"r%d" % i)
        await lines.stop()
        assert [data for _, data in nc.sent] == [b"r0\nr1\nr2", b"r3\nr4\nr5", b"r6"]
        assert lines.published == 7 and lines.failed == 0

    asyncio.run(go())


def test_a_failing_publish_counts_its_records_as_failed_and_the_task_goes_on() -> None:
    async def go() -> None:
        nc = FakeNats(fail=True)
        lines = Lines(nc)
        lines.add(b"a")
        lines.add(b"b")
        await asyncio.sleep(0.05)
        assert lines.failed == 2 and lines.published == 0
        nc.fail = False
        lines.add(b"c")
        await lines.stop()
        assert nc.sent == [("records", b"c")] and lines.published == 1

    asyncio.run(go())


def test_stop_without_a_start_does_nothing_and_nothing_runs_before_the_first_record() -> None:
    async def go() -> None:
        lines = Lines(FakeNats())
        assert lines._task is None
        await lines.stop()
        assert lines.published == 0

    asyncio.run(go())
