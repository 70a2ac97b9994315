"""One admin request over NATS, and who the CLI acts as."""

from __future__ import annotations

import asyncio
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


NO_RESPONDERS_RETRY_S = 0.25
"""Pause between tries while nobody listens on the subject."""
NO_RESPONDERS_FOR_S = 5.0
"""How long the CLI keeps trying while nobody listens: a service reconnecting after a lost NATS node
or a restart is back well within it. A request nobody received is always safe to send again."""


async def call(nc: Client, subject: str, request: Any, reply_type: type[T], *, timeout: float = 30.0) -> T:
    """One admin request; error replies become the typed error.

    *No responders* (the request reached no service) is retried for up to
    :data:`NO_RESPONDERS_FOR_S`; a timeout is not, since the service may have
    acted on the request.
    """
    body = b"" if request is None else admin_encoder.encode(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    give_up = loop.time() + min(NO_RESPONDERS_FOR_S, timeout)
    while True:
        try:
            msg = await nc.request(subject, body, timeout=max(0.001, deadline - loop.time()))
            break
        except nats.errors.NoRespondersError:
            if loop.time() + NO_RESPONDERS_RETRY_S >= give_up:
                raise ModelbusError(f"no service answers on {subject} (is the stack fully started?)") from None
            await asyncio.sleep(NO_RESPONDERS_RETRY_S)
        except nats.errors.TimeoutError:
            raise DeadlineExceeded(f"no answer on {subject} within {timeout:g}s") from None
    status = int((msg.headers or {}).get(H.STATUS, "0") or 0)
    if status != 200:
        raise error_from_wire(status, msg.data)
    return msgspec.json.decode(msg.data, type=reply_type)
