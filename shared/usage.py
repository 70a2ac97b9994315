"""The usage ledger's wire contract: one :class:`UsageRecord` per final answer.

Every router appends a record to the JetStream stream :data:`shared.subjects.USAGE_STREAM`
(subject :data:`shared.subjects.USAGE_RECORDS`) for each request it answered,
success or error, after the answer went out (``services/router/ledger.py``).
A record holds counts, names and timings only: never prompt or completion
text.

Tokens. ``input_tokens`` is every prompt token, as OpenAI's ``prompt_tokens``
counts them: cache reads and cache writes included. ``cache_read_tokens`` and
``cache_write_tokens`` are the parts of it served from, or written to, the
provider's prompt cache, so the uncached input is ``input_tokens -
cache_read_tokens - cache_write_tokens``. Likewise ``output_tokens`` includes
``reasoning_tokens``. The provider worker reports them to the router in
``Modelbus-Usage`` (:func:`usage_header`, :func:`parse_usage_header`).

Messages. One stream message holds one or more records, one JSON object per
line (:func:`decode_records`): a router publishes what queued up since its last
publish together.

Gaps. Each router numbers its records from 1 (``seq``, per ``router`` id, which
is new on every start). A record lost on the way (the router's buffer full
while it was off the bus, the stream missing) leaves a missing number, which
``modelbus usage`` reports per router.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import msgspec
from msgspec import Struct

from shared.chat import PromptTokensDetails, Usage
from shared.identities import CLIENT_INBOX_ROOT

USAGE_MAX_AGE_ENV = "MODELBUS_USAGE_MAX_AGE"
"""How long the ledger keeps a record: a duration (``90d``, ``12h``, ``30m``); default 90 days."""
USAGE_MAX_BYTES_ENV = "MODELBUS_USAGE_MAX_BYTES"
"""The ledger's size bound: bytes, or with a unit (``512MB``, ``2GiB``); default 1 GiB."""
DEFAULT_MAX_AGE_S = 90 * 86400
DEFAULT_MAX_BYTES = 1 << 30
MIN_MAX_BYTES = 1 << 20
"""A smaller bound would drop records within minutes under any real load."""


class UsageRecord(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One final answer of one request: who asked, where it went, what it used."""

    request_id: str
    """``Modelbus-Request-Id`` of the request."""
    time_ms: int
    """When the answer went out: Unix epoch milliseconds, UTC."""
    router: str
    """Id of the router that answered (``modelbus get routers``)."""
    seq: int
    """This router's record number, from 1 without gaps; a missing number is a lost record."""
    status: int
    """HTTP-like status of the answer: 200, or the error's."""
    error_code: str | None = None
    """The error envelope's ``code``, for an error answer."""
    caller: str | None = None
    """Broker identity that asked, from its reply inbox (``client.NAME``, ``gateway``, ``admin``,
    ``config``); ``None`` when the inbox names none (a stack without identities)."""
    key: str | None = None
    """Name of the gateway API key (never its value); only for requests that came through the gateway."""
    agent: str | None = None
    """``Modelbus-Agent`` (``name`` or ``namespace/name``)."""
    namespace: str | None = None
    """The agent's namespace (``None`` for an agent without one, or no agent)."""
    run_id: str | None = None
    """``Modelbus-Run-Id``."""
    route: str | None = None
    """Alias, endpoint, model or agent the request resolved as."""
    model_requested: str | None = None
    """The request's ``model`` field."""
    endpoint: str | None = None
    """Endpoint of the attempt that answered (``None`` when no attempt was made)."""
    provider: str | None = None
    """Its provider type."""
    model: str | None = None
    """The upstream model that answered (or was last tried)."""
    attempts: int = 0
    """Upstream attempts made."""
    stream: bool = False
    """A streamed request."""
    usage_reported: bool = False
    """The provider reported token usage (the counts below are then the provider's)."""
    input_tokens: int = 0
    """Every prompt token, cache reads and writes included."""
    output_tokens: int = 0
    """Every completion token, reasoning included."""
    cache_read_tokens: int = 0
    """Prompt tokens read from the provider's cache (part of ``input_tokens``)."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the provider's cache (part of ``input_tokens``)."""
    reasoning_tokens: int = 0
    """Completion tokens spent on reasoning (part of ``output_tokens``)."""
    latency_ms: float = 0.0
    """From the router receiving the request to the final answer."""
    ttft_ms: float | None = None
    """Streams: from the router receiving the request to the first content reaching the client."""
    cost: str | None = None
    """Cost in ``currency``, an exact decimal string (``"0.0000375"``, never a float, so sums are
    exact); ``None`` = unknown (no price for the model, or a success without usage), never 0 for
    unknown; ``"0"`` for an answer nothing was billed for (see ``services/router/ledger.py``)."""
    currency: str | None = None
    """ISO 4217 code of ``cost``; ``None`` when the cost is unknown or no price was involved."""


usage_record_encoder = msgspec.json.Encoder()
usage_record_decoder = msgspec.json.Decoder(UsageRecord)


def decode_records(data: bytes) -> list[UsageRecord]:
    """The records of one ledger message: one JSON object per line (a router sends what queued
    up together). :class:`msgspec.MsgspecError` if a line is not a record."""
    return [usage_record_decoder.decode(line) for line in data.split(b"\n") if line.strip()]


# ------------------------------------------------------------------ the usage header


class TokenCounts(Struct, kw_only=True, frozen=True):
    """The numbers of ``Modelbus-Usage``."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        """Input plus output (the parts are inside them), what token budgets charge."""
        return self.input_tokens + self.output_tokens


def usage_header(usage: Usage) -> str:
    """``"<prompt> <completion> <cache_read> <cache_write> <reasoning>"``; trailing zeros are
    left off, so usage without cache or reasoning tokens is the two-number form older routers read."""
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    parts = [
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_prompt_tokens,
        (prompt.cache_write_tokens or 0) if prompt is not None else 0,
        (completion.reasoning_tokens or 0) if completion is not None else 0,
    ]
    while len(parts) > 2 and parts[-1] == 0:
        parts.pop()
    return " ".join(map(str, parts))


def parse_usage_header(value: str | None) -> TokenCounts | None:
    """Read ``Modelbus-Usage`` (two to five whole numbers); ``None`` when absent or malformed."""
    if not value:
        return None
    parts = value.split()
    if not 2 <= len(parts) <= 5 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    n = [int(p) for p in parts] + [0] * (5 - len(parts))
    return TokenCounts(
        input_tokens=n[0], output_tokens=n[1], cache_read_tokens=n[2], cache_write_tokens=n[3], reasoning_tokens=n[4]
    )


def for_client(usage: Usage) -> Usage:
    """``usage`` as an OpenAI-shaped client sees it: without modelbus's ``cache_write_tokens``
    (OpenAI's usage has no such field; it stays in ``Modelbus-Usage`` and the ledger)."""
    details = usage.prompt_tokens_details
    if details is None or details.cache_write_tokens is None:
        return usage
    trimmed = msgspec.structs.replace(details, cache_write_tokens=None)
    empty = trimmed == PromptTokensDetails()
    return msgspec.structs.replace(usage, prompt_tokens_details=None if empty else trimmed)


# ------------------------------------------------------------------ identity


def caller_of(reply: str) -> str | None:
    """The broker identity a reply inbox belongs to (see :mod:`shared.identities`): inboxes are
    enforced per identity by the broker, so this cannot be forged on a stack with identities.

    ``_INBOX_client.NAME.…`` → ``client.NAME``; ``_INBOX_gateway.…`` → ``gateway``; any other
    ``_INBOX_<role>.…`` → ``<role>``; anything else (``_INBOX.…``, no identities) → ``None``.
    """
    if reply.startswith(CLIENT_INBOX_ROOT + "."):
        name = reply[len(CLIENT_INBOX_ROOT) + 1 :].split(".", 1)[0]
        return f"client.{name}" if name else None
    if reply.startswith("_INBOX_"):
        role, sep, _ = reply[len("_INBOX_") :].partition(".")
        return role if sep and role else None
    return None


GATEWAY_CALLER = "gateway"
"""The caller whose ``Modelbus-Key`` header is trusted."""


def namespace_of(agent: str | None) -> str | None:
    """The namespace of ``namespace/name``; ``None`` for a bare name or no agent."""
    if agent is None or "/" not in agent:
        return None
    return agent.split("/", 1)[0] or None


# ------------------------------------------------------------------ retention

_DURATION = re.compile(r"(\d+)\s*(s|m|h|d)")
_SIZE = re.compile(r"(\d+)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?", re.IGNORECASE)
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNITS_B = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "tib": 1024**4,
}


class InvalidRetention(ValueError):
    """A retention variable that does not parse, or is unbounded (the message names it)."""


def parse_duration_s(text: str) -> int:
    """``90d``, ``12h``, ``30m``, ``45s`` as seconds; :class:`ValueError` otherwise."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"{text[:40]!r} is not a duration like 90d, 24h, 30m or 45s")
    return int(m.group(1)) * _UNITS_S[m.group(2)]


def usage_retention(
    env: Mapping[str, str] | None = None,
    *,
    age_env: str = USAGE_MAX_AGE_ENV,
    bytes_env: str = USAGE_MAX_BYTES_ENV,
    default_age_s: int = DEFAULT_MAX_AGE_S,
) -> tuple[int, int]:
    """``(max age in seconds, max bytes)`` of the ledger from :data:`USAGE_MAX_AGE_ENV` and
    :data:`USAGE_MAX_BYTES_ENV` (or of another stream from ``age_env`` and ``bytes_env``, as the
    text records' :func:`shared.usage_text.text_retention`); both always bounded (zero or negative
    is refused)."""
    source = os.environ if env is None else env
    age_raw = source.get(age_env, "").strip()
    bytes_raw = source.get(bytes_env, "").strip()
    max_age = default_age_s
    max_bytes = DEFAULT_MAX_BYTES
    if age_raw:
        try:
            max_age = parse_duration_s(age_raw)
        except ValueError as exc:
            raise InvalidRetention(f"{age_env}: {exc}") from None
        if max_age <= 0:
            raise InvalidRetention(f"{age_env}: must be more than 0 (the ledger is never unbounded)")
    if bytes_raw:
        m = _SIZE.fullmatch(bytes_raw)
        if m is None:
            raise InvalidRetention(f"{bytes_env}: {bytes_raw[:40]!r} is not a size like 1GiB or 500MB")
        max_bytes = int(m.group(1)) * _UNITS_B[(m.group(2) or "b").lower()]
        if max_bytes < MIN_MAX_BYTES:
            raise InvalidRetention(f"{bytes_env}: must be at least 1MiB, got {bytes_raw!r}")
    return max_age, max_bytes
