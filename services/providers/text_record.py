"""The provider worker's side of the opt-in text records (:mod:`shared.usage_text`).

A call the router marked ``Modelbus-Record-Text: 1`` gets a :class:`TextCapture` on its
delivery: it keeps a reference to the request body, the answer's body as it goes to the
client (:meth:`TextCapture.sent`) and, for a stream, the text of each chunk
(:meth:`TextCapture.chunks`, an attribute read per chunk). Once the answer is out the worker
hands it to :class:`TextRecorder`, which queues it (bounded; no I/O, no await) and builds,
encodes and publishes the record in a background task, with core NATS publishes that nobody
waits on. A call without the mark has no capture: nothing of this runs.

Losses. A full queue (the connection down for a while) drops the record; a publish that
fails loses it. Both are counted (:attr:`TextRecorder.dropped`, :attr:`TextRecorder.failed`)
and logged, never raised: the text record never delays or fails an answer.

One per request: a call records only when the client got its answer from this worker (a
completion, or a stream that reached its first content). An attempt that failed before that
records nothing, so a request that failed over has the record of the attempt that answered.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client

from shared import headers as H
from shared.batching import LingeringPublisher
from shared.chat import ChatCompletionChunk
from shared.subjects import USAGE_TEXT
from shared.usage_text import (
    MAX_BATCH_BYTES,
    NO_COMPLETION,
    TEXT_RECORD_CAP,
    TextRecord,
    encode_text_record,
    join_text_records,
)

log = logging.getLogger("modelbus.providers")

MAX_QUEUED_BYTES = 64 << 20
"""Most bytes of captures waiting to be published; beyond it new records are dropped (counted)."""
LINGER_S = 0.005
"""How long the first queued record waits for others to go out with it (as the usage ledger)."""


@dataclass(slots=True)
class TextCapture:
    """What one marked call sent, kept until the answer is out."""

    request_id: str
    request: bytes
    agent: str | None
    run_id: str | None
    endpoint: str
    provider: str
    model: str
    stream: bool
    format: str | None
    answer: bytes | None = None
    """Not streamed: the body the client got. Streamed: the error envelope it ended with, if any."""
    status: int | None = None
    delivered: int = 0
    """Messages the client got from this worker (nothing delivered: no record)."""
    pieces: list[str] = field(default_factory=list)
    text_chars: int = 0

    def sent(self, data: bytes, headers: Mapping[str, str]) -> None:
        """A message went to the client (or, fenced, to the router to relay)."""
        self.delivered += 1
        model = headers.get(H.MODEL)
        if model:
            self.model = model
        if not self.stream:
            self.answer = data
            self.status = _status(headers)
        elif headers.get(H.STREAM) == H.STREAM_END:
            self.status = _status(headers)
            if self.status != 200 and data:
                self.answer = data

    def chunks(self, chunks: list[ChatCompletionChunk]) -> None:
        """A stream's chunks (internal ones, also what a native event means): keep their text,
        up to the record's cap (what lies beyond would be cut anyway)."""
        for chunk in chunks:
            for choice in chunk.choices:
                text = choice.delta.content
                if text and self.text_chars <= TEXT_RECORD_CAP:
                    self.pieces.append(text)
                    self.text_chars += len(text)

    def size(self) -> int:
        """Bytes held (roughly), for the queue's bound."""
        return len(self.request) + len(self.answer or b"") + self.text_chars

    def record(self, time_ms: int) -> TextRecord:
        text = "".join(self.pieces) if self.stream else None
        truncated = [] if text is None or self.text_chars <= TEXT_RECORD_CAP else ["completion_text"]
        return TextRecord(
            request_id=self.request_id,
            time_ms=time_ms,
            status=self.status or 200,
            request=msgspec.Raw(self.request),
            agent=self.agent,
            run_id=self.run_id,
            endpoint=self.endpoint,
            provider=self.provider,
            model=self.model,
            stream=self.stream,
            format=self.format,
            completion=msgspec.Raw(self.answer) if self.answer is not None else NO_COMPLETION,
            completion_text=text,
            truncated=truncated,
        )


def _status(headers: Mapping[str, str]) -> int:
    raw = headers.get(H.STATUS, "200")
    return int(raw) if raw.isdigit() else 200


class TextRecorder(LingeringPublisher):
    """Queues and publishes one worker's text records, in the background."""

    def __init__(self, nc: Client, *, max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        super().__init__(nc, USAGE_TEXT, linger_s=LINGER_S, what="text records", log=log)
        self.dropped = 0
        """Records dropped because the queue was full (lost)."""
        self._queue: collections.deque[tuple[TextCapture, int]] = collections.deque()
        self._queued_bytes = 0
        self._max_queued_bytes = max_queued_bytes

    @staticmethod
    def capture(
        headers: Mapping[str, str],
        *,
        request: bytes,
        endpoint: str,
        provider: str,
        model: str,
        stream: bool,
        fmt: str | None,
    ) -> TextCapture | None:
        """A capture for a call the router marked, else ``None`` (the usual case: no work at all)."""
        if headers.get(H.RECORD_TEXT) != "1":
            return None
        return TextCapture(
            request_id=headers.get(H.REQUEST_ID) or "",
            request=request,
            agent=headers.get(H.AGENT),
            run_id=headers.get(H.RUN_ID),
            endpoint=endpoint,
            provider=provider,
            model=model,
            stream=stream,
            format=fmt,
        )

    def submit(self, capture: TextCapture) -> None:
        """Queue the record of a call whose answer is out (never raises, never waits)."""
        if not capture.delivered:
            return  # the client got nothing from this attempt; the router may try another
        size = capture.size()
        if self._queued_bytes + size > self._max_queued_bytes:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("text records: %d dropped (not publishable for a while)", self.dropped)
            return
        self._queue.append((capture, int(time.time() * 1000)))
        self._queued_bytes += size
        self._start("usage-text")  # started by the first marked call: nothing runs without one
        self._wake_up()

    def _queued(self) -> int:
        return len(self._queue)

    def _next_batch(self) -> tuple[bytes, int] | None:
        """Encoded records from the queue, up to :data:`MAX_BATCH_BYTES` (at least one), as one
        message (a JSON array: a client's request may hold newlines)."""
        batch: list[bytes] = []
        size = 0
        while self._queue and size < MAX_BATCH_BYTES:
            capture, time_ms = self._queue[0]
            try:
                data = encode_text_record(capture.record(time_ms))
            except Exception:
                log.exception("text record of request %s could not be made", capture.request_id)
                self.failed += 1
                data = b""
            if batch and size + len(data) > MAX_BATCH_BYTES:
                break
            self._queue.popleft()
            self._queued_bytes -= capture.size()
            if data:
                batch.append(data)
                size += len(data) + 1
        return (join_text_records(batch), len(batch)) if batch else None
