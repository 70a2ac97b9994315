"""The JetStream API subjects one broker permission is made of: reading a stream, owning it,
using a KV bucket, migrating replicas, creating a stream. :func:`shared.identities.permissions`
composes every identity's allow lists from these."""

from __future__ import annotations


def kv(bucket: str) -> str:
    return f"KV_{bucket}"


def stream_reader(stream: str) -> list[str]:
    """Read a stream: info, single messages (direct or not) and ordered/ephemeral consumers."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def stream_owner(stream: str, subject: str, *, update: bool = False) -> list[str]:
    """Create a stream, read it and append to it; never delete or purge it.

    ``update`` also allows changing its configuration (the config service
    migrates its own streams' settings). Creating or updating is limited to the
    named stream: a stream's ``sources`` may copy any stream of the account,
    so no identity may create streams of other names (see docs/security.md).
    """
    out = [f"$JS.API.STREAM.CREATE.{stream}", *stream_reader(stream), subject]
    if update:
        out.append(f"$JS.API.STREAM.UPDATE.{stream}")
    return out


def kv_rw(bucket: str, *, update: bool = False) -> list[str]:
    """Open (or create) a KV bucket, and read, write and watch its keys (``update``: and change its
    replicas, see :mod:`shared.jetstream`)."""
    return stream_owner(kv(bucket), f"$KV.{bucket}.>", update=update)


def replica_migration(stream: str) -> list[str]:
    """Read a stream's settings and change them: only to bring it to ``MODELBUS_JS_REPLICAS``.

    Given to ``config-state`` for the routers' buckets, so that ``router-state``
    itself never may reconfigure a stream (an update could add ``sources``).
    ``config-state`` gains nothing by it: it may already update the config
    stream, which every router reads.
    """
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]


def stream_creator(stream: str) -> list[str]:
    """Create a stream and change its settings (retention, replicas), and nothing else: not read,
    append to, delete or purge it. ``config-state``'s part in the usage ledger."""
    return [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]
