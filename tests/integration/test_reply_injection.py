"""Reply-subject injection against the router, on a real secure ``modelbus up``.

A reply subject is whatever the requester writes, and nats-server checks no
permission on it. Before identities were split, the router published its
answer (a clean stream end has an empty body, which JetStream accepts) to any
subject it could publish to, ``$JS.API.STREAM.PURGE.KV_modelbus_budgets``
included: a client could reset its own token budget or delete the run-pin
bucket. Now the router's serving identity may publish only to inboxes, and the
router refuses any other reply subject with a warning and no answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shared.client import ModelbusClient
from shared.subjects import BUDGETS_BUCKET, CHAT_COMPLETIONS, RUNS_BUCKET
from tests.conftest import ROOT, run
from tests.integration.secure_stack import SecureStack, start_secure_stack, wait_until

pytestmark = pytest.mark.timeout(180)

CONFIG = ROOT / "tests" / "integration" / "configs" / "budgeted.yaml"
BODY = {"model": "default", "messages": [{"role": "user", "content": "spend some tokens please"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with start_secure_stack(Path(tmp_path_factory.mktemp("reply-injection")), "--config", str(CONFIG)) as s:
        yield s


async def _client(stack: SecureStack) -> ModelbusClient:
    return await ModelbusClient.connect(stack.url, **stack.login("client"))


async def _status(client: ModelbusClient, run_id: str) -> int:
    reply = await client.request_raw(
        BODY, headers={"Modelbus-Agent": "budgeted", "Modelbus-Run-Id": run_id, "Modelbus-Timeout-Ms": "10000"}
    )
    return reply.status


async def _stream_messages(stack: SecureStack, stream: str) -> int:
    nc = await stack.connect("router-state")
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


def test_a_reply_subject_on_the_jetstream_api_neither_purges_budgets_nor_deletes_run_pins(stack: SecureStack) -> None:
    async def attack() -> None:
        client = await _client(stack)
        try:
            spent = f"run-{uuid.uuid4().hex}"
            statuses = [await _status(client, spent) for _ in range(8)]
            assert 429 in statuses, statuses  # the run spent its budget (429 budget_exceeded)
            budgets_before = await _stream_messages(stack, f"KV_{BUDGETS_BUCKET}")
            mark = len(stack.output)
            nc = client.nc
            stream_body = msgspec.json.encode({**BODY, "stream": True})
            for reply in (
                f"$JS.API.STREAM.PURGE.KV_{BUDGETS_BUCKET}",
                f"$JS.API.STREAM.DELETE.KV_{RUNS_BUCKET}",
                f"$KV.{BUDGETS_BUCKET}.tight.{spent}",
                "modelbus.v1.provider.mock.chat",
            ):
                await nc.publish(CHAT_COMPLETIONS, stream_body, reply=reply, headers={"Modelbus-Run-Id": spent})
            await nc.flush()
            refused = await wait_until(lambda: stack.log_since(mark).count("refused a request") >= 1, 10)
            assert await _status(client, spent) == 429  # the budget is still spent
            assert await _status(client, f"run-{uuid.uuid4().hex}") == 200  # run pins still work
            assert await _stream_messages(stack, f"KV_{BUDGETS_BUCKET}") >= budgets_before
            assert refused, stack.log_since(mark)  # and the router said why it did not answer
        finally:
            await client.close()

    run(attack())


def test_the_router_answers_a_clients_own_inbox_as_before(stack: SecureStack) -> None:
    async def ask() -> int:
        client = await _client(stack)
        try:
            return (await client.request_raw(BODY)).status
        finally:
            await client.close()

    assert run(ask()) == 200
