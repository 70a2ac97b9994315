"""Resolve credential references for provider workers, and administer stored secrets.

References (``CredentialRequest.ref``):

* ``env:VAR``: variable ``VAR`` of this service's own environment (never the
  requester's).
* ``secret:NAME``: the secret stored under ``NAME`` in the encrypted store
  (:mod:`services.secrets.store`).
* ``NAME`` (bare, as Orloj's ``auth.secretRef: openai-api-key``): first the
  environment variable ``ORLOJ_SECRET_<NAME>``, tried as written, with ``-``
  replaced by ``_``, and upper-cased with every other character ``_`` (Orloj's
  own normalisation); then the stored secret ``NAME``.

Admin subjects put, delete and list stored secrets, and describe credential
references (whether a value is behind them, and where from); every change is
announced on ``modelbus.v1.secrets.changed`` (name and operation only) so
provider workers drop cached copies. Errors name references and secret names,
never a value, and no value is ever logged or put on a span.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from faststream.nats import NatsBroker, NatsMessage, NatsResponse

from services.secrets.crypto import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, RecordUnreadable
from services.secrets.store import SecretStore, last4, name_problem
from shared import headers as H
from shared.envelopes import (
    Credential,
    CredentialRequest,
    SecretChanged,
    SecretDelete,
    SecretInfo,
    SecretList,
    SecretPut,
    SecretsDescribe,
)
from shared.errors import InvalidRequest, ModelbusError, NotFound
from shared.subjects import (
    SECRETS_DELETE,
    SECRETS_DESCRIBE,
    SECRETS_GET,
    SECRETS_LIST,
    SECRETS_PUT,
    SECRETS_QUEUE,
)

log = logging.getLogger("modelbus.secrets")

ORLOJ_ENV_PREFIX = "ORLOJ_SECRET_"
"""Orloj's prefix for secrets given as environment variables."""
MAX_DESCRIBE_REFS = 1000
"""Most references one describe request may ask about."""

_request_decoder = msgspec.json.Decoder(CredentialRequest)
_put_decoder = msgspec.json.Decoder(SecretPut)
_delete_decoder = msgspec.json.Decoder(SecretDelete)
_list_decoder = msgspec.json.Decoder(dict[str, Any])
_describe_decoder = msgspec.json.Decoder(SecretsDescribe)
_encoder = msgspec.json.Encoder()

Reply = tuple[bytes, dict[str, str]]
PublishChange = Callable[[SecretChanged], Awaitable[Any]]


class StoreUnavailable(ModelbusError):
    """Stored secrets cannot be used because no master key is configured (503)."""

    status = 503
    type = "service_unavailable"
    default_code = "master_key_missing"


_NO_KEY = f"no master key is configured (set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV})"


def orloj_env_names(name: str) -> list[str]:
    """The environment variables that may hold bare secret ``name``, in the order tried."""
    normalized = re.sub(r"[^A-Z0-9]", "_", name.upper()).strip("_")
    candidates = [name, name.replace("-", "_"), normalized]
    return list(dict.fromkeys(ORLOJ_ENV_PREFIX + c for c in candidates if c))


class SecretsService:
    """Everything the secrets service answers, independent of the transport.

    ``store`` is ``None`` when no master key is configured: ``env:`` and
    ``ORLOJ_SECRET_*`` references still resolve, stored secrets answer 503.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        store: SecretStore | None = None,
        publish_change: PublishChange | None = None,
    ) -> None:
        self.env = os.environ if env is None else env
        self.store = store
        self.publish_change = publish_change

    # ------------------------------------------------------------ resolution

    async def resolve(self, ref: str) -> str:
        """The value behind a reference; raises a typed error naming the reference."""
        scheme, sep, rest = ref.partition(":")
        if not sep:
            return await self._resolve_bare(ref)
        if not rest:
            raise InvalidRequest(f"credential reference {ref!r} is not of the form scheme:name", param="ref")
        if scheme == "env":
            value = self.env.get(rest)
            if not value:
                raise NotFound(f"credential reference {ref!r}: variable {rest} is not set", code="secret_not_found")
            return value
        if scheme == "secret":
            problem = name_problem(rest)
            if problem:
                raise InvalidRequest(f"credential reference {ref!r}: secret name {problem}", param="ref")
            value = await self._stored(ref, rest)
            if value is None:
                raise NotFound(
                    f"credential reference {ref!r}: no secret named {rest!r} is stored", code="secret_not_found"
                )
            return value
        raise NotFound(f"credential reference {ref!r}: unsupported source {scheme!r}", code="secret_not_found")

    async def _resolve_bare(self, ref: str) -> str:
        problem = name_problem(ref)
        if problem:
            raise InvalidRequest(
                f"credential reference {ref!r} is neither scheme:name nor a secret name (a secret name {problem})",
                param="ref",
            )
        variables = orloj_env_names(ref)
        for variable in variables:
            value = self.env.get(variable)
            if value:
                return value
        tried = " / ".join(variables)
        if self.store is None:
            raise StoreUnavailable(
                f"credential reference {ref!r}: {tried} is not set, and stored secrets are unavailable: {_NO_KEY}"
            )
        value = await self._stored(ref, ref)
        if value is None:
            raise NotFound(
                f"credential reference {ref!r}: {tried} is not set and no secret named {ref!r} is stored",
                code="secret_not_found",
            )
        return value

    async def _stored(self, ref: str, name: str) -> str | None:
        if self.store is None:
            raise StoreUnavailable(f"credential reference {ref!r}: stored secrets are unavailable: {_NO_KEY}")
        try:
            return await self.store.get(name)
        except RecordUnreadable:
            raise ModelbusError(
                f"credential reference {ref!r}: the stored secret does not decrypt with the current master key",
                code="secret_unreadable",
            ) from None

    # ------------------------------------------------------------ admin

    async def put(self, req: SecretPut) -> SecretInfo:
        """Store a secret and announce the change."""
        problem = name_problem(req.name)
        if problem:
            raise InvalidRequest(f"secret name {req.name!r} {problem}", param="name")
        if not req.value:
            raise InvalidRequest(f"secret {req.name!r}: value must not be empty", param="value")
        if self.store is None:
            raise StoreUnavailable(f"cannot store secret {req.name!r}: {_NO_KEY}")
        info = await self.store.put(req.name, req.value)
        log.info("secret %r set by %s", req.name, req.actor)
        await self._announce(SecretChanged(name=req.name, op="set"))
        return info

    async def delete(self, req: SecretDelete) -> SecretInfo:
        """Delete a stored secret and announce the change; 404 when there is none."""
        problem = name_problem(req.name)
        if problem:
            raise InvalidRequest(f"secret name {req.name!r} {problem}", param="name")
        if self.store is None:
            raise StoreUnavailable(f"cannot delete secret {req.name!r}: {_NO_KEY}")
        if not await self.store.delete(req.name):
            raise NotFound(f"no secret named {req.name!r} is stored", code="secret_not_found")
        log.info("secret %r deleted by %s", req.name, req.actor)
        await self._announce(SecretChanged(name=req.name, op="delete"))
        return SecretInfo(name=req.name, key_present=False, source="store")

    async def list_secrets(self) -> SecretList:
        """Stored secrets and ``ORLOJ_SECRET_*`` variables, sorted by name; never a value."""
        items = await self.store.infos() if self.store is not None else []
        for variable, value in self.env.items():
            name = variable.removeprefix(ORLOJ_ENV_PREFIX)
            if variable.startswith(ORLOJ_ENV_PREFIX) and name:
                items.append(SecretInfo(name=name, key_present=bool(value), key_last4=last4(value), source="env"))
        items.sort(key=lambda info: (info.name, info.source or ""))
        return SecretList(items=items)

    async def describe(self, req: SecretsDescribe) -> SecretList:
        """Whether a value is behind each reference, and where it comes from; never a value.

        Items come back in the order asked, each named by its reference, and
        follow :meth:`resolve`'s rules. A reference that does not resolve (an
        unset variable, a secret that is not stored, a malformed reference, or
        a stored secret while the store is locked) is ``key_present: false``.
        """
        if len(req.refs) > MAX_DESCRIBE_REFS:
            raise InvalidRequest(f"refs: at most {MAX_DESCRIBE_REFS} references per request", param="refs")
        stored: dict[str, SecretInfo] = {}
        if self.store is not None and any(not ref.startswith("env:") for ref in req.refs):
            stored = {info.name: info for info in await self.store.infos()}
        return SecretList(items=[self._describe_ref(ref, stored) for ref in req.refs])

    def _describe_ref(self, ref: str, stored: Mapping[str, SecretInfo]) -> SecretInfo:
        absent = SecretInfo(name=ref, key_present=False)
        scheme, sep, rest = ref.partition(":")
        if sep and scheme == "env" and rest:
            value = self.env.get(rest)
            return SecretInfo(name=ref, key_present=True, key_last4=last4(value), source="env") if value else absent
        if sep and scheme == "secret" and name_problem(rest) is None:
            info = stored.get(rest)
            return msgspec.structs.replace(info, name=ref) if info is not None else absent
        if sep or name_problem(ref) is not None:
            return absent
        for variable in orloj_env_names(ref):
            value = self.env.get(variable)
            if value:
                return SecretInfo(name=ref, key_present=True, key_last4=last4(value), source="env")
        info = stored.get(ref)
        return msgspec.structs.replace(info, name=ref) if info is not None else absent

    async def _announce(self, change: SecretChanged) -> None:
        # The change is made; a lost event only means caches keep a value until its TTL.
        if self.publish_change is None:
            return
        try:
            await self.publish_change(change)
        except Exception as exc:
            log.error("could not announce %s of secret %r: %s", change.op, change.name, type(exc).__name__)

    # ------------------------------------------------------------ wire

    async def answer_get(self, body: bytes) -> Reply:
        """The reply to a credential request; never raises."""
        try:
            req = _request_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            return _refused(InvalidRequest(f"malformed credential request: {exc}"))
        try:
            value = await self.resolve(req.ref)
        except ModelbusError as err:
            return _refused(err)
        except Exception as exc:
            return _failed(f"credential reference {req.ref!r}", exc)
        return _encoder.encode(Credential(value=value)), {H.STATUS: "200"}

    async def answer_put(self, body: bytes) -> Reply:
        """The reply to ``modelbus.v1.secrets.put``; never raises."""
        try:
            req = _put_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            return _refused(InvalidRequest(f"malformed secret put: {exc}"))
        return await _answer(self.put(req), f"put of secret {req.name!r}")

    async def answer_delete(self, body: bytes) -> Reply:
        """The reply to ``modelbus.v1.secrets.delete``; never raises."""
        try:
            req = _delete_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            return _refused(InvalidRequest(f"malformed secret delete: {exc}"))
        return await _answer(self.delete(req), f"delete of secret {req.name!r}")

    async def answer_list(self, body: bytes) -> Reply:
        """The reply to ``modelbus.v1.secrets.list`` (empty body or a JSON object); never raises."""
        if body.strip():
            try:
                _list_decoder.decode(body)
            except msgspec.MsgspecError as exc:
                return _refused(InvalidRequest(f"malformed secret list request: {exc}"))
        return await _answer(self.list_secrets(), "secret list")

    async def answer_describe(self, body: bytes) -> Reply:
        """The reply to ``modelbus.v1.secrets.describe``; never raises."""
        try:
            req = _describe_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            return _refused(InvalidRequest(f"malformed secret describe: {exc}"))
        return await _answer(self.describe(req), "secret describe")


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


def register(broker: NatsBroker, service: SecretsService) -> None:
    """Control-plane subscribers of the secrets service.

    Every handler takes the raw message and decodes it itself, so malformed
    input always gets an error reply rather than a FastStream validation error.
    """

    @broker.subscriber(SECRETS_GET, queue=SECRETS_QUEUE, max_workers=16)
    async def get_credential(msg: NatsMessage) -> NatsResponse:
        """Reply with a :class:`shared.envelopes.Credential` or an error envelope."""
        body, headers = await service.answer_get(msg.body)
        return NatsResponse(body, headers=headers)

    @broker.subscriber(SECRETS_PUT, queue=SECRETS_QUEUE, max_workers=4)
    async def put_secret(msg: NatsMessage) -> NatsResponse:
        """Store a :class:`shared.envelopes.SecretPut`; reply with its :class:`shared.envelopes.SecretInfo`."""
        body, headers = await service.answer_put(msg.body)
        return NatsResponse(body, headers=headers)

    @broker.subscriber(SECRETS_DELETE, queue=SECRETS_QUEUE, max_workers=4)
    async def delete_secret(msg: NatsMessage) -> NatsResponse:
        """Delete per a :class:`shared.envelopes.SecretDelete`; reply with a :class:`shared.envelopes.SecretInfo`."""
        body, headers = await service.answer_delete(msg.body)
        return NatsResponse(body, headers=headers)

    @broker.subscriber(SECRETS_LIST, queue=SECRETS_QUEUE, max_workers=4)
    async def list_secrets(msg: NatsMessage) -> NatsResponse:
        """Reply with a :class:`shared.envelopes.SecretList`: metadata only, never a value."""
        body, headers = await service.answer_list(msg.body)
        return NatsResponse(body, headers=headers)

    @broker.subscriber(SECRETS_DESCRIBE, queue=SECRETS_QUEUE, max_workers=4)
    async def describe_secrets(msg: NatsMessage) -> NatsResponse:
        """Reply to a :class:`shared.envelopes.SecretsDescribe` with a :class:`shared.envelopes.SecretList`
        holding one item per reference, named by it: presence and provenance, never a value."""
        body, headers = await service.answer_describe(msg.body)
        return NatsResponse(body, headers=headers)
