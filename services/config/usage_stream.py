"""The usage ledger's stream, created (and kept to its settings) by the config service.

Routers append to it and ``modelbus usage`` reads it, but neither may create or
reconfigure it (see :mod:`shared.identities`): ``config-state`` does, at start and
after every reconnect or lost server (:func:`services.config.service.config_state_keeper`).

Retention is always bounded: records older than ``MODELBUS_USAGE_MAX_AGE``
(default 90 days) expire, and past ``MODELBUS_USAGE_MAX_BYTES`` (default 1 GiB) the
oldest go first (``discard=old``). Discarding new records instead would make the
ledger refuse every record once full, which is worse: the newest usage is what
budgets reviews and bills read. Message deletes and purges are refused for every
identity (``deny_delete``, ``deny_purge``, which nats-server never lets be turned
off again), so a record can leave the ledger only by age or size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from nats.aio.client import Client
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from shared.jetstream import Ensured, ensure_stream
from shared.subjects import USAGE_RECORDS, USAGE_STREAM
from shared.usage import usage_retention

log = logging.getLogger("modelbus.config")


def usage_stream_config(env: Mapping[str, str] | None = None) -> StreamConfig:
    """The ledger's stream with the retention of ``env`` (default: the process environment)."""
    max_age_s, max_bytes = usage_retention(env)
    return StreamConfig(
        name=USAGE_STREAM,
        description="modelbus usage ledger: one record per final answer (written by routers only)",
        subjects=[USAGE_RECORDS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs=-1,
        max_bytes=max_bytes,
        max_age=float(max_age_s),
        max_msgs_per_subject=-1,
        discard=DiscardPolicy.OLD,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


async def ensure_usage_stream(nc: Client, env: Mapping[str, str] | None = None) -> Ensured:
    """Create the ledger's stream if it is absent; bring an existing one to the configured
    replicas and retention (one log line per change). Other settings are left as they are."""
    return await ensure_retention(nc, usage_stream_config(env))


async def ensure_retention(nc: Client, want: StreamConfig) -> Ensured:
    """Create stream ``want`` if it is absent; bring an existing one to ``want``'s replicas,
    ``max_age`` and ``max_bytes`` (one log line per change), leaving its other settings alone."""
    js = nc.jetstream()
    ensured = await ensure_stream(js, want)
    have = ensured.info.config
    if ensured.created or (have.max_age == want.max_age and have.max_bytes == want.max_bytes):
        return ensured
    config = dataclasses.replace(have, max_age=want.max_age, max_bytes=want.max_bytes)
    info = await js.update_stream(config)
    log.info(
        "stream %s: retention now %gs / %d bytes (was %gs / %s bytes)",
        want.name,
        want.max_age or 0,
        want.max_bytes or 0,
        have.max_age or 0,
        have.max_bytes,
    )
    return Ensured(info, updated=True)
