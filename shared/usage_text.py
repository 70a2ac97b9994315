"""Prompt and completion text, stored only for agents an operator opted in (``Agent.record_text``).

The usage ledger (:mod:`shared.usage`) never holds text. For a request that runs as an agent
with ``spec.record_text: true``, the router marks the provider call with
``Modelbus-Record-Text: 1`` (plus the agent and run, :func:`record_text_headers`), and the
provider worker, which holds both the request body and the answer, publishes one
:class:`TextRecord` to :data:`shared.subjects.USAGE_TEXT` once the answer is out
(``services/providers/text_record.py``). JetStream keeps them in
:data:`shared.subjects.USAGE_TEXT_STREAM`, which only ``admin`` may read.

What a record holds: the request exactly as the client sent it (its JSON, not re-encoded), and
the completion: a non-streamed answer's body as the client got it, or a stream's text (the
concatenated ``content`` deltas of its chunks, also for native passthrough streams, whose events
mean the same chunks). Never a provider credential: the worker stores only those two.

Messages. A worker publishes what queued up within a few milliseconds as one message, a JSON
array of records (:func:`join_text_records`, :func:`decode_text_records`), so the server stores
far fewer messages than there are requests (one stored message per request cost the mock stack
40% more CPU per request).

The cap. A record is at most :data:`TEXT_RECORD_CAP` bytes, so it always fits a message. A
record that would be larger is cut: each part that does not fit its share becomes a JSON string
holding its first bytes followed by :func:`truncation_marker`, and :attr:`TextRecord.truncated`
names the parts that were cut.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from msgspec import Struct

from shared import headers as H
from shared.usage import usage_retention

TEXT_RECORD_CAP = 256 * 1024
"""Largest encoded record in bytes."""
MAX_BATCH_BYTES = 512 * 1024
"""A worker publishes what queued up together in one message, up to this many bytes (one record
always goes, so a message is at most this plus one record)."""
MAX_MESSAGE_BYTES = MAX_BATCH_BYTES + TEXT_RECORD_CAP + 1024
"""The stream's message size limit (below nats-server's default 1 MiB payload limit)."""
TEXT_MAX_AGE_ENV = "MODELBUS_USAGE_TEXT_MAX_AGE"
"""How long a text record is kept: a duration (``30d``, ``12h``); default 30 days."""
TEXT_MAX_BYTES_ENV = "MODELBUS_USAGE_TEXT_MAX_BYTES"
"""The text stream's size bound (``512MB``, ``2GiB``); default 1 GiB, the oldest records go first."""
DEFAULT_TEXT_MAX_AGE_S = 30 * 86400

NO_COMPLETION = msgspec.Raw(b"null")
"""A record's :attr:`TextRecord.completion` when it has none (pass this object: only it is left out)."""

REQUEST = "request"
COMPLETION = "completion"
COMPLETION_TEXT = "completion_text"


class TextRecord(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The text of one answered request of an agent that opted in."""

    request_id: str
    """``Modelbus-Request-Id`` (the same as the request's usage record)."""
    time_ms: int
    """When the answer went out: Unix epoch milliseconds, UTC."""
    status: int
    """The answer's status: 200, or the error a stream ended with after its first content."""
    request: msgspec.Raw
    """The request body as the client sent it (JSON); a JSON string of its first bytes when cut."""
    agent: str | None = None
    """``Modelbus-Agent`` the request ran as."""
    run_id: str | None = None
    """``Modelbus-Run-Id``."""
    endpoint: str | None = None
    """The endpoint that answered."""
    provider: str | None = None
    """Its provider type."""
    model: str | None = None
    """The upstream model that answered."""
    stream: bool = False
    """A streamed request."""
    format: str | None = None
    """``Modelbus-Format`` of the request (``openai``, ``anthropic``); ``None``: the internal contract."""
    completion: msgspec.Raw = NO_COMPLETION
    """Not streamed: the answer's body as the client got it (JSON). Streamed: the error envelope the
    stream ended with, if it did. A JSON string of its first bytes when cut; ``null`` (left out of
    the record) when there is none (msgspec decodes no ``Raw | None``)."""
    completion_text: str | None = None
    """Streamed: the text of the answer, every chunk's ``content`` in order."""
    truncated: list[str] = []
    """The parts cut to fit :data:`TEXT_RECORD_CAP` (``request``, ``completion``, ``completion_text``)."""


text_record_encoder = msgspec.json.Encoder()
text_record_decoder = msgspec.json.Decoder(TextRecord)
_batch_decoder = msgspec.json.Decoder(list[TextRecord])


def join_text_records(records: list[bytes]) -> bytes:
    """Encoded records as one message: a JSON array (not lines: a request kept byte for byte may
    hold newlines)."""
    return b"[" + b",".join(records) + b"]"


def decode_text_records(data: bytes) -> list[TextRecord]:
    """The records of one message of the text stream (:class:`msgspec.MsgspecError` if it is none)."""
    return _batch_decoder.decode(data)


def record_text_headers(agent: str, run_id: str | None) -> dict[str, str]:
    """What a router adds to a provider call of an agent with ``record_text``."""
    out = {H.RECORD_TEXT: "1", H.AGENT: agent}
    if run_id:
        out[H.RUN_ID] = run_id
    return out


def text_retention(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(max age in seconds, max bytes)`` of the text stream from :data:`TEXT_MAX_AGE_ENV` and
    :data:`TEXT_MAX_BYTES_ENV` (:class:`shared.usage.InvalidRetention` if one is invalid)."""
    return usage_retention(
        env, age_env=TEXT_MAX_AGE_ENV, bytes_env=TEXT_MAX_BYTES_ENV, default_age_s=DEFAULT_TEXT_MAX_AGE_S
    )


def truncation_marker(kept: int, total: int) -> str:
    """What ends a part that was cut: how much of it is kept."""
    return f"…[modelbus: truncated, {kept} of {total} bytes kept]"


def _cut(data: bytes, limit: int) -> str:
    """The first ``limit`` bytes of ``data`` as text (a split character dropped), with the marker."""
    kept = data[: max(0, limit)].decode("utf-8", "ignore")
    return kept + truncation_marker(len(kept.encode()), len(data))


def _is_json(data: bytes) -> bool:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def encode_text_record(record: TextRecord, cap: int = TEXT_RECORD_CAP) -> bytes:
    """``record`` as JSON of at most ``cap`` bytes: whole when it fits, else with the largest
    parts cut to fair shares of what the rest leaves (the smaller parts are kept whole)."""
    has_completion = bytes(record.completion) != b"null"
    if has_completion and not _is_json(bytes(record.completion)):
        # An upstream's body that is not JSON would break the record's own JSON: keep it as text.
        record = msgspec.structs.replace(
            record, completion=msgspec.Raw(msgspec.json.encode(bytes(record.completion).decode("utf-8", "replace")))
        )
    data = text_record_encoder.encode(record)
    if len(data) <= cap:
        return data
    parts: dict[str, bytes] = {REQUEST: bytes(record.request)}
    if has_completion:
        parts[COMPLETION] = bytes(record.completion)
    if record.completion_text is not None:
        parts[COMPLETION_TEXT] = record.completion_text.encode()
    empty = msgspec.structs.replace(
        record,
        request=msgspec.Raw(b'""'),
        completion=msgspec.Raw(b'""') if has_completion else record.completion,
        completion_text="" if record.completion_text is not None else None,
        truncated=sorted(parts),
    )
    # Room for the marker and the JSON escapes of each cut part; shrunk further if escapes take more.
    room = cap - len(text_record_encoder.encode(empty)) - 80 * len(parts)
    for _ in range(8):
        shares = _shares({k: len(v) for k, v in parts.items()}, max(0, room))
        cut = [k for k, v in parts.items() if len(v) > shares[k]]
        changes: dict[str, object] = {"truncated": sorted({*record.truncated, *cut})}
        for name in cut:
            text = _cut(parts[name], shares[name])
            changes[name] = text if name == COMPLETION_TEXT else msgspec.Raw(msgspec.json.encode(text))
        data = text_record_encoder.encode(msgspec.structs.replace(record, **changes))
        if len(data) <= cap:
            return data
        room -= len(data) - cap + 64
    changes = {
        k: (
            truncation_marker(0, len(v))
            if k == COMPLETION_TEXT
            else msgspec.Raw(msgspec.json.encode(truncation_marker(0, len(v))))
        )
        for k, v in parts.items()
    }
    return text_record_encoder.encode(msgspec.structs.replace(record, truncated=sorted(parts), **changes))


def _shares(sizes: dict[str, int], room: int) -> dict[str, int]:
    """Split ``room`` bytes: the smallest part first, each gets its size or an equal share of
    what is left, whichever is less."""
    out: dict[str, int] = {}
    left = room
    names = sorted(sizes, key=lambda k: sizes[k])
    for i, name in enumerate(names):
        share = min(sizes[name], left // (len(names) - i))
        out[name] = share
        left -= share
    return out
