"""``modelbus up``: an embedded nats-server plus one process per service.

It prefixes every child's log lines with the child's name, prints a line
starting with ``ready`` (with the NATS URL) once every service has said it is
serving, and on SIGINT/SIGTERM, or when any child dies, stops all children and
the server. Children also get a parent-death signal on Linux, so even a killed
supervisor leaves no orphans behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shared import identities
from shared.keyfile import (
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE_ENV,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    generate_master_key_file,
    write_new_private_file,
)
from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats, NatsServerError, die_with_parent

STOP_GRACE_S = 10.0


@dataclass
class Child:
    """One supervised service process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None


def default_data_dir() -> Path:
    """``$MODELBUS_HOME``, else ``~/.local/share/modelbus``."""
    home = os.environ.get("MODELBUS_HOME")
    return Path(home) if home else Path.home() / ".local" / "share" / "modelbus"


def run_file(data_dir: Path) -> Path:
    """Where a running ``modelbus up`` records its NATS URL for other commands."""
    return data_dir / "run.json"


class Supervisor:
    """Starts, watches and stops the children."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self._stopping = False
        self.exit_code = 0

    async def _pump(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        prefix = f"[{child.name}] ".encode()
        while line := await child.process.stdout.readline():
            if READY_MARKER.encode() in line:
                child.ready.set()
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()

    async def start(self, child: Child) -> None:
        """Start one child with stdout and stderr merged into the prefixed log."""
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **child.env},
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        child.pump = asyncio.create_task(self._pump(child))

    async def wait_ready(self, children: list[Child], timeout_s: float) -> None:
        """Wait until each child says it is serving; fail if one exits first."""
        waits = {asyncio.create_task(c.ready.wait()): c for c in children}
        exits = {asyncio.create_task(c.process.wait()): c for c in children if c.process}
        try:
            pending = set(waits)
            deadline = asyncio.get_running_loop().time() + timeout_s
            while pending:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    names = ", ".join(waits[t].name for t in pending)
                    raise RuntimeError(f"not ready after {timeout_s:.0f}s: {names}")
                done, _ = await asyncio.wait(pending | set(exits), timeout=left, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task in exits:
                        child = exits[task]
                        raise RuntimeError(f"{child.name} exited with status {task.result()} while starting")
                    pending.discard(task)
        finally:
            for task in [*waits, *exits]:
                task.cancel()

    async def wait_any_exit(self) -> Child:
        """Return the first child that exits."""
        tasks = {asyncio.create_task(c.process.wait()): c for c in self.children if c.process}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return tasks[next(iter(done))]

    async def stop_all(self) -> None:
        """SIGTERM every child, wait, then SIGKILL whatever is left."""
        self._stopping = True
        live = [c for c in self.children if c.process and c.process.returncode is None]
        for child in reversed(live):
            try:
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass
        for child in live:
            try:
                await asyncio.wait_for(child.process.wait(), STOP_GRACE_S)  # type: ignore[union-attr]
            except TimeoutError:
                child.process.kill()  # type: ignore[union-attr]
                await child.process.wait()  # type: ignore[union-attr]


def ensure_master_key(data_dir: Path) -> Path | None:
    """The master key file for the secrets store, generated (0600) on first run.

    ``None`` when the operator supplies the key (``MODELBUS_MASTER_KEY`` or
    ``MODELBUS_MASTER_KEY_FILE``): theirs is used as given.
    """
    if os.environ.get(MASTER_KEY_ENV) or os.environ.get(MASTER_KEY_FILE_ENV):
        return None
    path = data_dir / "master.key"
    if not path.exists():
        generate_master_key_file(path)
        print(f"[modelbus] generated the secrets master key {path} (mode 0600); back it up", flush=True)
    return path


def ensure_admin_token(data_dir: Path) -> Path | None:
    """The HTTP admin API's bearer token file, generated (0600) on first run, unless one is given."""
    if os.environ.get(ADMIN_TOKEN_ENV) or os.environ.get(ADMIN_TOKEN_FILE_ENV):
        return None
    path = data_dir / "admin.token"
    if not path.exists():
        write_new_private_file(path, secrets.token_urlsafe(32).encode() + b"\n")
        print(f"[modelbus] generated the admin API token {path} (mode 0600)", flush=True)
    return path


def build_children(
    args: object,
    nats_url: str,
    master_key_file: Path | None = None,
    admin_token_file: Path | None = None,
    *,
    passwords: dict[str, str] | None = None,
) -> tuple[list[Child], list[Child]]:
    """The children started first, in order (secrets, then config), and the rest."""
    py = sys.executable
    common = {"NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}

    def child(name: str, module: str, *extra: str, service: str) -> Child:
        env = dict(common)
        if service == "secrets" and master_key_file is not None:
            env[MASTER_KEY_FILE_ENV] = str(master_key_file)
        if service == "config" and admin_token_file is not None:
            env[ADMIN_TOKEN_FILE_ENV] = str(admin_token_file)
        env["OTEL_SERVICE_NAME"] = f"modelbus-{service}"
        if passwords is not None:
            env.update(identities.connection_env(service, passwords))
        return Child(name, [py, "-m", module, *extra], env)

    config_args = ["--config", str(Path(args.config).resolve())] if args.config else []  # type: ignore[attr-defined]
    first = [
        child("secrets", "services.secrets", service="secrets"),  # boot documents may carry secrets
        child("config", "services.config", *config_args, service="config"),
    ]
    rest: list[Child] = []
    routers: int = args.routers  # type: ignore[attr-defined]
    workers: int = args.provider_workers  # type: ignore[attr-defined]
    for i in range(1, routers + 1):
        rest.append(child("router" if routers == 1 else f"router-{i}", "services.router", service="router"))
    for i in range(1, workers + 1):
        rest.append(child("providers" if workers == 1 else f"providers-{i}", "services.providers", service="providers"))
    return first, rest


async def run_up(args: object) -> int:
    """The whole ``modelbus up`` life cycle; returns the exit status."""
    data_dir = Path(args.data_dir).expanduser()  # type: ignore[attr-defined]
    data_dir.mkdir(parents=True, exist_ok=True)
    server: EmbeddedNats | None = None
    nats_url = args.nats_url  # type: ignore[attr-defined]
    passwords: dict[str, str] | None = None
    if not nats_url:
        secure = not args.insecure  # type: ignore[attr-defined]
        passwords = identities.load_or_create(data_dir) if secure else None
        server = EmbeddedNats(
            data_dir / "nats",
            port=args.nats_port or -1,  # type: ignore[attr-defined]
            log_file=data_dir / "nats-server.log",
            extra_config=identities.render_authorization(passwords) if passwords else "",
        )
        try:
            nats_url = server.start()  # main thread: PR_SET_PDEATHSIG follows the forking thread
        except NatsServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"[nats] nats-server with JetStream at {nats_url} (data in {data_dir / 'nats'})", flush=True)
    first, rest = build_children(
        args, nats_url, ensure_master_key(data_dir), ensure_admin_token(data_dir), passwords=passwords
    )
    sup = Supervisor([*first, *rest])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status = 0
    try:
        for child in first:
            await sup.start(child)
            await sup.wait_ready([child], args.ready_timeout)  # type: ignore[attr-defined]
        for c in rest:
            await sup.start(c)
        await sup.wait_ready(rest, args.ready_timeout)  # type: ignore[attr-defined]
        run_file(data_dir).write_text(
            json.dumps({"nats_url": nats_url, "pid": os.getpid(), "secure": passwords is not None})
        )
        names = ",".join(c.name for c in sup.children)
        creds = ""
        if passwords is not None:
            creds = f" creds={identities.write_client_file(data_dir, nats_url, passwords)}"
        print(f"ready nats={nats_url}{creds} services={names}", flush=True)
        if args.demo:  # type: ignore[attr-defined]
            await _demo(nats_url, identities.connection_env("client", passwords) if passwords else {})
        exited = asyncio.create_task(sup.wait_any_exit())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            child = exited.result()
            print(f"error: {child.name} exited with status {child.process.returncode}; stopping", file=sys.stderr)  # type: ignore[union-attr]
            status = 1
        else:
            exited.cancel()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        print("stopping", flush=True)
        await sup.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        run_file(data_dir).unlink(missing_ok=True)
    return status


async def _demo(nats_url: str, identity: dict[str, str]) -> None:
    """Send one completion through the bus and print it (``make run``)."""
    from shared.client import ModelbusClient
    from shared.errors import ModelbusError

    kwargs = {}
    if identity:
        kwargs = {
            "user": identity[identities.USER_ENV],
            "password": identity[identities.PASSWORD_ENV],
            "inbox_prefix": identity[identities.INBOX_ENV],
        }
    client = await ModelbusClient.connect(nats_url, **kwargs)
    try:
        completion, headers = await client.complete(
            {"model": "default", "messages": [{"role": "user", "content": "Hello from modelbus!"}]}, timeout=30
        )
        print(
            f"demo: model=default -> endpoint={headers.get('Modelbus-Endpoint')} "
            f"model={headers.get('Modelbus-Model')}: {completion.choices[0].message.content}",
            flush=True,
        )
        print(f'try:  modelbus complete --model fast "your prompt"   (NATS_URL={nats_url})', flush=True)
    except ModelbusError as exc:
        print(f"demo failed: {exc.message}", file=sys.stderr, flush=True)
    finally:
        await client.close()
