"""Header names of the wire contract (NATS headers, HTTP-style names).

Request headers a client may set are listed first; the rest are set by modelbus.
"""

from __future__ import annotations

# Client → router (all optional).
AGENT = "Modelbus-Agent"
"""Agent binding, ``name`` or ``namespace/name``."""
RUN_ID = "Modelbus-Run-Id"
"""Groups requests of one agent run (pinning, budgets)."""
SENSITIVITY = "Modelbus-Sensitivity"
"""``public`` | ``internal`` | ``confidential``."""
ENV = "Modelbus-Env"
"""Per-request BYO endpoint: a JSON object with the allowlisted Aegis ``ANTHROPIC_*`` keys."""
TIMEOUT_MS = "Modelbus-Timeout-Ms"
"""Overall deadline for the request, in milliseconds. Also sent router → provider as the time left."""
REQUEST_ID = "Modelbus-Request-Id"
"""Caller's id for the request; generated when absent and echoed on every reply."""
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

SENSITIVITY_VALUES = ("public", "internal", "confidential")

# Replies.
STATUS = "Modelbus-Status"
"""HTTP-like status of a reply: ``200`` or an error status."""
PROVIDER = "Modelbus-Provider"
"""Provider type that answered, e.g. ``openai`` or ``mock``."""
ENDPOINT = "Modelbus-Endpoint"
"""Name of the endpoint that answered."""
MODEL = "Modelbus-Model"
"""Upstream model that answered."""
ATTEMPTS = "Modelbus-Attempts"
"""Number of upstream attempts made for this request."""
ROUTER = "Modelbus-Router"
"""Id of the router worker that answered (matches ``modelbus get routers``)."""
USAGE = "Modelbus-Usage"
"""``<prompt_tokens> <completion_tokens>`` on a provider's success reply or clean stream end,
so routers can charge token budgets without decoding bodies."""
RETRY_AFTER = "Retry-After"
"""Whole seconds to wait before retrying (rounded up), on 429 and 503 replies when known."""
RETRY_AFTER_MS = "Modelbus-Retry-After-Ms"
"""The same hint in milliseconds, exact; routers read this one."""

# Streaming.
SEQ = "Modelbus-Seq"
"""Position of a stream message, numbered from 0."""
STREAM = "Modelbus-Stream"
"""``end`` on the one message that ends a stream."""
STREAM_END = "end"

# Internal.
CONFIG_REVISION = "Modelbus-Config-Revision"
"""Routing-config revision a router used for a request."""
DELIVERED = "Modelbus-Delivered"
"""``1`` on a provider's bodiless notice to the router: the completion already went
straight to the client (direct delivery, see ``ProviderCall.deliver_to``)."""
