"""The LiteLLM proxy contender: its own virtualenv, its config, its process.

LiteLLM lives in ``bench/.venv-litellm``, apart from the project's venv so
its many pins never touch modelbus's dependencies. The venv is built once;
a stamp file holding the requirement marks a finished install, so a changed
pin or an interrupted install builds it again.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bench import procs, progress
from shared.natsserver import die_with_parent
from tests.conftest import free_port

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".venv-litellm"
# 1.107.0 was a compromised release (a supply-chain attack), and newer ones do not
# resolve on our package mirror; pinning below it keeps every run reproducible.
REQUIREMENT = "litellm[proxy]>=1.106,<1.107"
STAMP = VENV_DIR / ".installed"
MODEL_NAME = "echo"
INSTALL_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 120.0


class LiteLLMUnavailable(RuntimeError):
    """LiteLLM could not be installed or did not start."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ensure_litellm(log_path: Path, venv: Path = VENV_DIR) -> Path:
    """Return the LiteLLM venv, creating it and installing :data:`REQUIREMENT` unless already done."""
    stamp = venv / STAMP.name
    if stamp.is_file() and stamp.read_text().strip() == REQUIREMENT:
        return venv
    progress(f"installing {REQUIREMENT} into {venv} (once; pip log: {log_path})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        # The project's interpreter, so the venv gets the same Python (3.11+) the harness runs on.
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", REQUIREMENT],
        ]
        for argv in steps:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            try:
                done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                raise LiteLLMUnavailable(f"{argv[0]} timed out after {INSTALL_TIMEOUT_S:.0f}s") from exc
            if done.returncode != 0:
                raise LiteLLMUnavailable(f"installing LiteLLM failed (exit {done.returncode}):\n{_tail(log_path)}")
    stamp.write_text(REQUIREMENT + "\n")
    return venv


def installed_version(venv: Path = VENV_DIR) -> str | None:
    """The LiteLLM version in ``venv``, read from its package metadata (no LiteLLM import)."""
    found = sorted(venv.glob("lib/python*/site-packages/litellm-*.dist-info"))
    return found[-1].name.removeprefix("litellm-").removesuffix(".dist-info") if found else None


@dataclass(frozen=True)
class LiteLLMProxy:
    """A running LiteLLM proxy."""

    base_url: str
    master_key: str
    version: str | None

    @property
    def chat_url(self) -> str:
        """Its OpenAI chat completions route."""
        return f"{self.base_url}/v1/chat/completions"


def proxy_config(upstream_base: str, upstream_key: str, master_key: str) -> str:
    """LiteLLM's config: one model, ``echo``, forwarded to the OpenAI API at ``upstream_base``."""
    config = {
        "model_list": [
            {
                "model_name": MODEL_NAME,
                "litellm_params": {"model": f"openai/{MODEL_NAME}", "api_base": upstream_base, "api_key": upstream_key},
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False},
    }
    return str(yaml.safe_dump(config, sort_keys=False))


@contextmanager
def running_litellm(
    venv: Path, upstream_base: str, upstream_key: str, work_dir: Path, log_path: Path
) -> Iterator[LiteLLMProxy]:
    """Run ``litellm --config ...`` (one worker, loopback, free port) until the block ends.

    Its output, request logs included, goes to ``log_path``; ``LITELLM_LOG=ERROR``
    keeps uvicorn's per-request access log off, as one would in production.
    """
    master_key = f"sk-bench-{secrets.token_hex(16)}"
    config = work_dir / "litellm.yaml"
    work_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(proxy_config(upstream_base, upstream_key, master_key))
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the model price list at start
        "LITELLM_LOG": "ERROR",
    }
    argv = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=work_dir,  # LiteLLM reads a .env from its working directory
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_live(process, f"{base_url}/health/liveliness", log_path)
        yield LiteLLMProxy(base_url, master_key, installed_version(venv))
    finally:
        procs.stop_group(process)


def _wait_until_live(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LiteLLMUnavailable(f"LiteLLM exited with status {process.returncode}:\n{_tail(log_path)}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
    raise LiteLLMUnavailable(f"LiteLLM was not live after {READY_TIMEOUT_S:.0f}s:\n{_tail(log_path)}")
