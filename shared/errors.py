"""The one error tree of modelbus, and its wire form.

Every error that can reach a caller is one of these, and every one carries the
HTTP-like ``status`` it travels with and whether trying again elsewhere can help
(``retryable``). Code downstream of the boundary decides on those two
attributes only, never on message text::

    ModelbusError                     500 internal_error
    ├── InvalidRequest                400 invalid_request_error
    │   └── PayloadTooLarge           413
    ├── AuthenticationError           401 authentication_error
    ├── PolicyDenied                  403 permission_error
    │   └── PrivateAddressRefused     403                       services/providers/ssrf.py
    ├── BudgetExceeded                429 insufficient_quota    (not retryable: the budget stays spent)
    ├── NotFound                      404 not_found_error
    ├── DeadlineExceeded              408 timeout_error
    ├── Conflict                      409 conflict_error
    ├── ConfigError                   400 config_error
    ├── NoRouteAvailable              503 service_unavailable   (retryable)
    ├── RequestLost                   504 timeout_error         (retryable; client side)
    ├── AuditError                    503 service_unavailable   (retryable)  services/config/audit_chain.py
    │   └── AuditChainBroken          500 internal_error                     services/config/audit_chain.py
    ├── StoreUnavailable              503 service_unavailable                services/secrets/service.py
    ├── VaultError                    502 api_error                          services/secrets/vault.py
    │   ├── VaultDenied               502                                    services/secrets/vault.py
    │   ├── VaultUnavailable          503 service_unavailable   (retryable)  services/secrets/vault.py
    │   └── VaultSecretUnusable       502                                    services/secrets/vault.py
    └── ProviderError(status, retryable, retry_after, provider, model)
        ├── RateLimited               429 rate_limit_error      (retryable)
        ├── UpstreamTimeout           504 timeout_error         (retryable)
        ├── UpstreamUnavailable       502/503 api_error         (retryable)
        ├── BadUpstreamResponse       502 api_error
        ├── BadUpstreamRequest        400/404/422 invalid_request_error
        ├── AuthFailed                401/403 authentication_error
        ├── WorkerLost                502 api_error             (retryable)
        └── CredentialUnavailable     502 api_error             (retryable)  services/providers/credentials.py

The classes with a module named live in the one service that raises them (a
service may not import another); they are drawn here so the tree is whole, and
``tests/unit/shared/test_errors.py`` fails when a subclass anywhere is missing
from this drawing.

On NATS an error travels as the ``Modelbus-Status`` header plus the body
``{"error": {"message", "type", "code", "param", "retryable"}}``, the OpenAI
error shape with ``retryable`` added. :func:`error_from_wire` rebuilds the most
specific class from that form, so a router can decide on a provider's error
exactly as if it had been raised locally.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "AuthFailed",
    "AuthenticationError",
    "BadUpstreamRequest",
    "BadUpstreamResponse",
    "BudgetExceeded",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "ErrorBody",
    "ErrorEnvelope",
    "InvalidRequest",
    "ModelbusError",
    "NoRouteAvailable",
    "NotFound",
    "PayloadTooLarge",
    "PolicyDenied",
    "ProviderError",
    "RateLimited",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_from_status",
    "error_from_wire",
    "unsupported",
]


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True):
    """The inner object of an error reply (OpenAI's shape plus ``retryable``)."""

    message: str
    """Human-readable reason. Never contains a credential."""
    type: str
    """Coarse class, OpenAI-style: ``invalid_request_error``, ``rate_limit_error``, ..."""
    code: str | None = None
    """Machine-readable reason, e.g. ``model_not_found`` or ``invalid_json``."""
    param: str | None = None
    """The request field at fault, as a path such as ``messages[0].content``."""
    retryable: bool = False
    """Whether the same request may succeed on another attempt or target."""


class ErrorEnvelope(msgspec.Struct, kw_only=True, frozen=True):
    """The whole body of an error reply."""

    error: ErrorBody


class ModelbusError(Exception):
    """Base of every modelbus error; carries everything the wire form needs."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        """Seconds the caller should wait before trying this target again, if known."""

    @property
    def http_status(self) -> int:
        """The status sent in ``Modelbus-Status``; subclasses may vary it per instance."""
        return self.status

    def to_body(self) -> ErrorBody:
        """The wire form of this error."""
        return ErrorBody(
            message=self.message,
            type=self.type,
            code=self.code,
            param=self.param,
            retryable=self.retryable,
        )

    def to_json(self) -> bytes:
        """The JSON body of an error reply."""
        return _encoder.encode(ErrorEnvelope(error=self.to_body()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.http_status}, {self.message!r}, retryable={self.retryable})"


class InvalidRequest(ModelbusError):
    """The request is malformed or asks for something impossible (400)."""

    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the configured limit (413)."""

    status = 413
    default_code = "payload_too_large"


class AuthenticationError(ModelbusError):
    """The caller's own credentials were rejected (401)."""

    status = 401
    type = "authentication_error"


class PolicyDenied(ModelbusError):
    """A policy forbids this request: model allow-list, budget, sensitivity (403)."""

    status = 403
    type = "permission_error"
    default_code = "policy_denied"


class BudgetExceeded(ModelbusError):
    """A Budget's limit is reached (429 ``budget_exceeded``): the message names the budget, its
    limit, its spend and what is reserved. Not retryable: trying again, here or on another
    router, meets the same budget until its period ends or an operator raises it."""

    status = 429
    type = "insufficient_quota"
    default_code = "budget_exceeded"


class NotFound(ModelbusError):
    """The named alias, endpoint, model or agent does not exist (404)."""

    status = 404
    type = "not_found_error"
    default_code = "model_not_found"


class DeadlineExceeded(ModelbusError):
    """The request's overall deadline ran out before an answer (408)."""

    status = 408
    type = "timeout_error"
    default_code = "deadline_exceeded"


class Conflict(ModelbusError):
    """The state changed since the caller read it; re-read and retry (409)."""

    status = 409
    type = "conflict_error"
    default_code = "revision_conflict"


class ConfigError(ModelbusError):
    """A configuration document is invalid; the message names doc, path and reason."""

    status = 400
    type = "config_error"
    default_code = "invalid_config"


class NoRouteAvailable(ModelbusError):
    """Every target for the request is unavailable right now (503)."""

    status = 503
    type = "service_unavailable"
    default_code = "no_route_available"
    default_retryable = True


class ProviderError(ModelbusError):
    """An upstream provider failed; ``status`` is per instance."""

    type = "api_error"
    default_code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        provider: str | None = None,
        model: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, retryable=retryable, retry_after=retry_after)
        self._status = status if status is not None else type(self).status
        self.provider = provider
        self.model = model

    @property
    def http_status(self) -> int:
        return self._status


class RateLimited(ProviderError):
    """The upstream said 429; ``retry_after`` holds its hint when it gave one."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"
    default_retryable = True


class UpstreamTimeout(ProviderError):
    """The upstream did not answer in time (504)."""

    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"
    default_retryable = True


class UpstreamUnavailable(ProviderError):
    """The upstream is down or overloaded: 5xx, refused connection, DNS failure."""

    status = 503
    default_code = "upstream_unavailable"
    default_retryable = True


class BadUpstreamResponse(ProviderError):
    """The upstream answered, but with something that is not a valid answer (502)."""

    status = 502
    default_code = "bad_upstream_response"


class WorkerLost(ProviderError):
    """The provider worker handling an attempt went silent: no heartbeat for
    ``shared.replies.LOST_AFTER_S`` (502, retryable: the router tries another worker)."""

    status = 502
    default_code = "worker_lost"
    default_retryable = True


class RequestLost(ModelbusError):
    """Client side: modelbus sent nothing for ``shared.replies.MAX_SILENCE_S`` though the
    contract promises keepalives; whoever held the request is gone (retryable)."""

    status = 504
    type = "timeout_error"
    default_code = "request_lost"
    default_retryable = True


class BadUpstreamRequest(ProviderError):
    """The upstream rejected the request as invalid: 400, 404, 422."""

    status = 400
    type = "invalid_request_error"
    default_code = "upstream_rejected_request"


class AuthFailed(ProviderError):
    """The upstream rejected our credentials: 401 or 403."""

    status = 401
    type = "authentication_error"
    default_code = "upstream_auth_failed"


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(ErrorEnvelope)

# Classes rebuilt from a wire status when the type alone does not decide.
_BY_STATUS: dict[int, type[ModelbusError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PolicyDenied,
    404: NotFound,
    408: DeadlineExceeded,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    502: BadUpstreamResponse,
    503: UpstreamUnavailable,
    504: UpstreamTimeout,
}


# Classes whose default code identifies them, so a round trip keeps the class
# even where several classes share a status (401 AuthFailed vs AuthenticationError).
_BY_CODE: dict[str, type[ModelbusError]] = {
    c.default_code: c
    for c in (
        RateLimited,
        UpstreamTimeout,
        UpstreamUnavailable,
        BadUpstreamResponse,
        WorkerLost,
        RequestLost,
        BadUpstreamRequest,
        AuthFailed,
        ConfigError,
        NoRouteAvailable,
        PolicyDenied,
        BudgetExceeded,
        DeadlineExceeded,
        PayloadTooLarge,
        NotFound,
    )
}


def _class_for(status: int, code: str | None) -> type[ModelbusError]:
    by_code = _BY_CODE.get(code or "")
    if by_code is not None and (issubclass(by_code, ProviderError) or by_code.status == status):
        return by_code
    return _BY_STATUS.get(status, ModelbusError)


def unsupported(param: str, why: str) -> InvalidRequest:
    """A request parameter the other side cannot honour: a 400 ``unsupported_parameter``
    naming it, to raise. Every format module and provider adapter builds it this way."""
    return InvalidRequest(f"{param}: {why}", code="unsupported_parameter", param=param)


def error_from_status(
    status: int,
    message: str,
    *,
    provider: str | None = None,
    model: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """Map an upstream HTTP status to the most specific :class:`ProviderError`.

    Used by every provider adapter at its boundary, so the mapping is the same
    for all of them: 429 and 5xx are retryable, other 4xx are not.
    """
    kwargs: dict[str, Any] = {
        "status": status,
        "provider": provider,
        "model": model,
        "retry_after": retry_after,
    }
    if status == 429:
        return RateLimited(message, **kwargs)
    if status in (401, 403):
        return AuthFailed(message, **kwargs)
    if status in (408, 504):
        return UpstreamTimeout(message, **{**kwargs, "status": 504})
    if status >= 500:
        return UpstreamUnavailable(message, **kwargs)
    if 400 <= status < 500:
        return BadUpstreamRequest(message, **kwargs)
    return BadUpstreamResponse(f"unexpected upstream status {status}: {message}", **kwargs)


def error_from_wire(status: int, body: bytes, *, retry_after: float | None = None) -> ModelbusError:
    """Rebuild a typed error from an error reply (status header plus JSON body).

    A body that is not a valid envelope still yields an error of the right
    status, so a broken peer never turns into a success or a crash.
    """
    try:
        inner = _envelope_decoder.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        inner = ErrorBody(
            message=f"peer sent status {status} with an unreadable error body",
            type="api_error",
            retryable=status == 429 or status >= 500,
        )
    cls = _class_for(status, inner.code)
    if issubclass(cls, ProviderError):
        err: ModelbusError = cls(
            inner.message,
            status=status,
            code=inner.code,
            param=inner.param,
            retryable=inner.retryable,
            retry_after=retry_after,
        )
    else:
        err = cls(
            inner.message,
            code=inner.code,
            param=inner.param,
            retryable=inner.retryable,
            retry_after=retry_after,
        )
        if cls is ModelbusError and status != 500:
            err = ProviderError(
                inner.message,
                status=status,
                code=inner.code,
                param=inner.param,
                retryable=inner.retryable,
                retry_after=retry_after,
            )
    return err
