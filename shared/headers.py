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
KEEPALIVE = "Modelbus-Keepalive"
"""``1`` on a request: the client accepts keepalive messages (streams always get them). ``1`` on a
message: a keepalive, with no body, no sequence number and no status; skip it (see
:mod:`shared.replies`)."""
FORMAT = "Modelbus-Format"
"""The API format of a request's body when it is not the internal contract: ``openai`` (a client's
own Chat Completions body, unknown fields included) or ``anthropic`` (a Messages body). Set by the
HTTP gateway; a provider worker whose upstream speaks that format sends the body on as it came,
with only ``model`` set (docs/contract.md, "Native bodies"). On a reply or a stream's chunk 0:
the body is in that format, not the internal one."""
OPERATION = "Modelbus-Operation"
"""``count_tokens``: count the request's input tokens at the provider instead of answering it (an
Anthropic ``count_tokens`` body, ``Modelbus-Format: anthropic``); absent: a chat request."""
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

SENSITIVITY_VALUES = ("public", "internal", "confidential")
FORMAT_VALUES = ("openai", "anthropic")
COUNT_TOKENS = "count_tokens"
"""The one :data:`OPERATION` besides chat."""

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
"""``<prompt> <completion> [<cache_read> [<cache_write> [<reasoning>]]]`` (whole numbers; the
first two include the others, trailing zeros left off) on a provider's success reply or clean stream
end, so routers can charge token budgets and write the usage ledger without decoding bodies
(:func:`shared.usage.usage_header`, :func:`shared.usage.parse_usage_header`)."""
RETRY_AFTER = "Retry-After"
"""Whole seconds to wait before retrying (rounded up), on 429 and 503 replies when known."""
RETRY_AFTER_MS = "Modelbus-Retry-After-Ms"
"""The same hint in milliseconds, exact; routers read this one."""
OVERHEAD_MS = "Modelbus-Overhead-Ms"
"""On every answer (a completion, an error, a stream's first chunk and terminator): milliseconds
modelbus spent on the request, excluding the upstream, summed over the hops that each measured
their own time (:mod:`shared.overhead`). Also gateway → router and router → provider (in the
delivery headers): the sum so far."""

# Streaming.
SEQ = "Modelbus-Seq"
"""Position of a stream message, numbered from 0."""
STREAM = "Modelbus-Stream"
"""``end`` on the one message that ends a stream."""
STREAM_END = "end"
"""The value of :data:`STREAM` on a stream's terminator."""

# Internal.
KEY = "Modelbus-Key"
"""Gateway → router: the name (never the value) of the API key a request came with, for the usage
ledger. Routers trust it only on a request whose reply inbox is the gateway's (``_INBOX_gateway.``),
which the broker reserves to the gateway identity; from anyone else it is ignored."""
CONFIG_REVISION = "Modelbus-Config-Revision"
"""Routing-config revision a router used for a request."""
DELIVERED = "Modelbus-Delivered"
"""``1`` on a provider's bodiless notice to the router: the completion already went
straight to the client (direct delivery, see ``ProviderCall.deliver_to``): a completion, an
error, or a stream's terminator."""
HEARTBEAT = "Modelbus-Heartbeat"
"""Provider → router while a call is in flight: a bodiless sign of life, every
``shared.replies.HEARTBEAT_S``; the value is the number of messages delivered to the client so far."""
COMMITTED = "Modelbus-Committed"
"""On the provider's notice that a stream's first content reached the client (no failover after it):
the number of messages delivered with it."""
FENCED = "Modelbus-Fenced"
"""Provider → router: a stream stopped after this many messages because the worker may already
be taken for lost; the router ends it with the error terminator."""
RECORD_TEXT = "Modelbus-Record-Text"
"""Router → provider: ``1`` when the request runs as an agent with ``record_text`` (the operator's
opt-in): the worker stores the prompt and completion text (:mod:`shared.usage_text`). The call then
also carries :data:`AGENT` and :data:`RUN_ID`. Only routers may publish provider calls, and they
build the call's headers themselves, so a client cannot set it."""
DISPATCHED_AT = "Modelbus-Dispatched-At"
"""Router → provider: wall-clock milliseconds when the call was sent, so a worker knows how long
it sat in a queue (a call that waited longer than the router waits for a sign of life is fenced)."""
