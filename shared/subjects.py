"""Every NATS subject and queue group modelbus uses, in one place.

Client-facing subjects start with ``llm.v1.``; internal ones with
``modelbus.v1.``. A breaking change to any message means a new version segment.
"""

from __future__ import annotations

CHAT_COMPLETIONS = "llm.v1.chat.completions"
"""Client request/reply subject for chat completions (OpenAI-shaped bodies)."""
ROUTER_QUEUE = "modelbus-router"
"""Queue group of the router workers on :data:`CHAT_COMPLETIONS`."""

PROVIDER_PREFIX = "modelbus.v1.provider"
"""Provider workers listen on ``modelbus.v1.provider.<type>.chat``."""


def provider_subject(provider_type: str) -> str:
    """The subject a router sends :class:`shared.envelopes.ProviderCall` messages to."""
    return f"{PROVIDER_PREFIX}.{provider_type}.chat"


def provider_outcome_subject(provider_type: str) -> str:
    """Where a router asks every worker of ``provider_type`` what became of an attempt it heard
    nothing more about (``services/providers/outcomes.py``); the one holding it answers."""
    return f"{PROVIDER_PREFIX}.{provider_type}.outcome"


def outcome_subject_of(call_subject: str) -> str:
    """The outcome subject that goes with a provider call subject (``...<type>.chat``)."""
    return call_subject.rsplit(".", 1)[0] + ".outcome"


def provider_queue(provider_type: str) -> str:
    """The queue group shared by every worker serving ``provider_type``."""
    return f"modelbus-provider-{provider_type}"


SECRETS_GET = "modelbus.v1.secrets.get"
"""Request/reply: a provider worker asks for a credential by reference."""
SECRETS_QUEUE = "modelbus-secrets"
SECRETS_PUT = "modelbus.v1.secrets.put"
"""Request/reply (admin): store a secret value; replies with :class:`shared.envelopes.SecretInfo`."""
SECRETS_DELETE = "modelbus.v1.secrets.delete"
"""Request/reply (admin): delete a stored secret; replies with :class:`shared.envelopes.SecretInfo`."""
SECRETS_LIST = "modelbus.v1.secrets.list"
"""Request/reply (admin): metadata of every secret, never a value (:class:`shared.envelopes.SecretList`)."""
SECRETS_DESCRIBE = "modelbus.v1.secrets.describe"
"""Request/reply (admin): presence and provenance of credential references
(:class:`shared.envelopes.SecretsDescribe` → :class:`shared.envelopes.SecretList`), never values."""
SECRETS_CHANGED = "modelbus.v1.secrets.changed"
"""Event: a secret was set or deleted (:class:`shared.envelopes.SecretChanged`); caches drop it."""
SECRETS_BUCKET = "modelbus_secrets"
"""JetStream KV bucket (file storage) of AES-256-GCM encrypted secrets, owned by the secrets service."""

CONFIG_STREAM = "MODELBUS_CONFIG"
"""JetStream stream (file storage): one :class:`shared.admin.ConfigRecord` per revision.

The stream sequence *is* the revision, so every accepted change gets a
monotonically increasing revision, an apply is atomic (one message), and
history and rollback read the same log. Only the config service publishes.
"""
CONFIG_LOG = "modelbus.v1.config.log"
"""Subject of :data:`CONFIG_STREAM`. Routers consume it from the last message on."""
CONFIG_EVENTS = "modelbus.v1.config.events"
"""The config service publishes a :class:`shared.envelopes.ConfigChanged` per changed resource."""
CONFIG_GET = "modelbus.v1.config.get"
"""Request/reply: the current compiled routing configuration."""
CONFIG_APPLY = "modelbus.v1.config.apply"
"""Request/reply (admin): :class:`shared.admin.ApplyRequest` → :class:`shared.admin.ApplyResult`."""
CONFIG_RESOURCES = "modelbus.v1.config.resources"
"""Request/reply (admin): :class:`shared.admin.ResourceQuery` → :class:`shared.admin.ResourceList`."""
CONFIG_DELETE = "modelbus.v1.config.delete"
"""Request/reply (admin): :class:`shared.admin.DeleteRequest` → :class:`shared.admin.ApplyResult`."""
CONFIG_HISTORY = "modelbus.v1.config.history"
"""Request/reply (admin): :class:`shared.admin.HistoryQuery` → :class:`shared.admin.HistoryList`."""
CONFIG_ROLLBACK = "modelbus.v1.config.rollback"
"""Request/reply (admin): :class:`shared.admin.RollbackRequest` → :class:`shared.admin.ApplyResult`."""
CONFIG_WAIT = "modelbus.v1.config.wait"
"""Request/reply (admin): :class:`shared.admin.WaitRequest` → :class:`shared.admin.RouterList` once
every live router is at the revision or later."""
CONFIG_ROUTERS = "modelbus.v1.config.routers"
"""Request/reply (admin): live routers and their revisions (:class:`shared.admin.RouterList`)."""
CONFIG_KEYS_CREATE = "modelbus.v1.config.keys.create"
"""Request/reply (admin): store a gateway API key's hash (:class:`shared.gateway_keys.KeyCreateRequest`
→ :class:`shared.gateway_keys.KeyCreateResult`)."""
CONFIG_KEYS_LIST = "modelbus.v1.config.keys.list"
"""Request/reply (admin): :class:`shared.gateway_keys.KeyListRequest` → :class:`shared.gateway_keys.KeyList`."""
CONFIG_KEYS_DELETE = "modelbus.v1.config.keys.delete"
"""Request/reply (admin): revoke a key (:class:`shared.gateway_keys.KeyDeleteRequest` →
:class:`shared.gateway_keys.KeyInfo`)."""
CONFIG_KEYS_SUBJECTS = "modelbus.v1.config.keys.*"
"""The three subjects above (what the config service subscribes to)."""
GATEWAY_KEYS_BUCKET = "modelbus_gateway_keys"
"""JetStream KV bucket (file storage, history 1): key name → :class:`shared.gateway_keys.StoredKey`.
Only ``config-state`` writes it; the ``gateway`` identity only reads and watches it."""
AUDIT_VERIFY = "modelbus.v1.audit.verify"
"""Request/reply (admin): walk the audit chain (:class:`shared.admin.AuditReport`)."""
CONFIG_QUEUE = "modelbus-config"

ROUTER_STATUS = "modelbus.v1.router.status"
"""Scatter/gather: every router (no queue group) replies with a :class:`shared.admin.RouterStatus`."""
ROUTER_REVISIONS = "modelbus.v1.router.revisions"
"""Event: a router publishes its :class:`shared.admin.RouterStatus` whenever it installs a revision."""
BREAKERS_BUCKET = "modelbus_breakers"
"""JetStream KV bucket: open circuit breakers shared by all routers (entries expire with their cooldown)."""
BUDGETS_BUCKET = "modelbus_budgets"
"""JetStream KV bucket: tokens used per (policy, run), updated with compare-and-swap by every router."""
RATE_LIMITS_BUCKET = "modelbus_rate_limits"
"""JetStream KV bucket: requests and tokens per (RateLimit or endpoint quota, value, minute), updated with
compare-and-swap by every router (``services.router.ratelimits``); entries expire after a few minutes."""
RUNS_BUCKET = "modelbus_runs"
"""JetStream KV bucket: run id → the revision its first request was routed at (run pinning)."""

AUDIT_STREAM = "MODELBUS_AUDIT"
"""JetStream stream (file storage) of the hash-chained audit log."""
AUDIT_SUBJECT = "modelbus.v1.audit.entries"
"""Subject of :data:`AUDIT_STREAM`; only the config service appends to it."""

USAGE_STREAM = "MODELBUS_USAGE"
"""JetStream stream (file storage) of the usage ledger: one :class:`shared.usage.UsageRecord` per
final answer. Bounded by age and size (``MODELBUS_USAGE_MAX_AGE``, ``MODELBUS_USAGE_MAX_BYTES``), the
oldest records dropped first; created only by ``config-state``, never deleted or purged."""
USAGE_RECORDS = "modelbus.v1.usage.records"
"""Subject of :data:`USAGE_STREAM`; only routers (``router-state``) publish to it, without waiting for an ack."""
USAGE_TEXT_STREAM = "MODELBUS_USAGE_TEXT"
"""JetStream stream (file storage) of prompt and completion text, one :class:`shared.usage_text.TextRecord`
per answered request of an agent with ``record_text``. Bounded by ``MODELBUS_USAGE_TEXT_MAX_AGE`` (default
30 days) and ``MODELBUS_USAGE_TEXT_MAX_BYTES``; created only by ``config-state``, read only by ``admin``,
never deleted or purged."""
USAGE_TEXT = "modelbus.v1.usage.text"
"""Subject of :data:`USAGE_TEXT_STREAM` (one JSON array of records per message,
:func:`shared.usage_text.decode_text_records`); only provider workers (``providers``) publish to it,
without an ack."""

SPAN_NAMES: dict[str, str] = {
    CHAT_COMPLETIONS: "route chat.completions",
    SECRETS_GET: "secrets.get",
    CONFIG_GET: "config.get",
}
"""Span names per subject; spans never carry inbox subjects in their names."""
