"""AsyncAPI document of the secrets service: ``faststream docs gen services.secrets.asyncapi:app``.

Built from the very ``register`` function the service runs, on a broker that
is never started: importing this module opens no connection.
"""

from __future__ import annotations

from services.secrets.service import register
from shared.asyncapi import SPEC_SERVER_URL, application
from shared.bus import make_broker

broker = make_broker("secrets", specification_url=SPEC_SERVER_URL)
register(broker)

app = application(
    broker,
    "secrets",
    "Resolves credential references (env:VAR, from this service's own environment) for "
    "provider workers. Values are never logged, traced or persisted.",
)
