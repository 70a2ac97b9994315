"""A small fake Ollama server: ``POST /api/chat`` as Ollama's API docs describe it.

Docs: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion .
llm-katan has no Ollama protocol, so this fake stands in for it. It follows
the published shapes, not modelbus's adapter:

* ``stream`` defaults to ``true``: NDJSON (``application/x-ndjson``), one JSON
  object per line, one word each, and a final ``done: true`` line with
  ``done_reason``, ``prompt_eval_count``, ``eval_count`` and durations;
  ``stream: false`` gives one object.
* Tool calls: when ``tools`` are offered and the last message is not a tool
  result, the model calls the first tool, ``arguments`` an OBJECT built from
  the tool's JSON Schema; Ollama still says ``done_reason: "stop"``.
* Validation as Ollama does it: string ``content``; ``images`` base64 strings;
  ``tool_calls[].function.arguments`` an object (a JSON string is a 400, as
  Go's decoder rejects it); ``format`` ``"json"`` or a schema object; an
  unknown model is a 404. Errors are ``{"error": "..."}`` with the status.
* ``options.num_predict`` caps the words (``done_reason: "length"``);
  ``format`` makes the answer a JSON object.

Knobs for failure tests: ``api_key`` (require ``Authorization: Bearer``, as a
proxy in front of Ollama would), ``fail_status`` after ``fail_after`` good
answers (with ``retry_after`` as a ``Retry-After`` header), ``latency_s``
before answering, and two model names: ``broken-stream`` (an ``error`` line
mid-stream, as Ollama sends when a runner dies) and ``garbage`` (a 200 that
is not JSON). Every request is recorded in :attr:`FakeOllama.requests`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

ROLES = {"system", "user", "assistant", "tool"}


class Recorded:
    """One request as the fake received it."""

    def __init__(self, headers: dict[str, str], body: Any) -> None:
        self.headers = headers
        self.body = body


class FakeOllama:
    """The fake server; :meth:`start` runs it on a free loopback port in a thread."""

    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("llama3.2", "llava", "broken-stream", "garbage"),
        api_key: str | None = None,
        fail_status: int | None = None,
        fail_after: int = 0,
        retry_after: str | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.models = models
        self.api_key = api_key
        self.fail_status = fail_status
        self.fail_after = fail_after
        self.retry_after = retry_after
        self.latency_s = latency_s
        self.requests: list[Recorded] = []
        self._answered = 0
        self._closing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The server root, as an Ollama ``base_url`` is written."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 10.0) -> FakeOllama:
        """Bind a free port and serve until :meth:`stop`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        app = Starlette(routes=[Route("/api/chat", self._chat, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Ollama did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        if self._closing is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _closing_event(self) -> asyncio.Event:
        """Set when :meth:`stop` is called; made on the server's own loop."""
        if self._closing is None:
            self._closing, self._loop = asyncio.Event(), asyncio.get_running_loop()
        return self._closing

    # ------------------------------------------------------------ /api/chat

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(Recorded(dict(request.headers), body))
        if self.latency_s:
            with contextlib.suppress(TimeoutError):  # stop() cuts the wait short, so shutdown never waits
                await asyncio.wait_for(self._closing_event().wait(), self.latency_s)
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "unauthorized")
        if self.fail_status is not None and self._answered >= self.fail_after:
            headers = {"retry-after": self.retry_after} if self.retry_after else None
            return _error(self.fail_status, f"simulated failure {self.fail_status}", headers)
        if not isinstance(body, dict):
            return _error(400, "invalid request body")
        problem = _validate(body)
        if problem:
            return _error(400, problem)
        model = body["model"]
        if model not in self.models:
            return _error(404, f'model "{model}" not found, try pulling it first')
        self._answered += 1
        if model == "garbage":
            return PlainTextResponse("<html>502 from a confused proxy</html>")
        answer = _answer(body)
        if body.get("stream", True):
            return StreamingResponse(_ndjson(model, answer), media_type="application/x-ndjson")
        return JSONResponse(_final(model, answer, content=answer["text"], tool_calls=answer["tool_calls"]))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validate(body: dict[str, Any]) -> str | None:
    """What real Ollama would refuse with a 400, as its message."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages must be an array"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"messages[{i}]: invalid role"
        if not isinstance(m.get("content", ""), str):
            return "json: cannot unmarshal array into Go struct field Message.messages.content of type string"
        for image in m.get("images") or []:
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, TypeError, ValueError):
                return "illegal base64 data in image"
        for call in m.get("tool_calls") or []:
            if not isinstance(call.get("function", {}).get("arguments"), dict):
                return (
                    "json: cannot unmarshal string into Go struct field ToolCallFunction.messages.tool_calls"
                    ".function.arguments of type api.ToolCallFunctionArguments"
                )
    fmt = body.get("format")
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        return f"invalid format: {json.dumps(fmt)}"
    if not isinstance(body.get("options", {}), dict):
        return "options must be an object"
    return None


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    """Text and tool calls the 'model' gives, plus token counts."""
    messages = body["messages"]
    last = messages[-1] if messages else {"role": "user", "content": ""}
    prompt_tokens = sum(len(str(m.get("content", "")).split()) + 1 for m in messages)
    tools = body.get("tools") or []
    tool_calls: list[dict[str, Any]] = []
    if tools and last.get("role") != "tool":
        function = tools[0]["function"]
        tool_calls = [{"function": {"name": function["name"], "arguments": _sample_args(function.get("parameters"))}}]
        text = ""
    elif last.get("role") == "tool":
        text = f"the tool {last.get('tool_name') or '?'} said {last.get('content', '')}"
    else:
        text = f"echo: {last.get('content', '')}"
        if last.get("images"):
            text += f" [{len(last['images'])} image(s)]"
    if body.get("format") is not None and text:
        text = json.dumps({"echo": text})
    words = text.split()
    limit = (body.get("options") or {}).get("num_predict")
    reason = "stop"
    if isinstance(limit, int) and 0 < limit < len(words):
        words, reason = words[:limit], "length"
        text = " ".join(words)
    return {
        "text": text,
        "words": words,
        "tool_calls": tool_calls,
        "done_reason": reason,
        "prompt_eval_count": prompt_tokens,
        "eval_count": max(1, len(words) + 5 * len(tool_calls)),
    }


def _sample_args(schema: Any) -> dict[str, Any]:
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    samples = {"string": "Paris", "integer": 3, "number": 1.5, "boolean": True}
    return {name: samples.get(str(p.get("type")), "x") for name, p in props.items() if isinstance(p, dict)}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final(model: str, answer: dict[str, Any], *, content: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "model": model,
        "created_at": _now(),
        "message": message,
        "done_reason": answer["done_reason"],
        "done": True,
        "total_duration": 885095291,
        "load_duration": 3753500,
        "prompt_eval_count": answer["prompt_eval_count"],
        "prompt_eval_duration": 328493000,
        "eval_count": answer["eval_count"],
        "eval_duration": 552222000,
    }


async def _ndjson(model: str, answer: dict[str, Any]) -> AsyncIterator[bytes]:
    def line(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj).encode() + b"\n"

    for i, word in enumerate(answer["words"]):
        piece = word if i == 0 else f" {word}"
        message = {"role": "assistant", "content": piece}
        yield line({"model": model, "created_at": _now(), "message": message, "done": False})
        await asyncio.sleep(0)
        if model == "broken-stream":
            yield line({"error": "llama runner process has terminated: signal: killed"})
            return
    if answer["tool_calls"]:
        message = {"role": "assistant", "content": "", "tool_calls": answer["tool_calls"]}
        yield line({"model": model, "created_at": _now(), "message": message, "done": False})
    yield line(_final(model, answer, content="", tool_calls=[]))
