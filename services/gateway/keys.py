"""The gateway's API keys: the JetStream key store it follows, and an optional file of hashes.

Two sources, checked in this order on every request (one SHA-256 and one or two
dictionary lookups, no I/O):

1. **The key store** (:class:`StoreKeys`): the KV bucket
   :data:`shared.subjects.GATEWAY_KEYS_BUCKET` that ``modelbus create key`` /
   ``delete key`` change through the config service. A watch keeps an
   immutable dictionary from hash to :class:`Grant`, swapped in one assignment
   on every change, so a new key works and a deleted one is refused as soon as
   the change arrives (milliseconds). Keys may be bound to an agent or a
   namespace and may expire (401 ``expired_api_key``).
2. **The key file** (:class:`KeyRing`), optional: ``MODELBUS_GATEWAY_KEYS`` names
   a JSON file of hashes (below), re-read when it changes. Its keys are unbound
   and never expire. It is for a gateway run without ``modelbus up`` (compose,
   an operator's own keys) and for break-glass access while the store is
   unreachable.

**Fail closed (the exact rule).** A key is judged by the store only while the
store's copy is *trusted*: the gateway has received the bucket's whole content
since its NATS connection last (re)connected (after a reconnect the watch is
made anew and the set loaded again from scratch, since changes may have been
missed), and a check within the last :data:`TRUST_FOR_S` seconds found the
copy at the bucket stream's last sequence (or found that the bucket does not
exist: then the store holds no key). That check runs every
:data:`VERIFY_EVERY_S`; a copy found behind on two checks in a row means the
watch broke: the copy stops being trusted at once and is loaded again. While
it is not trusted, a key the file does not accept is answered 503
``key_store_unavailable`` (retryable), never let through.

The file is ``{"keys": [{"name": "default", "sha256": "<hex sha256 of the key>",
"created": "<RFC 3339>"}]}``. It is looked at (one ``stat``) at most every
:data:`CHECK_EVERY_S`, from the request that finds the check due, and re-read
when its modification time, size or inode changed. At start a missing,
unreadable or malformed file is an error (the process exits with status 2);
later, the same failure refuses every file key until the file is good again (a
typo while revoking a key must not leave it working). Write it atomically (a
temporary file renamed over it).

A key is logged, traced and put in errors by its name only; the key itself is
never logged, traced, put in an error or in argv.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from services.gateway.settings import KEYS_ENV, GatewaySetupError
from shared.gateway_keys import StoredKey, epoch_of, stored_key_decoder
from shared.subjects import GATEWAY_KEYS_BUCKET

log = logging.getLogger("modelbus.gateway.keys")

CHECK_EVERY_S = 0.5
"""Longest time between two looks at the key file."""
_HEX = frozenset("0123456789abcdef")


class KeyEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One key of the file: its name and the hash of its value."""

    name: str
    """Shown in logs and spans instead of the key."""
    sha256: str
    """Lower-case hex SHA-256 of the key's UTF-8 bytes."""
    created: str = ""
    """RFC 3339 time the key was made (informational)."""


class KeyFile(msgspec.Struct, kw_only=True, frozen=True):
    """The whole file."""

    keys: list[KeyEntry]


_decoder = msgspec.json.Decoder(KeyFile)


class KeyFileError(GatewaySetupError):
    """The key file cannot be used; the message names the variable and the path, never a key or hash."""


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def parse_key_file(data: bytes, path: str) -> tuple[tuple[str, bytes], ...]:
    """``(name, hex hash)`` pairs of a key file's content; :class:`KeyFileError` if it is not one."""
    try:
        parsed = _decoder.decode(data)
    except msgspec.MsgspecError as exc:
        # msgspec names the path of the bad field and the expected type, never the value.
        raise KeyFileError(f"{KEYS_ENV}: {path} is not a key file ({exc})") from None
    out: list[tuple[str, bytes]] = []
    for i, entry in enumerate(parsed.keys):
        digest = entry.sha256.lower()
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise KeyFileError(f"{KEYS_ENV}: {path}: keys[{i}].sha256 is not 64 hex digits")
        if not entry.name:
            raise KeyFileError(f"{KEYS_ENV}: {path}: keys[{i}].name is empty")
        out.append((entry.name, digest.encode()))
    return tuple(out)


def _read(path: str) -> tuple[tuple[tuple[str, bytes], ...], tuple[int, int, int]]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as exc:
        raise KeyFileError(f"{KEYS_ENV}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    return parse_key_file(data, path), _signature(st)


def key_hash(key: str) -> bytes:
    """The hex SHA-256 of a key, as the file holds it."""
    return hashlib.sha256(key.encode()).hexdigest().encode()


class KeyRing:
    """The valid keys, kept in step with the key file."""

    __slots__ = ("_clock", "_due", "_entries", "_signature", "path")

    def __init__(self, path: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Read the file once; :class:`KeyFileError` when it is missing, unreadable or malformed."""
        self.path = path
        self._clock = clock
        self._signature: tuple[int, int, int] | None
        self._entries, self._signature = _read(path)
        self._due = clock() + CHECK_EVERY_S
        if not self._entries:
            log.warning("%s %s holds no key: every request will be refused", KEYS_ENV, path)

    @property
    def names(self) -> list[str]:
        """Names of the keys in force."""
        return [name for name, _ in self._entries]

    def check(self, key: str | None) -> str | None:
        """The name of the key ``key`` matches, or ``None`` (no key, or no match)."""
        return self.check_digest(key_hash(key)) if key else self.check_digest(None)

    def check_digest(self, digest: bytes | None) -> str | None:
        """:meth:`check` for a key whose hex SHA-256 (:func:`key_hash`) the caller already has."""
        self._refresh()
        if not digest:
            return None
        found: str | None = None
        for name, expected in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found

    def _refresh(self) -> None:
        now = self._clock()
        if now < self._due:
            return
        self._due = now + CHECK_EVERY_S
        try:
            if _signature(os.stat(self.path)) == self._signature:
                return
            entries, signature = _read(self.path)
        except (OSError, KeyFileError) as exc:
            if self._signature is not None:  # logged once per failing streak
                reason = f"cannot read {self.path}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
                log.error("%s; refusing every key until it is fixed", reason)
            self._entries, self._signature = (), None
            return
        before = set(self.names)
        self._entries, self._signature = entries, signature
        after = set(self.names)
        log.info(
            "%s reloaded: %d key(s)%s%s",
            KEYS_ENV,
            len(entries),
            f", added {', '.join(sorted(after - before))}" if after - before else "",
            f", removed {', '.join(sorted(before - after))}" if before - after else "",
        )


# ---------------------------------------------------------------- the key store


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid key allows: its name (for logs and spans) and what it is bound to."""

    key: str
    """The key's name, never its value."""
    agent: str | None = None
    """The agent every request of this key routes as (``x-modelbus-agent`` is then not needed)."""
    namespace: str | None = None
    """The namespace whose agents alone this key may use."""
    expires_at: float | None = None
    """Seconds since the epoch after which the key is refused (``expired_api_key``)."""


STREAM = f"KV_{GATEWAY_KEYS_BUCKET}"
SUBJECT_PREFIX = f"$KV.{GATEWAY_KEYS_BUCKET}."
VERIFY_EVERY_S = 0.25
"""How often the gateway checks that its copy of the store is at the stream's last sequence."""
TRUST_FOR_S = 1.0
"""How long one good check keeps the copy trusted."""
LOAD_TIMEOUT_S = 5.0
"""How long a (re)load may take before it is tried again."""
_DELETES = frozenset({"DEL", "PURGE"})


def grant_of(stored: StoredKey) -> Grant:
    """The :class:`Grant` of a stored key (an unreadable ``expires`` makes it expired: fail closed)."""
    expires_at: float | None = None
    if stored.expires is not None:
        try:
            expires_at = epoch_of(stored.expires)
        except ValueError:
            expires_at = 0.0
    return Grant(key=stored.name, agent=stored.agent, namespace=stored.namespace, expires_at=expires_at)


def _is_delete(msg: Msg) -> bool:
    headers = msg.headers or {}
    return headers.get("KV-Operation") in _DELETES or "Nats-Marker-Reason" in headers


class StoreKeys:
    """The gateway's copy of the key store, kept by a KV watch and checked against the stream."""

    def __init__(self, nc: Client, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.nc = nc
        self._monotonic = monotonic
        self.grants: Mapping[str, Grant] = {}
        """Hex SHA-256 → grant; replaced whole (one assignment) on every change."""
        self._by_name: dict[str, StoredKey] = {}
        self._loaded = False
        self._reconnects = -1
        """The connection's reconnect count when the copy was loaded."""
        self._verified_at = float("-inf")
        self._seen = 0
        """Stream sequence of the newest change applied."""
        self._behind: int | None = None
        self._generation = 0
        self._sub: Any = None
        self._created: float | None = None
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiting_logged = False

    # -------------------------------------------------------------- hot path

    @property
    def trusted(self) -> bool:
        """Whether the copy may be used now (the rule in the module docstring)."""
        return (
            self._loaded
            and self.nc.is_connected
            and self.nc.stats["reconnects"] == self._reconnects
            and self._monotonic() - self._verified_at <= TRUST_FOR_S
        )

    @property
    def names(self) -> list[str]:
        """Names of the keys in the copy."""
        return sorted(self._by_name)

    # -------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Load and follow the store in the background."""
        self._task = asyncio.create_task(self._run(), name="gateway-key-store")

    async def wait_loaded(self, timeout_s: float) -> bool:
        """Wait until the store's content (or its absence) is known; whether it is."""
        try:
            await asyncio.wait_for(self._first.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop following (the copy is then no longer trusted)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._drop_watch()

    async def _drop_watch(self) -> None:
        self._loaded = False
        old, self._sub = self._sub, None
        if old is not None:
            try:
                await asyncio.wait_for(old.unsubscribe(), 1.0)
            except Exception:  # the connection may be gone, or the consumer with it
                pass

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # JetStream not answering, a timeout: try again soon
                if not failing:  # once per failing streak
                    log.warning("gateway keys: cannot check the key store (%s); trying again", type(exc).__name__)
                failing = True
            else:
                if failing:
                    log.info("gateway keys: the key store answers again")
                failing = False
            await asyncio.sleep(VERIFY_EVERY_S)

    async def _step(self) -> None:
        if not self.nc.is_connected:
            return
        if self._loaded and self.nc.stats["reconnects"] != self._reconnects:
            log.info("gateway keys: reconnected to NATS; loading the key store again")
            await self._drop_watch()
        js = self.nc.jetstream()
        try:
            info = await js.stream_info(STREAM)
        except NotFoundError:
            if self._sub is not None:
                await self._drop_watch()
                self._absent(gone=True)
            else:
                self._absent(gone=bool(self._by_name))
            return
        created = info.created.timestamp() if info.created is not None else None
        if self._loaded and created != self._created:
            log.warning("gateway keys: the key store was made anew; loading it again")
            await self._drop_watch()
        if not self._loaded:
            await self._load(info.state.last_seq, info.state.messages, created)
            return
        last = info.state.last_seq
        if self._seen >= last:
            self._behind = None
            self._verified_at = self._monotonic()
        elif self._behind is not None and self._seen < self._behind:
            log.warning("gateway keys: the watch fell behind the store; refusing its keys and loading it again")
            await self._drop_watch()
        else:
            self._behind = last

    def _absent(self, *, gone: bool) -> None:
        """The bucket does not exist (yet): the store holds no key, which is known for certain."""
        if gone:
            log.warning("gateway keys: the key store %s is gone; its keys are refused", GATEWAY_KEYS_BUCKET)
        elif not self._waiting_logged:
            log.info("gateway keys: no key store %s yet (the config service makes it)", GATEWAY_KEYS_BUCKET)
            self._waiting_logged = True
        self._by_name = {}
        self.grants = {}
        self._created = None
        self._seen = 0
        self._reconnects = self.nc.stats["reconnects"]
        self._loaded = True
        self._verified_at = self._monotonic()
        self._first.set()

    async def _load(self, last_seq: int, messages: int, created: float | None) -> None:
        """Watch the bucket from its current content on, and wait until that content is in.

        The content (the last entry of every key) goes into a dictionary of its
        own, installed in one go with the delivery that completes it; later
        deliveries change the installed copy."""
        before = set(self._by_name)
        await self._drop_watch()
        self._generation += 1
        generation = self._generation
        reconnects = self.nc.stats["reconnects"]
        pending: dict[str, StoredKey] = {}
        done = asyncio.Event()
        self._seen = 0

        def install() -> None:
            self._by_name = pending
            self._publish()
            done.set()

        if messages == 0:
            install()

        async def deliver(msg: Msg) -> None:
            if generation != self._generation:
                return  # a watch that has been replaced
            sequence = msg.metadata.sequence.stream
            name = msg.subject[len(SUBJECT_PREFIX) :]
            if done.is_set():
                self._apply(None, name, msg, sequence)
                return
            self._apply(pending, name, msg, sequence)
            if msg.metadata.num_pending == 0:
                install()

        self._sub = await self.nc.jetstream().subscribe(
            f"{SUBJECT_PREFIX}>",
            stream=STREAM,
            cb=deliver,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            await asyncio.wait_for(done.wait(), LOAD_TIMEOUT_S)
        except TimeoutError:
            await self._drop_watch()
            raise
        self._seen = max(self._seen, last_seq)
        self._created = created
        self._reconnects = reconnects
        self._behind = None
        self._verified_at = self._monotonic()
        self._loaded = True
        self._waiting_logged = False
        self._first.set()
        after = set(self._by_name)
        log.info(
            "gateway keys: %d key(s) from the key store%s%s",
            len(after),
            f", added {', '.join(sorted(after - before))}" if before and after - before else "",
            f", removed {', '.join(sorted(before - after))}" if before - after else "",
        )

    def _apply(self, pending: dict[str, StoredKey] | None, name: str, msg: Msg, sequence: int) -> None:
        """One change: into ``pending`` while loading, else into the live copy."""
        stored: StoredKey | None = None
        if not _is_delete(msg):
            try:
                stored = stored_key_decoder.decode(msg.data)
            except msgspec.MsgspecError:
                log.error("gateway keys: the entry %s is unreadable; it is refused", name)
        target = pending if pending is not None else dict(self._by_name)
        existed = name in target
        if stored is None:
            target.pop(name, None)
        else:
            target[name] = stored
        self._seen = max(self._seen, sequence)
        if pending is not None:
            return
        self._by_name = target
        self._publish()
        if stored is None and existed:
            log.info("gateway keys: key %s revoked", name)
        elif stored is not None:
            log.info("gateway keys: key %s %s", name, "updated" if existed else "added")

    def _publish(self) -> None:
        self.grants = {k.sha256: grant_of(k) for k in self._by_name.values()}  # one assignment
