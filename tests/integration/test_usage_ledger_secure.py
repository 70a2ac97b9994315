"""The usage ledger under a real ``modelbus up`` with broker identities: routers record as
``router-state``, ``modelbus usage`` reads as ``admin``, the caller is the client's identity
and the key name is the gateway's, and a client that sets ``Modelbus-Key`` itself gets none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared import headers as H
from shared.client import ModelbusClient
from tests.conftest import ROOT, run
from tests.integration.secure_stack import SecureStack, start_secure_stack

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with start_secure_stack(tmp_path_factory.mktemp("usage-secure")) as s:
        yield s


def usage(stack: SecureStack, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MODELBUS_CREDS")}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(stack.home), "usage", *args, "-o", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_records_name_the_client_identity_and_the_gateway_key_and_usage_reads_them_as_admin(
    stack: SecureStack,
) -> None:
    client_file = stack.home / "client.json"
    run_id = f"run-{uuid.uuid4().hex}"

    async def as_client() -> None:
        client = await ModelbusClient.connect(creds=client_file)
        try:
            body = {"model": "fast", "messages": [{"role": "user", "content": "hello ledger"}]}
            for _ in range(3):
                reply = await client.request_raw(body, headers={H.RUN_ID: run_id, H.KEY: "forged-key"}, timeout=30)
                assert reply.status == 200, reply.body
        finally:
            await client.close()

    run(as_client())
    creds = json.loads(client_file.read_text())
    response = httpx.post(
        f"{creds['http_url']}/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "hello over http"}]},
        headers={"authorization": f"Bearer {creds['api_key']}", "x-modelbus-run-id": run_id},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while True:
        report = usage(stack, "--by", "key", "--since", "1h")
        if report["total"]["requests"] >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    groups = {g["group"]: g for g in report["groups"]}
    assert groups[None]["requests"] == 3  # the client's own Modelbus-Key is not believed
    assert "forged-key" not in groups
    (gateway_key,) = [name for name in groups if name is not None]
    assert groups[gateway_key]["requests"] == 1
    assert report["missing_records"] == 0
    by_run = {g["group"]: g for g in usage(stack, "--by", "run", "--since", "1h")["groups"]}
    assert by_run[run_id]["requests"] == 4
    assert by_run[run_id]["tokens"]["input_tokens"] > 0
