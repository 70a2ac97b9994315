"""The ``modelbus`` command: ``up`` with its embedded nats-server, and ``complete``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.natsserver import die_with_parent
from tests.conftest import ROOT, wait_for_line

MODELBUS = [sys.executable, "-m", "services.cli"]
FREE_PORTS = ["--nats-port", "0", "--http-port", "0"]


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            out.append(kid)
            out.extend(_children(kid))
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


class Up:
    def __init__(self, proc: subprocess.Popen[str], url: str, home: Path, output: list[str]) -> None:
        self.proc, self.url, self.home, self.output = proc, url, home, output

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        return subprocess.run(
            [*MODELBUS, "--data-dir", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**clean, **(env or {})},
        )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    home = tmp_path_factory.mktemp("modelbus-home")
    proc = subprocess.Popen(
        [*MODELBUS, "--data-dir", str(home), "up", "--nats-port", "0", "--http-port", "0", "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    ready = wait_for_line(proc, lambda line: line.startswith("ready "), 90, output)
    match = re.search(r"nats=(nats://\S+)", ready)
    assert match, ready
    yield Up(proc, match.group(1), home, output)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def test_up_prints_a_ready_line_with_the_nats_url_of_its_own_server(up: Up) -> None:
    assert up.url.startswith("nats://127.0.0.1:")
    assert (up.home / "nats" / "jetstream").is_dir()


def test_up_prefixes_each_service_log_with_its_name(up: Up) -> None:
    text = "".join(up.output)
    for name in ("config", "router", "providers", "secrets", "gateway"):
        assert f"[{name}] " in text


def test_up_demo_prints_one_completion_from_the_builtin_example(up: Up) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(line.startswith("demo:") for line in up.output):
        time.sleep(0.05)
    demo = next(line for line in up.output if line.startswith("demo:"))
    assert "endpoint=mock" in demo and "Hello from modelbus!" in demo


def test_complete_finds_the_running_server_and_prints_the_answer(up: Up) -> None:
    result = up.cli("complete", "--model", "fast", "hello cli")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "mock:mock-fast says: hello cli"


def test_complete_stream_prints_tokens_then_a_newline(up: Up) -> None:
    result = up.cli("complete", "--model", "smart", "--stream", "--system", "be brief", "stream this")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "mock:mock-smart says: stream this\n"


def test_every_standard_alias_answers_with_no_keys(up: Up) -> None:
    for alias in ("default", "fast", "smart", "cheap", "local"):
        result = up.cli("complete", "--model", alias, "hi")
        assert result.returncode == 0, result.stderr
        assert f"mock:mock-{alias} says: hi" in result.stdout


def test_test_endpoint_probes_with_one_token_and_reports_the_model(up: Up) -> None:
    result = up.cli("test", "endpoint", "mock")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: mock answered with model mock-1 in ")
    missing = up.cli("test", "endpoint", "no-such-endpoint")
    assert missing.returncode == 1
    assert "404" in missing.stderr


def test_up_generates_its_master_key_audit_key_and_admin_token_privately(up: Up) -> None:
    for name in ("master.key", "audit.key", "admin.token"):
        path = up.home / name
        assert path.is_file()
        assert path.stat().st_mode & 0o777 == 0o600


def test_complete_exits_non_zero_with_the_error_message(up: Up) -> None:
    result = up.cli("complete", "--model", "no-such-model", "hi")
    assert result.returncode == 1
    assert "404" in result.stderr and "no-such-model" in result.stderr


def test_complete_without_a_server_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*MODELBUS, "--data-dir", str(tmp_path), "complete", "--nats-url", "nats://127.0.0.1:1", "hi"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "no modelbus stack found at nats://127.0.0.1:1" in result.stderr


def test_up_refuses_an_invalid_config_and_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: modelbus.dev/v1\nkind: ModelEndpoint\nmetadata: {name: x}\n"
        "spec: {provider: openai, base_url: not-a-url}\n"
    )
    result = subprocess.run(
        [*MODELBUS, "--data-dir", str(tmp_path / "home"), "up", *FREE_PORTS, "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "doc 1 (ModelEndpoint x): spec.base_url: not a URL" in result.stdout + result.stderr


def test_sigterm_stops_every_child_and_the_server(up: Up) -> None:
    kids = _children(up.proc.pid)
    assert len(kids) >= 5  # nats-server and four services
    up.proc.terminate()
    assert up.proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.05)
    assert [k for k in kids if _alive(k)] == []
    assert not (up.home / "run.json").exists()


def test_an_insecure_stack_still_requires_the_http_key(tmp_path: Path) -> None:
    """--insecure drops the broker identities, not the gateway's key check."""
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [*MODELBUS, "--data-dir", str(home), "up", "--nats-port", "0", "--http-port", "0", "--insecure"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "NATS_URL"}, "PYTHONUNBUFFERED": "1"},
        preexec_fn=die_with_parent,
    )
    try:
        ready = wait_for_line(proc, lambda line: line.startswith("ready "), 90, [])
        http = re.search(r" http=(http://127\.0\.0\.1:\d+) ", ready)
        assert http, ready
        url = f"{http.group(1)}/v1/chat/completions"
        body = {"model": "fast", "messages": [{"role": "user", "content": "insecure"}]}
        assert httpx.post(url, json=body, timeout=30).status_code == 401
        key = (home / "gateway.key").read_text().strip()
        answer = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "mock:mock-fast says: insecure"
    finally:
        proc.terminate()
        proc.wait(30)
