"""Claude Code end to end: ``claude -p "Say hello" --max-turns 1`` against the HTTP gateway.

Behind ``make e2e``, not ``make test``: it needs node and npm, and
``scripts/install_claude_code.sh`` puts the pinned ``@anthropic-ai/claude-code`` in
``.e2e/``. Each stack is the real ``modelbus up --nats-port 0 --http-port 0``, and
Claude Code gets exactly what a user copies from its ``client.json``: ``http_url``
as ``ANTHROPIC_BASE_URL`` and ``api_key`` as ``ANTHROPIC_API_KEY``, with
``--model`` a modelbus alias (Claude Code's own default model is no alias). One
stack is answered by the built-in mock provider. The other uses an ``anthropic``
endpoint in front of llm-katan's Anthropic Messages API.

Claude Code runs offline: a temporary ``HOME`` and working directory,
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``, ``DISABLE_AUTOUPDATER=1``, and
``HTTP(S)_PROXY`` pointing at a loopback proxy that refuses and records any
request for somewhere other than loopback. Between Claude Code and the gateway
sits a recording proxy (``recorder.py``), so each test sees the exact request
Claude Code sent and the exact answer the gateway streamed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.natsserver import die_with_parent
from tests.conftest import ROOT, Katan, start_katan, stop_process, wait_for_line
from tests.e2e.recorder import Exchange, recording_proxy, refusing_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLAUDE = ROOT / ".e2e" / "node_modules" / ".bin" / "claude"
PROMPT = "Say hello"
CLAUDE_TIMEOUT_S = 120.0
KATAN_KEY = "sk-ant-katan-e2e-0123456789"
KATAN_ALIAS = "claude-katan"


@dataclass
class Up:
    """A running ``modelbus up`` and what its ``client.json`` says."""

    proc: subprocess.Popen[str]
    output: list[str]
    http_url: str
    api_key: str


@dataclass
class ClaudeRun:
    """One ``claude -p`` run: its exit, its JSON result and the requests it made."""

    returncode: int
    stdout: str
    stderr: str
    to_gateway: list[Exchange]
    outside: list[Exchange]

    @property
    def result(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed

    def messages(self) -> list[Exchange]:
        """The Messages requests that reached the gateway."""
        return [e for e in self.to_gateway if e.method == "POST" and e.path.split("?")[0] == "/v1/messages"]

    def explain(self) -> str:
        """What went wrong, for an assertion message: Claude Code's output and what the gateway answered."""
        answers = [f"{e.method} {e.path} -> {e.status}: {e.answer_text()[:600]}" for e in self.to_gateway]
        return f"exit {self.returncode}\nstdout: {self.stdout[:2000]}\nstderr: {self.stderr[:2000]}\n" + "\n".join(
            answers
        )


def _stack_env(extra: dict[str, str]) -> dict[str, str]:
    drop = ("NATS_URL", "MODELBUS_HOME", "MODELBUS_GATEWAY_KEYS", "MODELBUS_CREDS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"PYTHONUNBUFFERED": "1", "MODELBUS_ADMIN_HTTP": "off", "MODELBUS_LOG_LEVEL": "WARNING", **extra}


@contextmanager
def modelbus_up(home: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Up]:
    """``modelbus up --nats-port 0 --http-port 0 ARGS`` as a user runs it; stopped by its own PID."""
    argv = [sys.executable, "-m", "services.cli", "--data-dir", str(home), "up", "--nats-port", "0"]
    proc = subprocess.Popen(
        [*argv, "--http-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=_stack_env(env or {}),
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    try:
        wait_for_line(proc, lambda line: line.startswith("ready "), 90, output)
        client = json.loads((home / "client.json").read_text())
        yield Up(proc, output, client["http_url"], client["api_key"])
    finally:
        stop_process(proc, 30)


def run_claude(up: Up, workdir: Path, model: str, *, key_variable: str = "ANTHROPIC_API_KEY") -> ClaudeRun:
    """``claude -p PROMPT --max-turns 1`` against ``up``'s gateway, through the recording proxy, offline."""
    if not CLAUDE.exists():
        pytest.fail(f"{CLAUDE} is missing: run `make e2e`, which installs Claude Code first")
    home = workdir / "home"
    cwd = workdir / "project"
    home.mkdir(parents=True)
    cwd.mkdir()
    with recording_proxy(up.http_url) as gateway, refusing_proxy() as outside:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": gateway.url,
            key_variable: up.api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "HTTP_PROXY": outside.url,
            "HTTPS_PROXY": outside.url,
            "NO_PROXY": "127.0.0.1,localhost",
        }
        argv = [str(CLAUDE), "-p", PROMPT, "--max-turns", "1", "--output-format", "json", "--model", model]
        done = subprocess.run(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLAUDE_TIMEOUT_S
        )
        return ClaudeRun(done.returncode, done.stdout, done.stderr, gateway.exchanges, outside.exchanges)


def assert_answered_with_the_streamed_text(run: ClaudeRun) -> str:
    """Claude Code exited 0 and printed, as its result, the text the gateway streamed to it."""
    assert run.returncode == 0, run.explain()
    result = run.result
    assert result["is_error"] is False and result["subtype"] == "success", run.explain()
    answered = [e for e in run.messages() if e.status == 200]
    assert answered, run.explain()
    streamed = answered[-1].streamed_text()
    assert streamed and result["result"] == streamed, run.explain()
    return streamed


# ---------------------------------------------------------------- the mock


@pytest.fixture(scope="module")
def mock_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with modelbus_up(tmp_path_factory.mktemp("mock-stack")) as up:
        yield up


@pytest.fixture(scope="module")
def mock_run(mock_up: Up, tmp_path_factory: pytest.TempPathFactory) -> ClaudeRun:
    return run_claude(mock_up, tmp_path_factory.mktemp("claude-mock"), "fast")


def test_claude_code_prints_the_mock_s_answer_and_exits_zero(mock_run: ClaudeRun) -> None:
    text = assert_answered_with_the_streamed_text(mock_run)
    assert text.startswith("mock:mock-fast says: ") and text.endswith(PROMPT), text


def test_claude_code_sends_a_streaming_messages_request_with_beta_true_and_its_tools(mock_run: ClaudeRun) -> None:
    (first, *_) = mock_run.messages()
    assert (first.method, first.path) == ("POST", "/v1/messages?beta=true")
    body = first.json()
    assert body["stream"] is True and body["model"] == "fast"
    assert body["max_tokens"] == 32000
    assert len(body["tools"]) >= 10, [tool["name"] for tool in body["tools"]]
    assert first.headers["x-api-key"] == "<redacted>" and "anthropic-version" in first.headers


def test_the_gateway_streams_its_answer_to_claude_code_with_the_routing_headers(mock_run: ClaudeRun) -> None:
    assert [e.status for e in mock_run.messages()] == [200], mock_run.explain()
    (answer,) = mock_run.messages()
    assert answer.answer_headers["content-type"].startswith("text/event-stream")
    assert answer.answer_headers["x-modelbus-endpoint"] == "mock"
    assert answer.answer_headers["x-request-id"] == answer.answer_headers["request-id"]
    events = [line for line in answer.answer_text().splitlines() if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"


def test_claude_code_makes_no_request_outside_loopback(mock_run: ClaudeRun) -> None:
    assert mock_run.outside == [], [(e.method, e.path) for e in mock_run.outside]
    assert mock_run.to_gateway, "Claude Code reached the gateway"


def test_a_bearer_token_in_anthropic_auth_token_works_as_well(mock_up: Up, tmp_path: Path) -> None:
    run = run_claude(mock_up, tmp_path, "fast", key_variable="ANTHROPIC_AUTH_TOKEN")
    assert_answered_with_the_streamed_text(run)
    assert run.messages()[0].headers["authorization"] == "<redacted>"


def test_a_wrong_key_makes_claude_code_fail_with_an_authentication_error(mock_up: Up, tmp_path: Path) -> None:
    wrong = Up(mock_up.proc, mock_up.output, mock_up.http_url, "mb-not-the-key")
    run = run_claude(wrong, tmp_path, "fast")
    assert run.returncode != 0
    assert {e.status for e in run.messages()} == {401}, run.explain()
    assert "mb-not-the-key" not in "".join(e.answer_text() for e in run.to_gateway)


# ---------------------------------------------------------------- llm-katan behind an anthropic endpoint


def _katan_config(katan: Katan) -> str:
    docs = [
        {
            "kind": "ModelEndpoint",
            "metadata": {"name": "katan"},
            "spec": {
                "provider": "anthropic",
                "base_url": f"{katan.base_url}/v1",  # llm-katan serves /v1/messages at its root
                "default_model": "echo",
                "auth": {"secretRef": "env:KATAN_ANTHROPIC_KEY"},
                "allowPrivate": True,  # llm-katan listens on loopback
                "timeout_ms": 30_000,
            },
        },
        {"kind": "ModelAlias", "metadata": {"name": KATAN_ALIAS}, "spec": {"targets": [{"endpoint": "katan"}]}},
    ]
    return "\n---\n".join(json.dumps({"apiVersion": "modelbus.dev/v1", **doc}) for doc in docs)


@pytest.fixture(scope="module")
def katan_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("katan-stack")
    # Without --no-auto-tool-providers, llm-katan answers any request with tools by calling
    # the first one, and Claude Code (which always sends its tools) would run it.
    katan = start_katan(
        tmp, "--validate-keys", "--api-keys", f"anthropic={KATAN_KEY}", "--no-auto-tool-providers", "anthropic"
    )
    try:
        config = tmp / "routing.json"
        config.write_text(_katan_config(katan))
        with modelbus_up(tmp / "home", "--config", str(config), env={"KATAN_ANTHROPIC_KEY": KATAN_KEY}) as up:
            yield up
    finally:
        stop_process(katan.proc)


def test_claude_code_prints_llm_katan_s_answer_through_an_anthropic_endpoint(katan_up: Up, tmp_path: Path) -> None:
    run = run_claude(katan_up, tmp_path, KATAN_ALIAS)
    text = assert_answered_with_the_streamed_text(run)
    assert PROMPT in text, text  # llm-katan's echo backend answers with what it was asked
    (answer, *_) = [e for e in run.messages() if e.status == 200]
    routed = answer.answer_headers
    assert (routed["x-modelbus-endpoint"], routed["x-modelbus-model"]) == ("katan", "echo")
    assert answer.json()["stream"] is True
    assert run.outside == [], [(e.method, e.path) for e in run.outside]
