"""A fake upstream whose errors quote pieces of the key it was sent, for leak attacks.

llm-katan echoes the whole rejected key on a 401, which exact-match scrubbing
catches; real upstreams also quote *parts* of keys (OpenAI masks all but a
prefix and suffix) and encodings of them (an echoed ``Authorization: Basic``
header, an echoed query string). This fake does all of that, in the error
formats of the published APIs:

* **OpenAI** ``POST /v1/chat/completions`` (``Authorization: Bearer``) and
  **Azure OpenAI** ``POST /openai/deployments/{deployment}/chat/completions``
  (``api-key``): errors are ``{"error": {"message", "type", "param",
  "code"}}`` (https://platform.openai.com/docs/guides/error-codes ,
  https://learn.microsoft.com/azure/ai-foundry/openai/reference); a stream
  error is a ``data: {"error": {...}}`` event.
* **Anthropic** ``POST /v1/messages`` (``x-api-key``): errors are
  ``{"type": "error", "error": {"type", "message"}}``, and mid-stream an
  ``event: error`` (https://docs.anthropic.com/en/api/errors ,
  https://docs.anthropic.com/en/api/messages-streaming#error-events).

The request's ``model`` picks the answer: ``quote-400``, ``quote-429`` (with
``retry-after: 1``), ``quote-500``, ``quote-200`` (a 200 whose body is an error
object), ``quote-stream`` (one content delta, then an error event); anything
else gets an ordinary answer. Every quoting answer also carries the key in an
``x-upstream-debug`` response header. The quoted text is
:func:`quoted_message`. Requests are recorded in :attr:`FakeQuotingUpstream.requests`.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

QUOTING_MODELS = ("quote-400", "quote-429", "quote-500", "quote-200", "quote-stream")
MESSAGE_HEAD = "Incorrect API key provided"
"""How every quoted message starts; not secret, so it must survive scrubbing."""

_OPENAI_TYPES = {400: "invalid_request_error", 429: "requests", 500: "server_error", 200: "server_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 200: "api_error"}


def quoted_message(key: str) -> str:
    """The error text: a prefix and a suffix (OpenAI-style masking), a middle fragment,
    base64 of a Basic credential and of the key, and the key URL-encoded."""
    basic = base64.b64encode(f"api:{key}".encode()).decode()
    plain = base64.urlsafe_b64encode(key.encode()).decode()
    return (
        f"{MESSAGE_HEAD}: {key[:12]}****{key[-8:]}. Fragment seen: {key[10:26]}. "
        f"Authorization: Basic {basic}. Token (base64url): {plain}. "
        f"Retry with ?key={quote(key, safe='')}."
    )


class Recorded:
    """One request as the fake received it."""

    def __init__(self, path: str, key: str, model: str) -> None:
        self.path = path
        self.key = key
        self.model = model


class FakeQuotingUpstream:
    """The fake server; :meth:`start` runs it on a free loopback port in a thread."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The server root."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> FakeQuotingUpstream:
        """Bind a free port and serve until :meth:`stop`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/openai/deployments/{deployment}/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake quoting upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _record(self, request: Request, key: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(await request.body())
        self.requests.append(Recorded(request.url.path, key, str(body.get("model", ""))))
        return body

    # ------------------------------------------------------------ OpenAI and Azure

    async def _openai(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        key = request.headers.get("api-key") or auth.removeprefix("Bearer ")
        body = await self._record(request, key)
        model = request.path_params.get("deployment") or str(body.get("model", ""))
        if model not in QUOTING_MODELS:
            return JSONResponse(_openai_completion(model, "all good"))
        status = 200 if model in ("quote-200", "quote-stream") else int(model.removeprefix("quote-"))
        error = {
            "error": {
                "message": quoted_message(key),
                "type": _OPENAI_TYPES[status],
                "param": key[4:20],
                "code": "invalid_api_key",
            }
        }
        if model == "quote-stream":
            return StreamingResponse(_openai_stream(model, error), media_type="text/event-stream")
        return JSONResponse(error, status_code=status, headers=_echo_headers(key, status))

    # ------------------------------------------------------------ Anthropic

    async def _anthropic(self, request: Request) -> Response:
        key = request.headers.get("x-api-key", "")
        body = await self._record(request, key)
        model = str(body.get("model", ""))
        if model not in QUOTING_MODELS:
            return JSONResponse(_anthropic_message(model, "all good"))
        status = 200 if model in ("quote-200", "quote-stream") else int(model.removeprefix("quote-"))
        error = {"type": "error", "error": {"type": _ANTHROPIC_TYPES[status], "message": quoted_message(key)}}
        if model == "quote-stream":
            return StreamingResponse(_anthropic_stream(model, error), media_type="text/event-stream")
        return JSONResponse(error, status_code=status, headers=_echo_headers(key, status))


def _echo_headers(key: str, status: int) -> dict[str, str]:
    headers = {"x-upstream-debug": f"key={key}", "request-id": "req_fake"}
    if status == 429:
        headers["retry-after"] = "1"
    return headers


def _openai_completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


async def _openai_stream(model: str, error: dict[str, Any]) -> AsyncIterator[bytes]:
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial"}, "finish_reason": None}],
    }
    yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield f"data: {json.dumps(error)}\n\n".encode()


def _anthropic_message(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


async def _anthropic_stream(model: str, error: dict[str, Any]) -> AsyncIterator[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    start = {**_anthropic_message(model, ""), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 3, "output_tokens": 0}
    yield event("message_start", {"type": "message_start", "message": start})
    yield event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "partial"}},
    )
    yield event("error", error)
