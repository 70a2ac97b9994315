"""The secrets service on the bus: decoding requests, encoding replies, and the guarded subscribers.

Every handler takes the raw message and decodes it itself, so malformed input
always gets an error reply rather than a FastStream validation error, and no
handler ever raises.

**Reply subjects are checked first.** A reply subject is whatever the
requester wrote, and nats-server checks no permission on it, so a request
with reply ``$KV.modelbus_secrets.<key>`` or ``modelbus.v1.secrets.changed``
would have the service publish its answer there. The serving identity
(``secrets``) may publish only to its requesters' inboxes, so the broker
refuses such a publish; and before that, each handler asks the
:class:`shared.bus.ReplyGuard` of :func:`shared.identities.requester_inboxes`
(``_INBOX_providers.``, ``_INBOX_config.``, ``_INBOX_admin.``) and, for any
other reply subject, or none, does nothing at all: no lookup, no write, no
answer, one rate-limited warning. The subscribers are ``no_reply`` and publish
the answer themselves, so nothing but an allowed inbox is ever answered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from faststream.nats import NatsBroker, NatsMessage

from services.secrets.service import SecretsService
from shared import headers as H
from shared import identities
from shared.bus import ReplyGuard
from shared.envelopes import Credential, CredentialRequest, SecretDelete, SecretPut, SecretsDescribe
from shared.errors import InvalidRequest, ModelbusError
from shared.subjects import (
    SECRETS_DELETE,
    SECRETS_DESCRIBE,
    SECRETS_GET,
    SECRETS_LIST,
    SECRETS_PUT,
    SECRETS_QUEUE,
)

log = logging.getLogger("modelbus.secrets")

Reply = tuple[bytes, dict[str, str]]
Answer = Callable[[SecretsService, bytes], Awaitable[Reply]]

_request_decoder = msgspec.json.Decoder(CredentialRequest)
_put_decoder = msgspec.json.Decoder(SecretPut)
_delete_decoder = msgspec.json.Decoder(SecretDelete)
_list_decoder = msgspec.json.Decoder(dict[str, Any])
_describe_decoder = msgspec.json.Decoder(SecretsDescribe)
_encoder = msgspec.json.Encoder()


async def answer_get(service: SecretsService, body: bytes) -> Reply:
    """The reply to a credential request; never raises."""
    try:
        req = _request_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        return _refused(InvalidRequest(f"malformed credential request: {exc}"))
    try:
        value = await service.resolve(req.ref)
    except ModelbusError as err:
        return _refused(err)
    except Exception as exc:
        return _failed(f"credential reference {req.ref!r}", exc)
    return _encoder.encode(Credential(value=value)), {H.STATUS: "200"}


async def answer_put(service: SecretsService, body: bytes) -> Reply:
    """The reply to ``modelbus.v1.secrets.put``; never raises."""
    try:
        req = _put_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        return _refused(InvalidRequest(f"malformed secret put: {exc}"))
    return await _answer(service.put(req), f"put of secret {req.name!r}")


async def answer_delete(service: SecretsService, body: bytes) -> Reply:
    """The reply to ``modelbus.v1.secrets.delete``; never raises."""
    try:
        req = _delete_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        return _refused(InvalidRequest(f"malformed secret delete: {exc}"))
    return await _answer(service.delete(req), f"delete of secret {req.name!r}")


async def answer_list(service: SecretsService, body: bytes) -> Reply:
    """The reply to ``modelbus.v1.secrets.list`` (empty body or a JSON object); never raises."""
    if body.strip():
        try:
            _list_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            return _refused(InvalidRequest(f"malformed secret list request: {exc}"))
    return await _answer(service.list_secrets(), "secret list")


async def answer_describe(service: SecretsService, body: bytes) -> Reply:
    """The reply to ``modelbus.v1.secrets.describe``; never raises."""
    try:
        req = _describe_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        return _refused(InvalidRequest(f"malformed secret describe: {exc}"))
    return await _answer(service.describe(req), "secret describe")


async def _answer(work: Awaitable[msgspec.Struct], what: str) -> Reply:
    try:
        result = await work
    except ModelbusError as err:
        return _refused(err)
    except Exception as exc:
        return _failed(what, exc)
    return _encoder.encode(result), {H.STATUS: "200"}


def _refused(err: ModelbusError) -> Reply:
    log.warning("secrets request refused: %s", err.message)
    return err.to_json(), {H.STATUS: str(err.http_status)}


def _failed(what: str, exc: Exception) -> Reply:
    # The exception type only: its text could, in principle, quote a payload.
    log.error("%s failed: %s", what, type(exc).__name__)
    err = ModelbusError(f"{what} failed: secrets store error ({type(exc).__name__})", retryable=True)
    return err.to_json(), {H.STATUS: str(err.http_status)}


def reply_guard() -> ReplyGuard:
    """The guard of the secrets service: its requesters' inboxes only (plus ``_INBOX.`` when insecure)."""
    return ReplyGuard("secrets", identities.requester_inboxes("secrets"))


def register(broker: NatsBroker, service: SecretsService, guard: ReplyGuard | None = None) -> ReplyGuard:
    """Control-plane subscribers of the secrets service; returns the reply guard they share."""
    guard = guard or reply_guard()

    async def reply(msg: NatsMessage, subject: str, answer: Answer) -> None:
        target = msg.reply_to or None
        if not guard.allows(target):
            guard.refuse(subject, target)  # before anything else: no lookup, no write, no answer
            return
        assert target is not None
        body, headers = await answer(service, msg.body)
        await broker.connection.publish(target, body, headers=headers)

    @broker.subscriber(SECRETS_GET, queue=SECRETS_QUEUE, max_workers=16, no_reply=True)
    async def get_credential(msg: NatsMessage) -> None:
        """Reply with a :class:`shared.envelopes.Credential` or an error envelope."""
        await reply(msg, SECRETS_GET, answer_get)

    @broker.subscriber(SECRETS_PUT, queue=SECRETS_QUEUE, max_workers=4, no_reply=True)
    async def put_secret(msg: NatsMessage) -> None:
        """Store a :class:`shared.envelopes.SecretPut`; reply with its :class:`shared.envelopes.SecretInfo`."""
        await reply(msg, SECRETS_PUT, answer_put)

    @broker.subscriber(SECRETS_DELETE, queue=SECRETS_QUEUE, max_workers=4, no_reply=True)
    async def delete_secret(msg: NatsMessage) -> None:
        """Delete per a :class:`shared.envelopes.SecretDelete`; reply with a :class:`shared.envelopes.SecretInfo`."""
        await reply(msg, SECRETS_DELETE, answer_delete)

    @broker.subscriber(SECRETS_LIST, queue=SECRETS_QUEUE, max_workers=4, no_reply=True)
    async def list_secrets(msg: NatsMessage) -> None:
        """Reply with a :class:`shared.envelopes.SecretList`: metadata only, never a value."""
        await reply(msg, SECRETS_LIST, answer_list)

    @broker.subscriber(SECRETS_DESCRIBE, queue=SECRETS_QUEUE, max_workers=4, no_reply=True)
    async def describe_secrets(msg: NatsMessage) -> None:
        """Reply to a :class:`shared.envelopes.SecretsDescribe` with a :class:`shared.envelopes.SecretList`
        holding one item per reference, named by it: presence and provenance, never a value."""
        await reply(msg, SECRETS_DESCRIBE, answer_describe)

    return guard
