"""The gateway refuses to start on a setting that cannot work: status 2 and one line naming the
variable, never a key. No NATS is needed: these checks come before it connects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

KEY = "mb-startup-key-0123456789abcdef"


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MODELBUS_", "NATS_"))}
    full.update({"NATS_URL": "nats://127.0.0.1:9", "MODELBUS_HTTP": "127.0.0.1:0", **env})
    return subprocess.run(
        [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=30
    )


def test_a_missing_key_file_exits_2_naming_the_variable(tmp_path: Path) -> None:
    done = start({"MODELBUS_GATEWAY_KEYS": str(tmp_path / "absent.json")})
    assert done.returncode == 2
    assert "MODELBUS_GATEWAY_KEYS: cannot read" in done.stderr


def test_a_malformed_key_file_exits_2_without_quoting_what_it_holds(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": [{"name": "default", "sha256": "' + KEY + '"}]}')  # the key pasted for its hash
    done = start({"MODELBUS_GATEWAY_KEYS": str(keys)})
    assert done.returncode == 2
    assert "keys[0].sha256 is not 64 hex digits" in done.stderr
    assert KEY not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_taken_port_exits_2_naming_the_variable(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        done = start({"MODELBUS_GATEWAY_KEYS": str(keys), "MODELBUS_HTTP": f"127.0.0.1:{holder.getsockname()[1]}"})
    assert done.returncode == 2
    assert "MODELBUS_HTTP: cannot listen on 127.0.0.1:" in done.stderr
