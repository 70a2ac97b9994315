"""Resolve credential references for provider workers over request/reply.

Supported now: ``env:VAR``, read from this service's own environment (never the
requester's). Errors name the reference, never a value, and no value is ever
logged or put on a span.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import msgspec
from faststream.nats import NatsBroker, NatsMessage, NatsResponse

from shared import headers as H
from shared.envelopes import Credential, CredentialRequest
from shared.errors import InvalidRequest, ModelbusError, NotFound
from shared.subjects import SECRETS_GET, SECRETS_QUEUE

log = logging.getLogger("modelbus.secrets")

_request_decoder = msgspec.json.Decoder(CredentialRequest)
_encoder = msgspec.json.Encoder()


def resolve(ref: str, env: Mapping[str, str] | None = None) -> str:
    """The value behind a reference; raises a typed error naming the reference."""
    env = os.environ if env is None else env
    scheme, sep, name = ref.partition(":")
    if not sep or not name:
        raise InvalidRequest(f"credential reference {ref!r} is not of the form scheme:name", param="ref")
    if scheme == "env":
        value = env.get(name)
        if not value:
            raise NotFound(f"credential reference {ref!r}: variable {name} is not set", code="secret_not_found")
        return value
    raise NotFound(f"credential reference {ref!r}: unsupported source {scheme!r}", code="secret_not_found")


def answer(body: bytes, env: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """The reply body and headers for one request; never raises."""
    try:
        req = _request_decoder.decode(body)
        value = resolve(req.ref, env)
    except msgspec.MsgspecError as exc:
        err: ModelbusError = InvalidRequest(f"malformed credential request: {exc}")
    except ModelbusError as exc:
        err = exc
    else:
        return _encoder.encode(Credential(value=value)), {H.STATUS: "200"}
    log.warning("credential request refused: %s", err.message)
    return err.to_json(), {H.STATUS: str(err.http_status)}


def register(broker: NatsBroker) -> None:
    """Control-plane subscribers of the secrets service."""

    @broker.subscriber(SECRETS_GET, queue=SECRETS_QUEUE, max_workers=16)
    async def get_credential(msg: NatsMessage) -> NatsResponse:
        """Reply with a :class:`shared.envelopes.Credential` or an error envelope."""
        body, headers = answer(msg.body)
        return NatsResponse(body, headers=headers)
