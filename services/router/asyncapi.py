"""AsyncAPI document of the router: ``faststream docs gen services.router.asyncapi:app``.

The router serves ``llm.v1.chat.completions`` and calls provider workers with
raw nats-py (:class:`shared.bus.RequestServer`, ``nc.request``), not FastStream,
because the hot path has two hops and FastStream's costs ~0.5 ms more per hop.
So its channels are declared here for documentation only, on a broker that is
never started, with the real subjects and the real msgspec payload types.
"""

from __future__ import annotations

from shared import headers as H
from shared.asyncapi import RAW_NATS_NOTE, SPEC_SERVER_URL, application, payload
from shared.bus import make_broker
from shared.chat import ChatCompletionRequest
from shared.envelopes import ProviderCall
from shared.routing import PROVIDER_TYPES, Endpoint
from shared.subjects import CHAT_COMPLETIONS, CONFIG_STREAM, ROUTER_QUEUE, provider_outcome_subject, provider_subject

broker = make_broker("router", specification_url=SPEC_SERVER_URL)


@broker.subscriber(
    CHAT_COMPLETIONS,
    queue=ROUTER_QUEUE,
    description=(
        "OpenAI Chat Completions request (request/reply). The reply is a chat.completion body, "
        f"an error envelope with a {H.STATUS} header, or, with stream: true, chat.completion.chunk "
        f"messages ending with {H.STREAM}: {H.STREAM_END}. " + RAW_NATS_NOTE
    ),
)
async def serve_request(body: payload(ChatCompletionRequest)) -> None:  # type: ignore[valid-type]
    """Documentation only; the runtime handler is services.router.service.Router.serve_request."""


for _provider_type in PROVIDER_TYPES:
    broker.publisher(
        provider_subject(_provider_type),
        schema=payload(ProviderCall, endpoint=Endpoint, request=ChatCompletionRequest),
        description=(
            f"One attempt of a request, sent to the {_provider_type!r} provider workers "
            "(request/reply; the reply is relayed to the client). Sent with raw nats-py "
            "(nc.request), not FastStream; this declaration only documents it."
        ),
    )

for _provider_type in PROVIDER_TYPES:
    broker.publisher(
        provider_outcome_subject(_provider_type),
        schema=str,
        description=(
            f"Asks the {_provider_type!r} workers what became of a silent attempt (the body is its reply "
            "subject) before taking its worker for lost (request/reply, with nc.request; this "
            "declaration only documents it)."
        ),
    )

app = application(
    broker,
    "router",
    "Stateless router workers: resolve each chat completion request against the routing "
    f"table read from the JetStream stream {CONFIG_STREAM!r} and forward it to a provider "
    "worker, with retries and failover.",
)
