"""Peer gateways for the fair comparison (``make bench``): each installed apart, each run the same way.

A peer is one module here with one :class:`Peer` subclass. Each installs into
its own environment under ``bench/.envs/<name>`` (a virtualenv from PyPI, or
an npm prefix), never into the project's venv, and is started as one process
group whose leader is our own ``Popen`` (its PID is what the harness measures
and stops; nothing is ever found by name). Every peer forwards the same
OpenAI chat completion body to the same upstream (an OpenAI-compatible
llm-katan on loopback) and is reached by the same load generator
(:mod:`bench.h1load`), so the only thing that differs is the gateway.

An install or start that fails raises :class:`PeerUnavailable` with the reason;
the report then names the peer as unavailable and why, and the run goes on.
"""

from __future__ import annotations

import abc
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench import procs, progress
from bench.contenders import chat_body
from shared.natsserver import die_with_parent

BENCH_DIR = Path(__file__).resolve().parent.parent
ENVS_DIR = BENCH_DIR / ".envs"
"""Where every peer's environment lives (ignored by git: ``bench/.envs/``)."""
INSTALL_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 120.0
UPSTREAM_MODEL = "echo"
"""The model name every peer is configured to forward to the upstream."""
LOOPBACK = "127.0.0.1"
"""Where every peer listens: nothing of the benchmark is reachable from outside the machine."""
CHAT_PATH = "/v1/chat/completions"
"""OpenAI's chat completion path, where most peers take the benchmark request."""


class PeerUnavailable(RuntimeError):
    """A peer could not be installed or did not start; the message says why (for the report)."""


@dataclass(frozen=True)
class Upstream:
    """The OpenAI-compatible upstream every contender forwards to."""

    host: str
    port: int
    api_key: str

    @property
    def base_url(self) -> str:
        """``http://host:port/v1`` (OpenAI's base URL shape)."""
        return f"http://{self.host}:{self.port}/v1"


@dataclass
class Running:
    """One running peer: where the load generator sends, and the process group to measure and stop."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    path: str = CHAT_PATH
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra request headers the peer needs (auth, routing); the same on every request."""
    model: str = UPSTREAM_MODEL
    """The ``model`` the request body must name for this peer."""
    version: str | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


class Peer(abc.ABC):
    """One gateway: how to install it, its version, and how to start it in front of an upstream."""

    name: str = ""
    """Short id, also the directory under :data:`ENVS_DIR`."""
    title: str = ""
    """How the report names it, e.g. ``vllm-router (Rust, PyPI vllm-router)``."""
    family: str = ""
    """``rust`` (counted in the Rust gateways' median), ``proxy``, ``node`` or ``python``."""

    @property
    def env_dir(self) -> Path:
        return ENVS_DIR / self.name

    @abc.abstractmethod
    def install(self, log_path: Path) -> None:
        """Install into :attr:`env_dir` unless already done (idempotent; a stamp marks a finished install)."""

    @abc.abstractmethod
    def version(self) -> str | None:
        """The installed version, read without starting the peer."""

    @abc.abstractmethod
    def start(self, upstream: Upstream, work_dir: Path, log_path: Path) -> Running:
        """Start the peer on a free loopback port, wait until it answers, and return it."""

    def stop(self, running: Running) -> None:
        """Stop the process group we started (SIGTERM, then SIGKILL)."""
        procs.stop_group(running.process)


# ---------------------------------------------------------------- helpers for peers


def tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` of a log, for an error message."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_logged(
    argv: Sequence[str], log: IO[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Run one install step with its output in ``log``; :class:`PeerUnavailable` if it fails."""
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    try:
        done = subprocess.run(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=INSTALL_TIMEOUT_S,
            cwd=cwd,
            env=dict(env) if env is not None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"{argv[0]} timed out after {INSTALL_TIMEOUT_S:.0f}s") from exc
    except OSError as exc:
        raise PeerUnavailable(f"{argv[0]} could not run: {exc}") from exc
    if done.returncode != 0:
        raise PeerUnavailable(f"{' '.join(argv[:4])} failed (exit {done.returncode})")


def pip_install(env_dir: Path, requirements: Sequence[str], log_path: Path) -> Path:
    """A virtualenv at ``env_dir`` with ``requirements``, built once (a stamp holds the requirements)."""
    stamp = env_dir / ".installed"
    wanted = "\n".join(requirements) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return env_dir
    progress(f"installing {' '.join(requirements)} into {env_dir} (once; log: {log_path})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            run_logged([sys.executable, "-m", "venv", "--clear", str(env_dir)], log)
            run_logged(
                [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *requirements],
                log,
            )
        except PeerUnavailable as exc:
            raise PeerUnavailable(f"{exc}:\n{tail(log_path)}") from None
    stamp.write_text(wanted)
    return env_dir


def dist_version(env_dir: Path, distribution: str) -> str | None:
    """The version of ``distribution`` in a virtualenv, from its metadata (nothing imported)."""
    normalized = distribution.replace("-", "_").lower()
    for info in sorted(env_dir.glob("lib/python*/site-packages/*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
        if name.replace("-", "_").lower() == normalized:
            return version
    return None


def spawn(
    argv: Sequence[str], log_path: Path, *, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a peer as the leader of its own process group, output to ``log_path``, dying with us."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        full_env.pop(name, None)  # loopback only: no proxy between a peer and its upstream
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def wait_until_serving(
    process: subprocess.Popen[Any],
    url: str,
    log_path: Path,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Until ``url`` answers 200 (a GET, or a POST of ``body``); :class:`PeerUnavailable` if the process
    exits or the time runs out. A POST of the benchmark body proves the whole path to the upstream works."""
    deadline = time.monotonic() + timeout_s
    last = ""
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PeerUnavailable(f"exited with status {process.returncode}:\n{tail(log_path)}")
            try:
                if body is None:
                    reply = client.get(url, headers=dict(headers or {}))
                else:
                    reply = client.post(
                        url, content=body, headers={"content-type": "application/json", **(headers or {})}
                    )
                if reply.status_code == 200:
                    return
                last = f"HTTP {reply.status_code}: {reply.text[:300]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    raise PeerUnavailable(f"not serving after {timeout_s:.0f}s (last: {last}):\n{tail(log_path)}")


def free_port() -> int:
    """A TCP port free on loopback now, for a peer to bind next (the OS picks it; we hold nothing open)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def stopped_on_failure(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Stop ``process``'s group if the block raises, so a peer that never serves leaves nothing running."""
    try:
        yield
    except BaseException:
        procs.stop_group(process)
        raise


def serving(
    process: subprocess.Popen[bytes],
    log_path: Path,
    *,
    host: str,
    port: int,
    version: str | None,
    headers: Mapping[str, str] | None = None,
    path: str = CHAT_PATH,
    model: str = UPSTREAM_MODEL,
) -> Running:
    """``process`` as a :class:`Running` peer once it answers the benchmark body at ``host:port``/``path``.

    The readiness probe is the benchmark request itself (with ``headers`` and
    ``model``), so a peer counts as started only when the whole path to the
    upstream works; if it never does, its group is stopped and
    :class:`PeerUnavailable` says why."""
    with stopped_on_failure(process):
        wait_until_serving(process, f"http://{host}:{port}{path}", log_path, body=chat_body(model), headers=headers)
    return Running(
        process=process,
        host=host,
        port=port,
        path=path,
        headers=dict(headers or {}),
        model=model,
        version=version,
        log_path=log_path,
    )


def serve(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path,
    port: int,
    version: str | None,
    headers: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    path: str = CHAT_PATH,
    model: str = UPSTREAM_MODEL,
    host: str = LOOPBACK,
) -> Running:
    """:func:`spawn` ``argv`` and return it once :func:`serving`: how a peer on a port we chose starts."""
    process = spawn(argv, log_path, cwd=cwd, env=env)
    return serving(process, log_path, host=host, port=port, version=version, headers=headers, path=path, model=model)
