"""What the provider integration tests share: an llm-katan fleet, config documents, client calls.

Each ``test_provider_*`` module keeps its own endpoints, keys and fakes; this module
holds only the harness they all repeat, built on :mod:`tests.conftest`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from shared.chat import ChatCompletionChunk
from shared.client import ModelbusClient
from tests.conftest import Katan, start_katan, stop_process

API_VERSION = "modelbus.dev/v1"
TIMEOUT_S = 20

# llm-katan's own failure switches, by the role the upstream plays in a test.
FAILURE_ARGS: dict[str, tuple[str, ...]] = {
    "failing": ("--error-rate", "1.0"),  # every request answers 500
    "limited": ("--rate-limit-after", "1"),  # the second request answers 429
    "slow": ("--timeout-after", "1"),  # answers 504, an upstream timeout
}

ONE_ATTEMPT: dict[str, Any] = {
    # One attempt per request, and breakers that never open: each test sees the upstream's own answer.
    "kind": "RoutingDefaults",
    "metadata": {"name": "defaults"},
    "spec": {"max_retries": 0, "breaker_failures": 1000},
}


@contextmanager
def katan_fleet(
    tmp_path_factory: pytest.TempPathFactory,
    ok_args: Sequence[str],
    roles: Iterable[str] = ("ok", *FAILURE_ARGS),
) -> Iterator[dict[str, Katan]]:
    """Start one llm-katan per role (``ok`` with ``ok_args``, the others with :data:`FAILURE_ARGS`).

    Yields them by role and stops every one that started on the way out. They start
    one by one from the calling thread: llm-katan dies with the thread that started it.
    """
    katans: dict[str, Katan] = {}
    try:
        for role in roles:
            args = ok_args if role == "ok" else FAILURE_ARGS[role]
            katans[role] = start_katan(tmp_path_factory.mktemp(f"katan-{role}"), *args)
        yield katans
    finally:
        for katan in katans.values():
            stop_process(katan.proc)


def render_documents(docs: Iterable[dict[str, Any]]) -> str:
    """Native config documents (without ``apiVersion``) as one multi-document JSON config file."""
    return "\n---\n".join(json.dumps({"apiVersion": API_VERSION, **doc}) for doc in docs)


async def complete(url: str, request: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """One raw chat request through a fresh client: ``(status, headers, decoded JSON body)``."""
    client = await ModelbusClient.connect(url)
    try:
        reply = await client.request_raw(request, timeout=TIMEOUT_S)
    finally:
        await client.close()
    return reply.status, reply.headers, json.loads(reply.body)


async def stream(url: str, request: dict[str, Any]) -> list[ChatCompletionChunk]:
    """Every chunk of one streamed chat request through a fresh client."""
    client = await ModelbusClient.connect(url)
    try:
        return [chunk async for chunk in client.stream(request, timeout=TIMEOUT_S)]
    finally:
        await client.close()


def text(chunks: list[ChatCompletionChunk]) -> str:
    """The content deltas of streamed chunks, joined."""
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
