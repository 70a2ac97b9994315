"""``modelbus create key NAME``, ``get keys`` and ``delete key NAME``: the HTTP gateway's API keys.

``create key`` makes the key here, in the CLI's own process
(:func:`shared.gateway_keys.new_key`: ``mb-`` and 256 random bits), sends only
its SHA-256 to the config service (``modelbus.v1.config.keys.create``, which
only the admin identity may call) and prints the key once, alone on standard
output, so ``KEY=$(modelbus create key ci)`` captures it; everything else goes
to standard error. The key never appears in an argv, a log, the store or an
error, and nothing can show it again: lose it and make another.

``--agent`` and ``--namespace`` bind the key as :mod:`shared.gateway_keys`
describes; ``--expires`` takes ``30d``, ``12h``, ``15m``, ``90s`` or ``1d12h``.
"""

from __future__ import annotations

import argparse
import json
import sys

import msgspec
import yaml
from nats.aio.client import Client

from services.cli.datadir import GatewayKey
from services.cli.rpc import actor, call
from shared import identities
from shared.bus import connect
from shared.errors import ModelbusError
from shared.gateway_keys import (
    KeyCreateRequest,
    KeyCreateResult,
    KeyDeleteRequest,
    KeyInfo,
    KeyList,
    KeyListRequest,
    key_sha256,
    name_problem,
    new_key,
    parse_duration,
)
from shared.subjects import CONFIG_KEYS_CREATE, CONFIG_KEYS_DELETE, CONFIG_KEYS_LIST

DEFAULT_KEY_NAME = "default"
"""The name ``modelbus up`` stores its default key under."""
KEY_KINDS = ("key", "keys")
"""How ``get`` and ``delete`` spell the gateway's API keys."""


def _binding(info: KeyInfo) -> str:
    parts = []
    if info.agent:
        parts.append(f"agent {info.agent}")
    elif info.namespace:
        parts.append(f"namespace {info.namespace}")
    parts.append(f"expires {info.expires}" if info.expires else "no expiry")
    return ", ".join(parts)


async def cmd_create_key(nc: Client, args: argparse.Namespace) -> int:
    """Make a key, store its hash through the config service, print the key once."""
    problem = name_problem(args.name)
    if problem:
        print(f"error: key {args.name[:70]!r}: {problem}", file=sys.stderr)
        return 2
    if args.expires is not None:
        try:
            parse_duration(args.expires)  # the config service checks it too; this answers before any network
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    key = new_key()
    request = KeyCreateRequest(
        name=args.name,
        sha256=key_sha256(key),
        agent=args.agent,
        namespace=args.namespace,
        expires=args.expires,
        actor=actor(),
    )
    result = await call(nc, CONFIG_KEYS_CREATE, request, KeyCreateResult)
    info = result.key
    detail = f" ({_binding(info)})" if info is not None else ""
    print(f"key {args.name} created{detail}; it is shown only this once:", file=sys.stderr, flush=True)
    print(key, flush=True)
    return 0


def key_rows(items: list[KeyInfo]) -> list[dict[str, str]]:
    """What ``get keys`` shows of each key (never a hash, never a key)."""
    return [
        {
            "name": i.name,
            "agent": i.agent or "-",
            "namespace": i.namespace or "-",
            "created": i.created,
            "expires": i.expires or "never",
            "status": i.status,
        }
        for i in items
    ]


async def cmd_get_keys(nc: Client, args: argparse.Namespace) -> int:
    """List the gateway's keys: name, agent, namespace, created, expires, status."""
    listing = await call(nc, CONFIG_KEYS_LIST, KeyListRequest(name=args.name), KeyList)
    if args.output in ("json", "yaml"):
        data = msgspec.to_builtins(listing.items)
        print(json.dumps(data, indent=2) if args.output == "json" else yaml.safe_dump(data, sort_keys=False).rstrip())
        return 0
    header = {k: k.upper() for k in ("name", "agent", "namespace", "created", "expires", "status")}
    table = [header, *key_rows(listing.items)]
    widths = {k: max(len(r[k]) for r in table) for k in header}
    for row in table:
        print("  ".join(row[k].ljust(widths[k]) for k in header).rstrip())
    return 0


async def cmd_delete_key(nc: Client, args: argparse.Namespace) -> int:
    """Revoke a key: every gateway replica refuses it within a second."""
    await call(nc, CONFIG_KEYS_DELETE, KeyDeleteRequest(name=args.name, actor=actor()), KeyInfo)
    print(f"key {args.name} deleted: every gateway refuses it from now on")
    return 0


def add_create_parser(create_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``modelbus create key``."""
    key = create_sub.add_parser(
        "key",
        help="make an API key for the HTTP gateway (printed once; only its hash is stored)",
        description="Prints the new key once on standard output (KEY=$(modelbus create key NAME)). Only its "
        "SHA-256 is stored, in JetStream; `modelbus delete key NAME` revokes it on every gateway within a second.",
    )
    key.add_argument("name", help="1 to 64 characters: lower-case letters, digits, '-' and '_'")
    key.add_argument("--agent", help="route every request of this key as this agent (name or namespace/name)")
    key.add_argument(
        "--namespace", help="allow only this namespace's agents (with --agent: the agent is looked up in it)"
    )
    key.add_argument("--expires", metavar="DURATION", help="refuse the key after this long: 30d, 12h, 15m, 90s, 1d12h")
    key.set_defaults(admin=cmd_create_key)


async def store_default_key(nc: Client, key: str, *, created: bool) -> KeyCreateResult:
    """Store ``modelbus up``'s default key as ``default``: replacing the stored one when ``created``
    (a new ``gateway.key``), else only if that name was never stored (a deleted one stays deleted)."""
    request = KeyCreateRequest(
        name=DEFAULT_KEY_NAME,
        sha256=key_sha256(key),
        actor="up",
        on_conflict="replace" if created else "keep",
    )
    return await call(nc, CONFIG_KEYS_CREATE, request, KeyCreateResult)


async def store_default_key_at(nats_url: str, passwords: dict[str, str] | None, key: GatewayKey) -> str | None:
    """Store the default key in the gateway's key store; the key when it is the stored ``default``
    (for ``client.json``), else ``None`` with a line saying why."""
    login: dict[str, str] = {}
    if passwords is not None:
        login = {"user": "admin", "password": passwords["admin"], "inbox_prefix": identities.inbox_prefix("admin")}
    try:
        nc = await connect("modelbus-up", nats_url, **login)
    except Exception as exc:
        print(f"[modelbus] warning: cannot store the default API key ({type(exc).__name__})", flush=True)
        return None
    try:
        result = await store_default_key(nc, key.api_key, created=key.created)
    except ModelbusError as exc:
        print(f"[modelbus] warning: cannot store the default API key: {exc.message}", flush=True)
        return None
    finally:
        await nc.drain()
    if result.active:
        if result.stored:
            print("[modelbus] stored the default API key in the gateway's key store as 'default'", flush=True)
        return key.api_key
    if result.revoked:
        why = "was revoked (`modelbus delete key default`)"
    else:
        why = "in the key store is another key than gateway.key"
    print(
        f"[modelbus] the default API key {why}: client.json gets no api_key; delete gateway.key to have a new "
        "one made and stored on the next start",
        flush=True,
    )
    return None
