"""AsyncAPI document of the provider workers: ``faststream docs gen services.providers.asyncapi:app``.

Provider workers serve ``modelbus.v1.provider.<type>.chat`` with raw nats-py
(:class:`shared.bus.RequestServer`), not FastStream, for latency, and ask the
secrets service for credentials with ``nc.request``. Their channels are
declared here for documentation only, on a broker that is never started, with
the real subjects, queue groups and msgspec payload types: one subscriber per
provider type in :data:`services.providers.registry.ADAPTERS`.
"""

from __future__ import annotations

from services.providers.registry import ADAPTERS
from shared import headers as H
from shared.asyncapi import RAW_NATS_NOTE, SPEC_SERVER_URL, application, payload
from shared.bus import make_broker
from shared.chat import ChatCompletionRequest
from shared.envelopes import CredentialRequest, ProviderCall
from shared.routing import Endpoint
from shared.subjects import SECRETS_GET, provider_outcome_subject, provider_queue, provider_subject

broker = make_broker("providers", specification_url=SPEC_SERVER_URL)


async def serve_call(body: payload(ProviderCall, endpoint=Endpoint, request=ChatCompletionRequest)) -> None:  # type: ignore[valid-type]
    """Documentation only; the runtime handler is services.providers.worker.ProviderWorker.serve_call."""


for _provider_type in ADAPTERS:
    broker.subscriber(
        provider_subject(_provider_type),
        queue=provider_queue(_provider_type),
        description=(
            f"Calls for endpoints of provider type {_provider_type!r} (request/reply). The reply "
            f"is a chat.completion body, an error envelope with a {H.STATUS} header, or, when the "
            f"request streams, chat.completion.chunk messages ending with {H.STREAM}: "
            f"{H.STREAM_END}. " + RAW_NATS_NOTE
        ),
    )(serve_call)


async def answer_outcome(body: str) -> None:
    """Documentation only; the runtime handler is services.providers.outcomes.Outcomes."""


for _provider_type in ADAPTERS:
    broker.subscriber(
        provider_outcome_subject(_provider_type),
        description=(
            f"A router asks every {_provider_type!r} worker what became of an attempt it heard nothing "
            "more about; the body is that attempt's reply subject. The worker holding it answers with a "
            f"{H.HEARTBEAT} (still in flight) or the outcome it sent, again; the others stay silent. " + RAW_NATS_NOTE
        ),
    )(answer_outcome)

broker.publisher(
    SECRETS_GET,
    schema=payload(CredentialRequest),
    description=(
        "Asks the secrets service for the credential behind an endpoint's auth reference "
        "(request/reply; the reply is a Credential or an error envelope). Sent with raw "
        "nats-py (nc.request); this declaration only documents it."
    ),
)

app = application(
    broker,
    "providers",
    "Provider-adapter workers: turn a ProviderCall into the provider's native API call and "
    "reply with OpenAI-shaped completions or chunks. Served types: " + ", ".join(ADAPTERS) + ".",
)
