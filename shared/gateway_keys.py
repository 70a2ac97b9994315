"""The HTTP gateway's API keys in JetStream: the stored record, the admin messages, the rules.

A key is made by ``modelbus create key NAME`` in the CLI's own process
(:func:`new_key`) and printed once; only its SHA-256 (:func:`key_sha256`) leaves
that process, inside a :class:`KeyCreateRequest` to the config service, which
validates it and stores a :class:`StoredKey` under ``NAME`` in the KV bucket
:data:`shared.subjects.GATEWAY_KEYS_BUCKET`. Every gateway replica watches that
bucket and keeps a dictionary from hash to what the key allows. A key is 256
random bits, so a plain SHA-256 (not a slow password hash) is enough: nobody
can search a space that size, and the hot path stays one hash and one lookup.

What a key may be bound to (``--agent``, ``--namespace``), as config names agents
(``name`` or ``namespace/name``):

================================ ==================================================================
neither                          any model, alias, endpoint or agent (``x-modelbus-agent`` as sent)
``--agent A``                    routes as agent ``A`` (full name); another ``x-modelbus-agent`` is 403
``--namespace NS``               only agents ``NS/*``, named by ``x-modelbus-agent`` (``X`` = ``NS/X``);
                                 a request naming none, or one outside ``NS``, is 403
``--agent A --namespace NS``     ``A`` is looked up in ``NS`` (``A`` = ``NS/A``; an ``A`` with another
                                 namespace is refused at creation); then as ``--agent NS/A``
================================ ==================================================================
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Literal

import msgspec
from msgspec import Struct

KEY_PREFIX = "mb-"
"""Every modelbus API key starts with it, so a leaked one is easy to recognise (and to scan for)."""
KEY_BYTES = 32
"""Random bytes in a key (256 bits)."""
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
"""Key names: 1 to 64 lower-case letters, digits, ``-`` and ``_``, not ``-``/``_`` at either end."""
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
MAX_DURATION_S = 10 * 366 * 86400
"""Longest ``--expires``: ten years."""
_NAMESPACE_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")

KeyStatus = Literal["active", "expired"]


def new_key() -> str:
    """A new API key: ``mb-`` and :data:`KEY_BYTES` random bytes, url-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_sha256(key: str) -> str:
    """The lower-case hex SHA-256 of a key's UTF-8 bytes: all that is ever stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a key, or ``None``."""
    if not NAME_RE.fullmatch(name):
        return "key names are 1 to 64 characters: lower-case letters, digits, '-' and '_', not '-' or '_' at either end"
    return None


def sha256_problem(digest: str) -> str | None:
    """Why ``digest`` is not a lower-case hex SHA-256, or ``None`` (never echoes the value)."""
    return None if _SHA256_RE.fullmatch(digest) else "sha256 must be 64 lower-case hex digits"


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` cannot be a namespace, or ``None``."""
    if not _NAMESPACE_RE.fullmatch(namespace):
        return "a namespace is 1 to 64 lower-case letters, digits, '.', '-' and '_'"
    return None


def parse_duration(text: str) -> int:
    """Seconds in ``30d``, ``12h``, ``15m``, ``45s`` or a combination in that order (``1d12h``).

    :class:`ValueError` names the text and the accepted forms; zero and more than
    ten years are refused."""
    value = text.strip().lower()
    found = _DURATION_RE.fullmatch(value) if value else None
    if found is None or not any(found.groups()):
        raise ValueError(f"--expires {text[:40]!r}: expected a duration such as 30d, 12h, 15m, 90s or 1d12h")
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"--expires {text[:40]!r}: must be longer than zero")
    if total > MAX_DURATION_S:
        raise ValueError(f"--expires {text[:40]!r}: at most ten years (3660d)")
    return total


def rfc3339(when: dt.datetime) -> str:
    """``2026-01-02T03:04:05Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (:class:`ValueError` if it is not one)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class StoredKey(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The value under ``NAME`` in the keys bucket: what the gateway needs, never the key."""

    name: str
    """The key's name (its KV key too); logs and spans show it instead of the key."""
    sha256: str
    """Lower-case hex SHA-256 of the key."""
    created: str
    """RFC 3339 UTC time it was stored."""
    created_by: str = ""
    """Who created it (``cli:alice``, ``up``)."""
    agent: str | None = None
    """Full name of the agent every request of this key routes as."""
    namespace: str | None = None
    """The namespace whose agents alone this key may use."""
    expires: str | None = None
    """RFC 3339 UTC time after which the key is refused (401 ``expired_api_key``)."""


stored_key_decoder = msgspec.json.Decoder(StoredKey)
stored_key_encoder = msgspec.json.Encoder()


class KeyCreateRequest(Struct, kw_only=True, frozen=True):
    """Store a new key (admin). The key itself never travels: only its hash."""

    name: str
    sha256: str
    agent: str | None = None
    """``name`` or ``namespace/name`` of an agent config knows."""
    namespace: str | None = None
    expires: str | None = None
    """A duration (:func:`parse_duration`), counted from the config service's clock."""
    actor: str = "unknown"
    on_conflict: Literal["error", "replace", "keep"] = "error"
    """A live key of that name exists: 409 (``error``, what ``create key`` asks), overwrite it
    (``replace``: ``modelbus up`` after it made a new default key), or leave the store as it is
    (``keep``: ``modelbus up`` with its existing default key, which never brings back a deleted one)."""


class KeyInfo(Struct, kw_only=True, frozen=True):
    """What ``get keys`` shows of one key: never its hash, never its value."""

    name: str
    agent: str | None
    namespace: str | None
    created: str
    expires: str | None
    status: KeyStatus
    created_by: str = ""


class KeyCreateResult(Struct, kw_only=True, frozen=True):
    """Outcome of a :class:`KeyCreateRequest`."""

    stored: bool
    """Whether this request wrote the key."""
    active: bool
    """Whether a live key of that name with the request's hash is in the store now."""
    revoked: bool = False
    """``keep`` only: the name was deleted earlier and stays deleted."""
    key: KeyInfo | None = None


class KeyListRequest(Struct, kw_only=True, frozen=True):
    """List keys (admin), or the one named."""

    name: str | None = None


class KeyList(Struct, kw_only=True, frozen=True):
    items: list[KeyInfo]


class KeyDeleteRequest(Struct, kw_only=True, frozen=True):
    """Revoke a key (admin): every gateway refuses it within a second."""

    name: str
    actor: str = "unknown"


def key_info(stored: StoredKey, now: float) -> KeyInfo:
    """``stored`` as ``get keys`` shows it at time ``now`` (seconds since the epoch)."""
    expired = stored.expires is not None and epoch_of(stored.expires) <= now
    return KeyInfo(
        name=stored.name,
        agent=stored.agent,
        namespace=stored.namespace,
        created=stored.created,
        expires=stored.expires,
        status="expired" if expired else "active",
        created_by=stored.created_by,
    )
