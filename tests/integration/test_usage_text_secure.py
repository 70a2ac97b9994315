"""Text records under a real ``modelbus up`` with broker identities: the config service creates the
stream as ``config-state``, the provider worker appends as ``providers``, ``modelbus usage --text``
reads as ``admin``, and a client can neither turn recording on nor read what was recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import headers as H
from shared.client import ModelbusClient
from shared.subjects import USAGE_TEXT, USAGE_TEXT_STREAM
from tests.conftest import ROOT, run
from tests.integration.secure_stack import SecureStack, start_secure_stack

pytestmark = pytest.mark.timeout(180)

AGENTS = """\
apiVersion: modelbus.dev/v1
kind: Agent
metadata: {name: scribe}
spec: {model_ref: fast, record_text: true}
---
apiVersion: modelbus.dev/v1
kind: Agent
metadata: {name: mute}
spec: {model_ref: fast}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    home = tmp_path_factory.mktemp("text-secure")
    with start_secure_stack(home) as s:
        agents = home / "agents.yaml"
        agents.write_text(AGENTS)
        applied = cli(s, "apply", "-f", str(agents), "--wait")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        yield s


def cli(stack: SecureStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MODELBUS_CREDS")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(stack.home), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ask(client_file: Path, agent: str, prompt: str, request_id: str, extra: dict[str, str] | None = None) -> None:
    async def go() -> None:
        client = await ModelbusClient.connect(creds=client_file)
        try:
            body = {"model": "fast", "messages": [{"role": "user", "content": prompt}]}
            headers = {H.AGENT: agent, H.REQUEST_ID: request_id, **(extra or {})}
            reply = await client.request_raw(body, headers=headers, timeout=30)
            assert reply.status == 200, reply.body
        finally:
            await client.close()

    run(go())


def test_an_opted_in_agents_text_is_stored_by_the_worker_and_read_as_admin(stack: SecureStack) -> None:
    rid = f"secure-text-{uuid.uuid4().hex}"
    _ask(stack.home / "client.json", "scribe", "a secret plan", rid)
    deadline = time.monotonic() + 10
    while (shown := cli(stack, "usage", "--text", rid, "-o", "json")).returncode != 0:
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.1)
    (record,) = json.loads(shown.stdout)
    assert record["agent"] == "scribe" and record["request"]["messages"][0]["content"] == "a secret plan"
    assert "a secret plan" in record["completion"]["choices"][0]["message"]["content"]


def test_a_client_header_does_not_record_and_a_client_cannot_read_the_records(stack: SecureStack) -> None:
    rid = f"secure-forged-{uuid.uuid4().hex}"
    _ask(stack.home / "client.json", "mute", "not to be kept", rid, {H.RECORD_TEXT: "1"})
    barrier = f"secure-barrier-{uuid.uuid4().hex}"
    _ask(stack.home / "client.json", "scribe", "barrier", barrier)
    deadline = time.monotonic() + 10
    while cli(stack, "usage", "--text", barrier).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    missing = cli(stack, "usage", "--text", rid)  # the worker publishes in order: it would be there by now
    assert missing.returncode == 1 and "no text record" in missing.stderr

    async def snoop() -> list[str]:
        errors: list[str] = []
        nc = await stack.connect("client", errors)
        try:
            await nc.subscribe(USAGE_TEXT)
            try:
                await nc.jetstream().stream_info(USAGE_TEXT_STREAM)
            except Exception as exc:
                errors.append(f"stream info: {exc}")
            await nc.flush()
        finally:
            await nc.close()
        return errors

    errors = run(snoop())
    violations = [e.lower() for e in errors if "permissions violation" in e.lower()]
    assert any(f'subscription to "{USAGE_TEXT}"' in e for e in violations), errors
    assert any(f"stream.info.{USAGE_TEXT_STREAM}".lower() in e for e in violations), errors
