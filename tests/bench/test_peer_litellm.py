"""LiteLLM's proxy as a benchmark peer, installed from PyPI and run in front of a real llm-katan.

llm-katan checks the API key here, so a 200 also proves that LiteLLM sent the
upstream key from its config, not the master key the client sent it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bench.contenders import PROMPT
from bench.peers import Running
from bench.peers.litellm import LiteLLM
from tests.bench.peer_harness import keyed_katan, post_benchmark_request, started
from tests.conftest import Katan

pytestmark = [pytest.mark.peers, pytest.mark.timeout(2400)]

UPSTREAM_KEY = "sk-katan-litellm-test"


katan = keyed_katan(UPSTREAM_KEY)


@pytest.fixture(scope="module")
def litellm(katan: Katan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiteLLM, Running]]:
    with started(LiteLLM(), katan, UPSTREAM_KEY, tmp_path_factory) as peer_and_running:
        yield peer_and_running


def test_litellm_forwards_the_benchmark_request_and_returns_the_upstream_reply(
    litellm: tuple[LiteLLM, Running],
) -> None:
    _, running = litellm
    reply = post_benchmark_request(running, timeout_s=30.0)
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.content)
    assert answer["choices"][0]["message"]["content"].startswith("[echo]")
    assert PROMPT in answer["choices"][0]["message"]["content"]


def test_litellm_refuses_a_request_without_its_master_key(litellm: tuple[LiteLLM, Running]) -> None:
    _, running = litellm
    # Refused, though not with the 401 LiteLLM documents: with no database (so no `prisma`) its auth
    # error handler itself fails and the proxy answers 500 (https://github.com/BerriAI/litellm/issues/38978).
    assert post_benchmark_request(running, headers={}, timeout_s=30.0).status_code >= 400


def test_litellm_reports_its_pinned_version(litellm: tuple[LiteLLM, Running]) -> None:
    peer, running = litellm
    version = peer.version()
    assert version is not None and version.startswith("1.106.")
    assert running.version == version
