"""AsyncAPI document of the config service: ``faststream docs gen services.config.asyncapi:app``.

``modelbus.v1.config.get`` comes from the very ``register`` function the
service runs. ``modelbus.v1.config.events`` is published with
``broker.publish`` from :meth:`services.config.service.ConfigStore.apply`, so
it is declared here as a documentation-only publisher. The broker is never
started: importing this module opens no connection.
"""

from __future__ import annotations

from services.config.service import register
from shared import headers as H
from shared.asyncapi import SPEC_SERVER_URL, application, payload
from shared.bus import make_broker
from shared.envelopes import ConfigChanged
from shared.subjects import CONFIG_EVENTS, CONFIG_STREAM

broker = make_broker("config", specification_url=SPEC_SERVER_URL)
register(broker, {})

broker.publisher(
    CONFIG_EVENTS,
    schema=payload(ConfigChanged),
    description=(
        "Announced after every accepted configuration change, with header "
        f"{H.CONFIG_REVISION}. Published by ConfigStore.apply (broker.publish); "
        "this declaration only documents it."
    ),
)

app = application(
    broker,
    "config",
    "Sole writer of the routing configuration: compiles documents, stores the result in "
    f"the JetStream stream {CONFIG_STREAM!r} (one record per revision), announces each revision on "
    f"{CONFIG_EVENTS} and answers requests for the current configuration.",
)
