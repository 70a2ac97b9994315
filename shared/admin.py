"""Admin messages: configuration changes, queries, router status and audit.

These travel on the ``modelbus.v1.config.*``, ``modelbus.v1.router.*`` and
``modelbus.v1.audit.*`` subjects (see :mod:`shared.subjects`). The CLI, the
HTTP admin API and tests all speak them; replies use the usual
``Modelbus-Status`` header and error envelope.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from shared.routing import RoutingConfig


class StoredResource(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One configuration resource in modelbus's native form."""

    kind: str
    """``ModelEndpoint``, ``ModelAlias``, ``Agent``, ``AgentPolicy`` or ``RoutingDefaults``."""
    name: str
    """Full name: ``name`` or ``namespace/name``."""
    spec: dict[str, Any]
    """The native ``spec`` (modelbus.dev/v1)."""
    source: str = "modelbus.dev/v1"
    """The format it was written in: ``orloj.dev/v1``, ``aegis``, ``env:aurorasoc``, ..."""


class Change(Struct, kw_only=True, frozen=True):
    """What one revision did to one resource."""

    op: Literal["create", "update", "delete"]
    kind: str
    name: str


class AuditAnchor(Struct, kw_only=True, frozen=True):
    """The audit chain's head when a revision was committed: ties the config log to the audit log.

    ``modelbus audit verify`` fails when the audit log no longer holds this
    entry with this seal (it was truncated, rebuilt or deleted), or holds no
    later entry recording the revision. See docs/audit.md.
    """

    index: int
    """Index of the newest audit entry at commit time; 0 when the log was empty."""
    mac: str
    """That entry's seal (64 zeros for index 0)."""


class ConfigRecord(Struct, kw_only=True, frozen=True):
    """One message of the config log: everything at one revision."""

    revision: int
    """Stream sequence of this record."""
    time: str
    """RFC 3339 UTC time of the change."""
    actor: str
    """Who made it (``boot``, ``cli:alice``, ``http:admin``, ...)."""
    action: Literal["apply", "delete", "rollback", "boot"]
    """What kind of change."""
    changes: list[Change]
    """Resources created, updated or deleted."""
    resources: list[StoredResource]
    """The whole desired state after the change."""
    routing: RoutingConfig
    """The compiled routing configuration routers serve."""
    audit: AuditAnchor | None = None
    """The audit head this revision was committed after (absent in records from before anchors)."""


class RoutingRecord(Struct, kw_only=True, frozen=True):
    """The part of a :class:`ConfigRecord` a router reads (other fields are skipped)."""

    revision: int
    routing: RoutingConfig


class ApplyRequest(Struct, kw_only=True, frozen=True):
    """Apply documents (multi-document YAML or JSON, any supported format)."""

    documents: str
    """The file's text."""
    actor: str = "unknown"
    """Who applies."""
    dry_run: bool = False
    """Validate and report the changes without storing anything."""
    source: str = "<input>"
    """File name, for error messages."""


class ApplyResult(Struct, kw_only=True, frozen=True):
    """Outcome of an apply, delete or rollback."""

    revision: int
    """The new revision (or the current one when nothing changed or on a dry run)."""
    changes: list[Change]
    """What changed; empty when the state already matched."""
    dry_run: bool = False
    secrets: list[str] = []
    """Names of secrets handed to the secrets service (never values)."""


class ResourceQuery(Struct, kw_only=True, frozen=True):
    """List resources of a kind, or one by name."""

    kind: str | None = None
    name: str | None = None


class ResourceList(Struct, kw_only=True, frozen=True):
    """Reply of a resource query."""

    revision: int
    items: list[StoredResource]


class DeleteRequest(Struct, kw_only=True, frozen=True):
    """Delete one resource, or with ``kind="Secret"`` one stored secret (audited, no revision)."""

    kind: str
    """A configuration kind, or :data:`SECRET_KIND`."""
    name: str
    actor: str = "unknown"


SECRET_KIND = "Secret"
"""``DeleteRequest.kind`` that deletes a stored secret through the config service.

The reply is an :class:`ApplyResult` with no changes, the current revision and
``secrets=[name]``: a secret is not part of the routing configuration, so its
deletion makes no revision, only an audit entry (``secret.delete``).
"""


class HistoryQuery(Struct, kw_only=True, frozen=True):
    """Revisions, newest first; filtered to one resource when kind and name are set."""

    kind: str | None = None
    name: str | None = None
    limit: int = 50


class HistoryEntry(Struct, kw_only=True, frozen=True):
    revision: int
    time: str
    actor: str
    action: str
    changes: list[Change]


class HistoryList(Struct, kw_only=True, frozen=True):
    items: list[HistoryEntry]


class RollbackRequest(Struct, kw_only=True, frozen=True):
    """Make the state of revision ``to`` current again, as a new revision."""

    to: int
    actor: str = "unknown"


class WaitRequest(Struct, kw_only=True, frozen=True):
    revision: int
    timeout_ms: int = 10_000


class TargetHealth(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One router's view of one target (endpoint and model)."""

    endpoint: str
    model: str
    in_flight: int = 0
    latency_ewma_ms: float | None = None
    """EWMA of non-streamed latency."""
    ttft_ewma_ms: float | None = None
    """EWMA of time to first token (streams)."""
    errors: int = 0
    successes: int = 0
    last_error_status: int | None = None


class BreakerState(Struct, kw_only=True, frozen=True):
    """An open circuit breaker (shared by every router)."""

    endpoint: str
    model: str
    retry_after_s: float
    """Seconds until one probe request is let through."""


class RouterStatus(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What a router reports about itself."""

    router_id: str
    revision: int
    """Revision of the routing table it serves."""
    config_hash: str
    """sha256 of the compiled config it serves: equal hashes mean identical tables."""
    in_flight: int = 0
    started_at: str = ""
    targets: list[TargetHealth] = []
    """Per-target latency, in-flight and error counts (status replies only, not announcements)."""
    breakers: list[BreakerState] = []
    """Open breakers (status replies only)."""


class RouterList(Struct, kw_only=True, frozen=True):
    items: list[RouterStatus]


class AuditReport(Struct, kw_only=True, frozen=True):
    """Result of walking the audit chain and checking the config log against it."""

    ok: bool
    entries: int
    """Entries checked."""
    broken_at: int | None = None
    """Audit stream sequence of the first broken link (for a break the anchors found, where the
    missing or mismatching entry is or should be)."""
    reason: str | None = None
    revision: int | None = None
    """The configuration revision at fault, when the break is between the two logs."""
    revisions: int = 0
    """Configuration revisions checked against the chain."""
    legacy_entries: int = 0
    """Entries from before the chain was keyed (a prefix sealed by the first keyed entry)."""


KINDS = ("ModelEndpoint", "ModelAlias", "Agent", "AgentPolicy", "ModelPrice", "Budget", "RateLimit", "RoutingDefaults")
"""Configuration kinds, in display order."""
_KIND_NAMES = {
    **{k.lower(): k for k in KINDS},
    "endpoint": "ModelEndpoint",
    "endpoints": "ModelEndpoint",
    "modelendpoints": "ModelEndpoint",
    "model-endpoint": "ModelEndpoint",
    "model-endpoints": "ModelEndpoint",
    "alias": "ModelAlias",
    "aliases": "ModelAlias",
    "modelaliases": "ModelAlias",
    "agents": "Agent",
    "policy": "AgentPolicy",
    "policies": "AgentPolicy",
    "agentpolicies": "AgentPolicy",
    "defaults": "RoutingDefaults",
    "modelprices": "ModelPrice",
    "model-price": "ModelPrice",
    "model-prices": "ModelPrice",
    "budgets": "Budget",
    "ratelimits": "RateLimit",
    "rate-limit": "RateLimit",
    "rate-limits": "RateLimit",
}


def canonical_kind(kind: str) -> str:
    """``endpoints``, ``alias``, ``agentpolicy``... → the kind's canonical name."""
    found = _KIND_NAMES.get(kind.strip().lower())
    if found is None:
        from shared.errors import InvalidRequest

        raise InvalidRequest(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", param="kind")
    return found


admin_encoder = msgspec.json.Encoder()
