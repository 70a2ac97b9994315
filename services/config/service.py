"""The config service process: compile, persist in JetStream KV, announce, answer."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
from faststream.nats import NatsBroker, NatsMessage, NatsResponse
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from services.config.boot_env import endpoints_from_env
from services.config.documents import compile_config, load_documents, parse_resources
from shared import headers as H
from shared.envelopes import ConfigChanged
from shared.routing import RoutingConfig, routing_decoder, routing_encoder
from shared.subjects import CONFIG_BUCKET, CONFIG_EVENTS, CONFIG_GET, CONFIG_QUEUE, CONFIG_ROUTING_KEY

log = logging.getLogger("modelbus.config")

EXAMPLE_CONFIG = Path(__file__).with_name("example.yaml")
BUCKET_CONFIG = KeyValueConfig(
    bucket=CONFIG_BUCKET,
    history=64,
    storage=StorageType.FILE,
    description="modelbus routing configuration (written only by the config service)",
)


def load_boot_config(path: str | None) -> RoutingConfig:
    """Compile the configuration given at boot: a file, or the built-in example.

    The example also gets an endpoint for every OpenAI-format vendor whose API
    key is in the environment.
    """
    if path:
        text = Path(path).read_text()
        docs = load_documents(text, source=path)
    else:
        docs = load_documents(EXAMPLE_CONFIG.read_text(), source="built-in example")
        docs.extend(endpoints_from_env())
    return compile_config(parse_resources(docs))


async def open_bucket(broker: NatsBroker) -> KeyValue:
    """The config KV bucket, created with file storage on first use."""
    js = broker.connection.jetstream()
    try:
        return await js.key_value(CONFIG_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(config=BUCKET_CONFIG)


class ConfigStore:
    """Writes compiled configurations with increasing revisions."""

    def __init__(self, broker: NatsBroker, kv: KeyValue) -> None:
        self._broker = broker
        self._kv = kv
        self.current: RoutingConfig | None = None
        self.current_bytes = b""

    async def load_current(self) -> RoutingConfig | None:
        """Read what is stored (after a restart, the previous state)."""
        try:
            entry = await self._kv.get(CONFIG_ROUTING_KEY)
        except KeyNotFoundError:
            return None
        if entry.value:
            self.current = routing_decoder.decode(entry.value)
            self.current_bytes = entry.value
        return self.current

    async def apply(self, config: RoutingConfig) -> RoutingConfig:
        """Store ``config`` as the next revision, unless it equals what is stored.

        The write is a compare-and-swap on the KV revision, so two config
        services can never interleave revisions.
        """
        try:
            entry = await self._kv.get(CONFIG_ROUTING_KEY)
        except KeyNotFoundError:
            entry = None
        previous = routing_decoder.decode(entry.value) if entry and entry.value else None
        if previous is not None and msgspec.structs.replace(previous, revision=0) == msgspec.structs.replace(
            config, revision=0
        ):
            self.current, self.current_bytes = previous, bytes(entry.value or b"") if entry else b""
            log.info("configuration unchanged at revision %d", previous.revision)
            return previous
        revision = (previous.revision if previous else 0) + 1
        new = msgspec.structs.replace(config, revision=revision)
        data = routing_encoder.encode(new)
        if entry is None:
            await self._kv.create(CONFIG_ROUTING_KEY, data)
        else:
            await self._kv.update(CONFIG_ROUTING_KEY, data, last=entry.revision)
        self.current, self.current_bytes = new, data
        await self._broker.publish(
            ConfigChanged(revision=revision), CONFIG_EVENTS, headers={H.CONFIG_REVISION: str(revision)}
        )
        log.info(
            "configuration revision %d: %d endpoints, %d aliases",
            revision,
            len(new.endpoints),
            len(new.aliases),
        )
        return new


def register(broker: NatsBroker, store_ref: list[ConfigStore]) -> None:
    """Control-plane subscribers of the config service."""

    @broker.subscriber(CONFIG_GET, queue=CONFIG_QUEUE, max_workers=8)
    async def get_config(msg: NatsMessage) -> NatsResponse:
        """Reply with the current compiled routing configuration."""
        store = store_ref[0] if store_ref else None
        if store is None or store.current is None:
            return NatsResponse(
                b'{"error":{"message":"configuration not loaded yet","type":"service_unavailable","retryable":true}}',
                headers={H.STATUS: "503"},
            )
        return NatsResponse(
            store.current_bytes,
            headers={H.STATUS: "200", H.CONFIG_REVISION: str(store.current.revision)},
        )
