"""The config service's HTTP admin API (Starlette on uvicorn, on the service's own event loop).

Two groups of endpoints, all JSON, all behind ``Authorization: Bearer <token>``
except ``GET /healthz``:

* AuroraSOC's runtime LLM provider API, paths as AuroraSOC has them
  (:mod:`services.config.aurorasoc_api`)::

      GET    /api/v1/system/llm/providers           inventory, active backend, key presence
      PUT    /api/v1/system/llm/config              {provider, model?, orchestrator_model?, base_url?}
      PUT    /api/v1/system/llm/providers/{p}/key   {api_key}
      DELETE /api/v1/system/llm/providers/{p}/key
      POST   /api/v1/system/llm/providers/{p}/test  one-token reachability probe

* modelbus resources, the HTTP form of the admin subjects (bodies and replies
  are the :mod:`shared.admin` structs)::

      GET    /api/v1/resources[?kind=]              GET    /api/v1/history[?kind=&name=&limit=]
      GET    /api/v1/resources/{kind}/{name}        POST   /api/v1/rollback   {"to": N}
      DELETE /api/v1/resources/{kind}/{name}        GET    /api/v1/routers
      POST   /api/v1/apply[?dry_run=true]           GET    /api/v1/audit/verify

Where it listens (and what happens when its port is taken) is
:mod:`services.config.http_server`.

Every mutation goes through :class:`ConfigManager` with the actor
``http:admin``, so it is revisioned, announced and audited like a CLI change.
Errors use the wire contract's envelope and status. The token is compared in
constant time and never logged; request bodies are never logged (they may
hold keys), and no reply contains a secret value.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
from msgspec import Struct
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.config.audit import AuditVerifier
from services.config.aurorasoc_api import LlmConfig, LlmProviders, ProviderKeyBody
from services.config.http_server import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    AdminHttpError,
    AdminHttpServer,
    AdminListener,
    is_loopback,
    load_token,
    open_admin_listener,
    parse_address,
)
from services.config.manager import ConfigManager
from services.config.service import gather_routers
from shared.admin import RouterList, admin_encoder
from shared.errors import (
    AuthenticationError,
    ErrorBody,
    ErrorEnvelope,
    InvalidRequest,
    ModelbusError,
    NotFound,
    PayloadTooLarge,
)
from shared.probe import DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS

log = logging.getLogger("modelbus.config.http")

__all__ = [
    "ADDRESS_ENV",
    "DEFAULT_ADDRESS",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "AdminApi",
    "AdminHttpError",
    "AdminHttpServer",
    "AdminListener",
    "load_token",
    "open_admin_listener",
    "parse_address",
    "start_admin_http",
]

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body accepted (the contract's request limit); larger ones get a 413."""
ACTOR = "http:admin"
"""Actor recorded for every change made over HTTP."""
MAX_HISTORY = 1000
"""Largest ``limit`` of a history query."""

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


# ------------------------------------------------------------------ replies


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON reply; ``body`` is a msgspec struct or plain data."""
    return Response(admin_encoder.encode(body), status_code=status, media_type="application/json", headers=headers)


def error_response(err: ModelbusError) -> Response:
    """The contract's error envelope with the error's status."""
    headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else None
    return Response(err.to_json(), status_code=err.http_status, media_type="application/json", headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) in the same envelope."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return error_response(NotFound(f"no route {request.url.path}", code="route_not_found"))
    if status == 405:
        body = ErrorBody(
            message=f"{request.method} is not allowed on {request.url.path}",
            type="invalid_request_error",
            code="method_not_allowed",
        )
        allow = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
        return json_response(ErrorEnvelope(error=body), 405, allow)
    return error_response(ModelbusError(f"HTTP {status}"))


# ------------------------------------------------------------------ requests


def _field_of(message: str) -> str | None:
    """The field a msgspec validation message names (``... - at `$.provider```, ``... field `x```)."""
    if "`$." in message:
        return message.rsplit("`$.", 1)[1].split("`", 1)[0]
    if "field `" in message:
        return message.rsplit("field `", 1)[1].split("`", 1)[0]
    return None


def decode_body(body: bytes, kind: type[T]) -> T:
    """Decode a JSON body strictly; 400 naming the field.

    msgspec's messages name fields and types, never values, for structs like
    these without enum or literal fields: a rejected ``api_key`` is not echoed.
    """
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        field = _field_of(str(exc))
        raise InvalidRequest(f"invalid request body: {exc}", code="invalid_field", param=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}", code="invalid_json") from None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with a 413 past ``limit`` without buffering the rest."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"request body is larger than {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _bool_param(request: Request, name: str) -> bool:
    """``?name``, ``?name=true`` or ``=1`` are true; absent, ``false`` or ``0`` false; anything else a 400."""
    if name not in request.query_params:
        return False
    raw = request.query_params[name].strip().lower()
    if raw in ("", "true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise InvalidRequest(f"{name}: expected true or false, got {raw!r}", code="invalid_field", param=name)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name}: expected a whole number from {low} to {high}", code="invalid_field", param=name)
    return int(raw)


class ProbeBody(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Optional body of the probe endpoint."""

    timeout_ms: int = DEFAULT_TIMEOUT_MS


class RollbackBody(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/rollback``; the actor is always ``http:admin``."""

    to: int


# ------------------------------------------------------------------ the application


class AdminApi:
    """The routes, bound to the running config service's manager and connection."""

    def __init__(
        self,
        manager: ConfigManager,
        nc: Client,
        verifier: AuditVerifier,
        env: Mapping[str, str],
        token: bytes | None,
    ) -> None:
        self.manager = manager
        self.nc = nc
        self.verifier = verifier
        self.token = token
        self.providers = LlmProviders(manager, nc, env, actor=ACTOR)

    def app(self) -> Starlette:
        """The ASGI application."""
        llm = "/api/v1/system/llm"
        secured = self._secured
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route(f"{llm}/providers", secured(self.llm_inventory), methods=["GET"]),
            Route(f"{llm}/config", secured(self.llm_config), methods=["PUT"]),
            Route(f"{llm}/providers/{{provider:path}}/key", secured(self.llm_put_key), methods=["PUT"]),
            Route(f"{llm}/providers/{{provider:path}}/key", secured(self.llm_delete_key), methods=["DELETE"]),
            Route(f"{llm}/providers/{{provider:path}}/test", secured(self.llm_test), methods=["POST"]),
            Route("/api/v1/resources", secured(self.list_resources), methods=["GET"]),
            Route("/api/v1/resources/{kind}/{name:path}", secured(self.get_resource), methods=["GET"]),
            Route("/api/v1/resources/{kind}/{name:path}", secured(self.delete_resource), methods=["DELETE"]),
            Route("/api/v1/apply", secured(self.apply), methods=["POST"]),
            Route("/api/v1/history", secured(self.history), methods=["GET"]),
            Route("/api/v1/rollback", secured(self.rollback), methods=["POST"]),
            Route("/api/v1/routers", secured(self.routers), methods=["GET"]),
            Route("/api/v1/audit/verify", secured(self.audit_verify), methods=["GET"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})

    # ------------------------------------------------------------ plumbing

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            raise AuthenticationError(
                f"the admin API has no token configured: set {TOKEN_ENV} (or {TOKEN_FILE_ENV}, the path of a "
                "file holding it) in the config service's environment and restart it",
                code="admin_token_not_configured",
            )
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self.token):
            raise AuthenticationError(
                f"missing or wrong admin token: send Authorization: Bearer <{TOKEN_ENV}>",
                code="invalid_admin_token",
            )

    def _secured(self, handler: Handler) -> Handler:
        """Authorize, run, and turn every failure into an error reply."""

        async def run(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except ModelbusError as err:
                return error_response(err)
            except Exception:
                # The path names at most a provider or resource; bodies are never logged.
                log.exception("admin http %s %s failed", request.method, request.url.path)
                return error_response(ModelbusError("internal error in the config service"))

        return run

    # ------------------------------------------------------------ health

    async def healthz(self, request: Request) -> Response:
        """Liveness, without authentication and without detail."""
        return json_response({"status": "ok"})

    # ------------------------------------------------------------ AuroraSOC provider API

    async def llm_inventory(self, request: Request) -> Response:
        return json_response(await self.providers.inventory())

    async def llm_config(self, request: Request) -> Response:
        update = decode_body(await read_body(request), LlmConfig)
        return json_response(await self.providers.configure(update))

    async def llm_put_key(self, request: Request) -> Response:
        body = decode_body(await read_body(request), ProviderKeyBody)
        return json_response(await self.providers.set_key(request.path_params["provider"], body.api_key))

    async def llm_delete_key(self, request: Request) -> Response:
        return json_response(await self.providers.delete_key(request.path_params["provider"]))

    async def llm_test(self, request: Request) -> Response:
        body = await read_body(request)
        probe = decode_body(body, ProbeBody) if body.strip() else ProbeBody()
        if not 1 <= probe.timeout_ms <= MAX_TIMEOUT_MS:
            raise InvalidRequest(
                f"timeout_ms: expected 1 to {MAX_TIMEOUT_MS}", code="invalid_field", param="timeout_ms"
            )
        return json_response(await self.providers.probe(request.path_params["provider"], probe.timeout_ms))

    # ------------------------------------------------------------ resources

    async def list_resources(self, request: Request) -> Response:
        return json_response(self.manager.query(request.query_params.get("kind") or None))

    async def get_resource(self, request: Request) -> Response:
        return json_response(self.manager.query(request.path_params["kind"], request.path_params["name"]))

    async def delete_resource(self, request: Request) -> Response:
        kind, name = request.path_params["kind"], request.path_params["name"]
        return json_response(await self.manager.delete(kind, name, actor=ACTOR))

    async def apply(self, request: Request) -> Response:
        dry_run = _bool_param(request, "dry_run")
        try:
            text = (await read_body(request)).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("request body: documents must be UTF-8 text", code="invalid_body") from None
        return json_response(await self.manager.apply_text(text, actor=ACTOR, dry_run=dry_run, source="request body"))

    async def history(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 50, 1, MAX_HISTORY)
        query = request.query_params
        return json_response(await self.manager.history(query.get("kind") or None, query.get("name") or None, limit))

    async def rollback(self, request: Request) -> Response:
        body = decode_body(await read_body(request), RollbackBody)
        return json_response(await self.manager.rollback(body.to, actor=ACTOR))

    async def routers(self, request: Request) -> Response:
        return json_response(RouterList(items=await gather_routers(self.nc)))

    async def audit_verify(self, request: Request) -> Response:
        return json_response(await self.verifier.verify())


# ------------------------------------------------------------------ start


async def start_admin_http(
    listener: AdminListener, manager: ConfigManager, nc: Client, verifier: AuditVerifier, env: Mapping[str, str]
) -> AdminHttpServer:
    """Serve the admin API on ``listener``'s socket; returns once connections are accepted."""
    sock, token = listener.sock, listener.token
    if token is None:
        log.warning(
            "admin http has no token (%s or %s): every endpoint but /healthz answers 401", TOKEN_ENV, TOKEN_FILE_ENV
        )
    if not is_loopback(sock):
        log.warning("admin http listens beyond loopback: the bearer token travels in clear text unless TLS fronts it")
    # uvicorn's start and stop lines say nothing the line above does not; keep its warnings.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logging.getLogger().level))
    server = AdminHttpServer(AdminApi(manager, nc, verifier, env, token).app(), sock)
    await server.start()
    return server
