"""``modelbus usage --text REQUEST_ID``: the stored prompt and completion of one request.

Only requests of agents with ``spec.record_text: true`` have text records
(:mod:`shared.usage_text`); the command reads ``MODELBUS_USAGE_TEXT`` as ``admin`` (the
only identity that may) with an ordered consumer from the start of the window
(``--since``, default 24h, by the stream's storage time) and prints the records of that
request id. The stream holds only opted-in agents' requests; a longer window reads more.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import msgspec
from nats.aio.client import Client

from services.cli.stream_read import stored_since
from shared.subjects import USAGE_TEXT, USAGE_TEXT_STREAM
from shared.usage_text import TextRecord, decode_text_records

READ_TIMEOUT_S = 30.0


async def read_text_records(
    nc: Client, request_id: str, since_s: int, *, timeout_s: float = READ_TIMEOUT_S
) -> list[TextRecord]:
    """Every text record of ``request_id`` stored in the last ``since_s`` seconds (oldest first);
    :class:`LookupError` without the stream."""
    out: list[TextRecord] = []
    async for data in stored_since(
        nc,
        USAGE_TEXT_STREAM,
        USAGE_TEXT,
        since_s,
        timeout_s=timeout_s,
        missing=f"there are no text records ({USAGE_TEXT_STREAM}) on this server yet",
        what="the text records",
    ):
        try:
            records = decode_text_records(data)
        except msgspec.MsgspecError:
            continue
        out.extend(r for r in records if r.request_id == request_id)
    return out


def record_json(record: TextRecord) -> Any:
    """A record as plain JSON values (the request and completion as the JSON they are)."""
    return json.loads(msgspec.json.encode(record))


def print_record(record: TextRecord) -> None:
    """One record for a person: who, where, when, then the request and the completion."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.time_ms / 1000))
    print(f"request {record.request_id}  {stamp}  status {record.status}")
    print(f"agent {record.agent or '-'}  run {record.run_id or '-'}  stream {'yes' if record.stream else 'no'}")
    print(f"endpoint {record.endpoint or '-'}  provider {record.provider or '-'}  model {record.model or '-'}")
    if record.truncated:
        print(f"truncated: {', '.join(record.truncated)} (cut to fit the record's size limit)")
    print("--- request")
    print(json.dumps(json.loads(bytes(record.request)), indent=2, ensure_ascii=False))
    if record.completion_text is not None:
        print("--- completion (streamed text)")
        print(record.completion_text)
    if bytes(record.completion) != b"null":
        print("--- completion" if not record.stream else "--- error the stream ended with")
        print(json.dumps(json.loads(bytes(record.completion)), indent=2, ensure_ascii=False))


async def cmd_usage_text(nc: Client, args: argparse.Namespace) -> int:
    """Print the text records of ``args.text`` (exit 1 when there are none)."""
    try:
        records = await read_text_records(nc, args.text, args.since)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps([record_json(r) for r in records], indent=2, ensure_ascii=False))
    else:
        for i, record in enumerate(records):
            if i:
                print()
            print_record(record)
    if not records:
        print(
            f"no text record of request {args.text!r} in the window (only agents with spec.record_text: true "
            "have them; --since widens the window)",
            file=sys.stderr,
        )
        return 1
    return 0
