"""Anthropic's token counting endpoint, for tests: llm-katan serves no ``count_tokens``.

It follows the published API (``POST /v1/messages/count_tokens``,
https://docs.anthropic.com/en/api/messages-count-tokens): the ``x-api-key``
and ``anthropic-version`` headers are required (401 / 400 otherwise, in
Anthropic's error shape), the body needs ``model`` and ``messages`` and may not
carry ``max_tokens`` (a 400, as Anthropic answers), and the answer is
``{"input_tokens": N}``. N is :func:`fake_count` of the body, a rule unlike
modelbus's estimate, so a test can tell which one answered. Every body received
is kept in :attr:`AnthropicCounter.bodies`.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.loopback import LoopbackServer, QuietHandler


def fake_count(body: dict[str, Any]) -> int:
    """The fake's count: 1000 plus the number of characters of the messages' JSON."""
    return 1000 + len(json.dumps(body["messages"], separators=(",", ":")))


def _error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class AnthropicCounter(LoopbackServer):
    """``with AnthropicCounter() as fake:``; ``fake.base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        owner = self

        class Handler(QuietHandler):
            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.split("?")[0] != "/v1/messages/count_tokens":
                    self._answer(404, _error("not_found_error", f"no route {self.path}"))
                    return
                owner.bodies.append(raw)
                if not self.headers.get("x-api-key"):
                    self._answer(401, _error("authentication_error", "x-api-key header is required"))
                    return
                if not self.headers.get("anthropic-version"):
                    self._answer(400, _error("invalid_request_error", "anthropic-version header is required"))
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._answer(400, _error("invalid_request_error", "body is not JSON"))
                    return
                if "max_tokens" in body:
                    self._answer(400, _error("invalid_request_error", "max_tokens: Extra inputs are not permitted"))
                    return
                if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
                    self._answer(400, _error("invalid_request_error", "model and messages are required"))
                    return
                self._answer(200, json.dumps({"input_tokens": fake_count(body)}).encode())

        super().__init__(Handler)
        self.base_url = f"{self.origin}/v1"
