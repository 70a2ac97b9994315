"""One admin request over NATS, and who the CLI acts as."""

from __future__ import annotations

import getpass
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client

from shared import headers as H
from shared.admin import admin_encoder
from shared.errors import DeadlineExceeded, ModelbusError, error_from_wire

T = TypeVar("T")


def actor() -> str:
    """Who the CLI acts as, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


async def call(nc: Client, subject: str, request: Any, reply_type: type[T], *, timeout: float = 30.0) -> T:
    """One admin request; error replies become the typed error."""
    body = b"" if request is None else admin_encoder.encode(request)
    try:
        msg = await nc.request(subject, body, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise ModelbusError(f"no service answers on {subject} (is the stack fully started?)") from None
    except nats.errors.TimeoutError:
        raise DeadlineExceeded(f"no answer on {subject} within {timeout:g}s") from None
    status = int((msg.headers or {}).get(H.STATUS, "0") or 0)
    if status != 200:
        raise error_from_wire(status, msg.data)
    return msgspec.json.decode(msg.data, type=reply_type)
