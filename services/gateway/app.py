"""The gateway's ASGI application: one dictionary lookup from path to endpoint.

=============================== ====== =========================================== ==========
path                            method what                                        errors as
=============================== ====== =========================================== ==========
``/v1/chat/completions``        POST   OpenAI Chat Completions                     OpenAI
``/v1/messages``                POST   Anthropic Messages                          Anthropic
``/v1/messages/count_tokens``   POST   Anthropic token count (estimate)            Anthropic
``/v1/models``                  GET    aliases, endpoints, agents (OpenAI's list)  OpenAI
``/healthz``                    GET    the process is up                           -
``/readyz``                     GET    NATS connected and a configuration known    -
=============================== ====== =========================================== ==========

Any other path is a 404 and another method a 405, in OpenAI's error shape
(Anthropic's under ``/v1/messages``). ``/healthz`` and ``/readyz`` need no key;
everything else does. The query string is ignored (Claude Code sends
``?beta=true``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec

from services.gateway import anthropic_api, openai_api
from services.gateway.asgi import JSON, Headers, Receive, Scope, Send, request_headers, request_id_of, respond
from services.gateway.core import Core, anthropic_key
from services.gateway.exchange import ANTHROPIC, OPENAI, send_error
from shared.errors import InvalidRequest, ModelbusError, NotFound

log = logging.getLogger("modelbus.gateway")

Endpoint = Callable[[Core, Scope, Receive, Send, Headers], Awaitable[None]]


class _Health(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    status: str
    revision: int | None = None
    reason: str | None = None


_encoder = msgspec.json.Encoder()
_HEALTHY = _encoder.encode(_Health(status="ok"))


async def _models(core: Core, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
    request_id = request_id_of(headers)
    try:
        # OpenAI clients send Bearer, Anthropic clients x-api-key: either lists the models.
        grant = core.authorize(anthropic_key(headers), "Authorization: Bearer <key>")
    except ModelbusError as err:
        await send_error(OPENAI, send, err, request_id)
        return
    body = core.follower.models_for(grant.agent, grant.namespace)  # built once per revision and binding
    await respond(send, 200, [JSON, (b"x-request-id", request_id.encode())], body)


async def _healthz(core: Core, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
    await respond(send, 200, [JSON], _HEALTHY)


async def _readyz(core: Core, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
    revision = core.follower.revision
    if not core.upstream.nc.is_connected:
        health = _Health(status="unavailable", revision=revision, reason="not connected to NATS")
    elif revision is None:
        health = _Health(status="unavailable", reason="no routing configuration known yet")
    elif core.store is not None and not core.store.trusted:
        health = _Health(status="unavailable", revision=revision, reason="the key store's copy is not current")
    else:
        await respond(send, 200, [JSON], _encoder.encode(_Health(status="ready", revision=revision)))
        return
    await respond(send, 503, [JSON], _encoder.encode(health))


ROUTES: dict[str, tuple[str, Endpoint]] = {
    "/v1/chat/completions": ("POST", openai_api.chat_completions),
    "/v1/messages": ("POST", anthropic_api.messages),
    "/v1/messages/count_tokens": ("POST", anthropic_api.count_tokens),
    "/v1/models": ("GET", _models),
    "/healthz": ("GET", _healthz),
    "/readyz": ("GET", _readyz),
}
"""Path → (method, endpoint)."""


class Gateway:
    """The ASGI callable uvicorn serves."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        path: str = scope["path"]
        route = ROUTES.get(path) or ROUTES.get(path.rstrip("/"))
        headers = request_headers(scope)
        if route is not None and route[0] == scope["method"]:
            await route[1](self.core, scope, receive, send, headers)
            return
        err: ModelbusError
        status: int | None = None
        if route is None:
            err = NotFound(f"no endpoint {path[:200]!r}: the gateway serves {', '.join(ROUTES)}", code="unknown_url")
        else:
            # 405 has no class in the error tree (nothing else answers it): an InvalidRequest sent as 405.
            err = InvalidRequest(f"{path} takes {route[0]}, not {scope['method'][:20]}", code="method_not_allowed")
            status = 405
        request_id = request_id_of(headers)
        if path.startswith("/v1/messages"):
            await send_error(ANTHROPIC, send, err, request_id, status=status)
        else:
            await send_error(OPENAI, send, err, request_id, status=status)
