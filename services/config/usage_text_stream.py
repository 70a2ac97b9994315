"""The text records' stream (``MODELBUS_USAGE_TEXT``), created and kept to its settings by the config service.

Like the usage ledger's (:mod:`services.config.usage_stream`): provider workers append
to it and ``admin`` reads it, but neither may create or reconfigure it; ``config-state``
does, at start and after every reconnect or lost server. It holds prompts and
completions, so its retention is shorter: ``MODELBUS_USAGE_TEXT_MAX_AGE`` (default 30
days) and ``MODELBUS_USAGE_TEXT_MAX_BYTES`` (default 1 GiB), the oldest dropped first.
Deletes and purges of single messages are refused to everyone (``deny_delete``,
``deny_purge``): a record leaves only by age or size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nats.aio.client import Client
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from services.config.usage_stream import ensure_retention
from shared.jetstream import Ensured
from shared.subjects import USAGE_TEXT, USAGE_TEXT_STREAM
from shared.usage_text import MAX_MESSAGE_BYTES, text_retention

log = logging.getLogger("modelbus.config")


def usage_text_stream_config(env: Mapping[str, str] | None = None) -> StreamConfig:
    """The text stream with the retention of ``env`` (default: the process environment)."""
    max_age_s, max_bytes = text_retention(env)
    return StreamConfig(
        name=USAGE_TEXT_STREAM,
        description="modelbus prompt and completion text of opted-in agents (written by provider workers only)",
        subjects=[USAGE_TEXT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs=-1,
        max_bytes=max_bytes,
        max_age=float(max_age_s),
        max_msgs_per_subject=-1,
        max_msg_size=MAX_MESSAGE_BYTES,  # records are capped and batched below it; anything larger is not ours
        discard=DiscardPolicy.OLD,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


async def ensure_usage_text_stream(nc: Client, env: Mapping[str, str] | None = None) -> Ensured:
    """Create the text stream if it is absent; bring an existing one to the configured replicas and
    retention (one log line per change)."""
    return await ensure_retention(nc, usage_text_stream_config(env))
