"""Configuration survives restarts of the config service and nats-server; the audit
chain detects tampering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import nats
import pytest

from shared.admin import AuditReport, HistoryList, HistoryQuery, ResourceList, ResourceQuery
from shared.natsserver import EmbeddedNats
from shared.subjects import AUDIT_STREAM, AUDIT_SUBJECT, AUDIT_VERIFY, CONFIG_HISTORY, CONFIG_RESOURCES
from tests.conftest import ROOT, run, start_stack, stop_process
from tests.integration.test_config_service import _admin, ask, mock_alias


def _cli(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "NATS_URL": url},
    )


def test_config_survives_a_restart_of_the_config_service_and_nats_server(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    home = tmp_path / "home"
    stack = start_stack(url, None, home)
    try:
        config = tmp_path / "change.yaml"
        config.write_text(json.dumps(mock_alias("durable", "kept-model")))
        result = _cli(home, url, "apply", "-f", str(config), "--wait")
        assert result.returncode == 0, result.stderr
        before = run(_admin(url, CONFIG_RESOURCES, ResourceQuery(), ResourceList))
    finally:
        stop_process(stack.proc)
        server.stop()

    server = EmbeddedNats(tmp_path / "nats")  # same store directory, new process
    url = server.start()
    stack = start_stack(url, None, home)
    try:
        after = run(_admin(url, CONFIG_RESOURCES, ResourceQuery(), ResourceList))
        assert after.revision == before.revision  # boot defaults found nothing to fill
        assert after.items == before.items
        assert ask(url, "durable").headers["Modelbus-Model"] == "kept-model"
        history = run(_admin(url, CONFIG_HISTORY, HistoryQuery(), HistoryList))
        assert [h.action for h in history.items][-1] == "boot"
        rollback = _cli(home, url, "rollback", "--to", str(history.items[-1].revision), "--wait")
        assert rollback.returncode == 0, rollback.stderr
        assert ask(url, "durable").status == 404
        verify = _cli(home, url, "audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "intact" in verify.stdout
    finally:
        stop_process(stack.proc)
        server.stop()


def test_a_tampered_audit_entry_is_detected(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    home = tmp_path / "home"
    stack = start_stack(url, None, home)
    try:
        config = tmp_path / "change.yaml"
        for model in ("a", "b"):
            config.write_text(json.dumps(mock_alias("audited", model)))
            assert _cli(home, url, "apply", "-f", str(config)).returncode == 0
        assert run(_admin(url, AUDIT_VERIFY, None, AuditReport)).ok

        async def forge() -> int:
            """Append a rewritten copy of entry 2; the stream sequence it lands at."""
            nc = await nats.connect(url)
            js = nc.jetstream()
            original = await js.get_msg(AUDIT_STREAM, seq=2)
            assert original.data is not None
            entry = json.loads(original.data)
            entry["actor"] = "someone-else"  # rewrite who did it, keep the old hash
            ack = await js.publish(AUDIT_SUBJECT, json.dumps(entry).encode(), stream=AUDIT_STREAM)
            await nc.close()
            return ack.seq

        forged_at = run(forge())
        report = run(_admin(url, AUDIT_VERIFY, None, AuditReport))
        assert not report.ok
        assert report.broken_at == forged_at
        assert report.reason is not None
        verify = _cli(home, url, "audit", "verify")
        assert verify.returncode == 1
        assert f"BROKEN at stream sequence {forged_at}" in verify.stderr
    finally:
        stop_process(stack.proc)
        server.stop()


def test_audit_entries_never_hold_secret_values(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    home = tmp_path / "home"
    key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes, test only
    stack = start_stack(url, None, home, env={"MODELBUS_MASTER_KEY": key})
    try:
        result = _cli(home, url, "create", "secret", "team/api-key", "--from-literal", "value=sk-very-secret-value")
        assert result.returncode == 0, result.stderr

        async def entries() -> list[bytes]:
            nc = await nats.connect(url)
            js = nc.jetstream()
            info = await js.stream_info(AUDIT_STREAM)
            out: list[bytes] = []
            for seq in range(1, info.state.last_seq + 1):
                data = (await js.get_msg(AUDIT_STREAM, seq=seq)).data
                assert data is not None
                out.append(data)
            await nc.close()
            return out

        raw = run(entries())
        assert any(b"secret team/api-key" in e for e in raw)
        assert all(b"sk-very-secret-value" not in e for e in raw)
        assert msgspec.json.decode(raw[-1])["action"] == "secret.set"
    finally:
        stop_process(stack.proc)
        server.stop()
