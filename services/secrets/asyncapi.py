"""AsyncAPI document of the secrets service: ``faststream docs gen services.secrets.asyncapi:app``.

Built from the very ``register`` function the service runs, on a broker that
is never started: importing this module opens no connection.
``modelbus.v1.secrets.changed`` is published on the state connection after
put and delete, so it is declared here as a documentation-only publisher.
"""

from __future__ import annotations

from services.secrets.service import SecretsService
from services.secrets.wire import register
from shared.asyncapi import SPEC_SERVER_URL, application, payload
from shared.bus import make_broker
from shared.envelopes import SecretChanged
from shared.subjects import SECRETS_BUCKET, SECRETS_CHANGED

broker = make_broker("secrets", specification_url=SPEC_SERVER_URL)
register(broker, SecretsService(env={}))

broker.publisher(
    SECRETS_CHANGED,
    schema=payload(SecretChanged),
    description=(
        "Announced after every put or delete of a stored secret, with the name and operation only; "
        "provider workers drop cached credentials for secret:<name> and <name>. Published by the put "
        "and delete handlers (broker.publish); this declaration only documents it."
    ),
)

app = application(
    broker,
    "secrets",
    "Resolves credential references for provider workers: env:VAR (this service's own environment), "
    "secret:NAME (stored secrets) and bare NAME (ORLOJ_SECRET_<NAME>, then the stored secret). Stored "
    f"secrets are AES-256-GCM encrypted in the JetStream KV bucket {SECRETS_BUCKET!r} and administered "
    "with put, delete, list and describe requests. Values are never logged, traced or included in errors.",
)
