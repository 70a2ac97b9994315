"""``modelbus up``: an embedded nats-server plus one process per service.

It prefixes every child's log lines with the child's name, prints a line
starting with ``ready`` (with the NATS URL, the client credentials file and the
admin API's address) once every service has said it is serving, and on
SIGINT/SIGTERM, or when any child dies, stops all children and the server.
Children also get a parent-death signal on Linux, so even a killed supervisor
leaves no orphans behind.

Each child gets only its own secrets: its broker identities
(:func:`shared.identities.connection_env`), and the master key (secrets) or
the audit key and admin token (config); those variables are removed from what
the others inherit. Everything is created with umask 077 in a data directory
:mod:`services.cli.datadir` keeps private.

While it runs, the supervisor watches the application registry
(``clients.json``, written by ``modelbus create/delete client``), re-renders
the server's authorization from it and reloads the nats-server it owns
(SIGHUP to its own child), then writes ``clients.applied`` for the CLI.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.cli.datadir import (
    CLIENTS_APPLIED,
    DEFAULT_HOME,
    NATS_DIR,
    NATS_LOG,
    DataDirError,
    RunInfo,
    ensure_admin_token,
    ensure_audit_key,
    ensure_master_key,
    prepare,
    read_run_info,
    run_file,
    write_run_info,
)
from services.cli.registry import registry_digest, registry_state, render_authorization, watch_clients
from shared import identities
from shared.keyfile import (
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE_ENV,
    AUDIT_KEY_ENV,
    AUDIT_KEY_FILE_ENV,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    write_private_file,
)
from shared.logs import READY_MARKER
from shared.natsserver import EmbeddedNats, NatsServerError, die_with_parent

STOP_GRACE_S = 10.0
_ADMIN_URL_RE = re.compile(r"\badmin=(https?://\S+)")

KEY_ENV_OF: dict[str, tuple[str, ...]] = {
    "secrets": (
        MASTER_KEY_ENV,
        MASTER_KEY_FILE_ENV,
        "MODELBUS_MASTER_KEY_PREVIOUS",
        "MODELBUS_MASTER_KEY_PREVIOUS_FILE",
    ),
    "config": (AUDIT_KEY_ENV, AUDIT_KEY_FILE_ENV, ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV),
}
"""The key variables each service may see; every other child inherits none of them."""
IDENTITY_ENV = (
    identities.USER_ENV,
    identities.PASSWORD_ENV,
    identities.INBOX_ENV,
    identities.STATE_USER_ENV,
    identities.STATE_PASSWORD_ENV,
    identities.STATE_INBOX_ENV,
    "MODELBUS_CREDS",
)
"""Broker credentials a secure stack sets per child; never inherited from the operator's shell."""


@dataclass
class Child:
    """One supervised service process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_line: str = ""
    """The service's ready line (the config service's names the admin API's address)."""
    pump: asyncio.Task[None] | None = None


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
            if READY_MARKER.encode() in line and not child.ready.is_set():
                child.ready_line = line.decode(errors="replace").strip()
                child.ready.set()
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()

    async def start(self, child: Child) -> None:
        """Start one child with stdout and stderr merged into the prefixed log."""
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child.env,
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


def build_children(
    args: object,
    nats_url: str,
    master_key_file: Path | None = None,
    admin_token_file: Path | None = None,
    *,
    passwords: dict[str, str] | None = None,
    audit_key_file: Path | None = None,
) -> tuple[list[Child], list[Child]]:
    """The children started first, in order (secrets, then config), and the rest, each with its
    whole environment: the supervisor's, without any key or identity meant for another child."""
    py = sys.executable
    withheld = {v for names in KEY_ENV_OF.values() for v in names}
    if passwords is not None:
        withheld |= set(IDENTITY_ENV)
    inherited = {k: v for k, v in os.environ.items() if k not in withheld}
    common = {**inherited, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}

    def child(name: str, module: str, *extra: str, service: str) -> Child:
        env = dict(common)
        env.update({k: os.environ[k] for k in KEY_ENV_OF.get(service, ()) if os.environ.get(k)})
        if service == "secrets" and master_key_file is not None:
            env[MASTER_KEY_FILE_ENV] = str(master_key_file)
        if service == "config" and admin_token_file is not None:
            env[ADMIN_TOKEN_FILE_ENV] = str(admin_token_file)
        if service == "config" and audit_key_file is not None:
            env[AUDIT_KEY_FILE_ENV] = str(audit_key_file)
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


def cli_command() -> str:
    """How to run this ``modelbus`` from another terminal, exactly (for the printed hints)."""
    on_path = shutil.which("modelbus")
    script = Path(sys.executable).parent / "modelbus"
    if on_path and script.is_file() and Path(on_path).resolve() == script.resolve():
        return "modelbus"
    if script.is_file():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m services.cli"


def data_dir_option(data_dir: Path) -> str:
    """``--data-dir DIR`` unless ``data_dir`` is the one found without options or environment."""
    if data_dir.absolute() == DEFAULT_HOME.absolute():
        return ""
    return f" --data-dir {shlex.quote(str(data_dir.absolute()))}"


async def run_up(args: object) -> int:
    """The whole ``modelbus up`` life cycle; returns the exit status."""
    os.umask(0o077)  # whatever this process and its children create is theirs alone
    data_dir = Path(args.data_dir).expanduser().absolute()  # type: ignore[attr-defined]
    try:
        narrowed = prepare(data_dir)
    except DataDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if narrowed:
        print(f"[modelbus] made {len(narrowed)} file(s) and folder(s) in {data_dir} private (0600/0700)", flush=True)
    running = read_run_info(data_dir)
    if running is not None:
        print(
            f"error: a modelbus stack (pid {running.pid}) already runs with data dir {data_dir} "
            f"at {running.nats_url}; stop it first or pass another --data-dir",
            file=sys.stderr,
        )
        return 1
    server: EmbeddedNats | None = None
    nats_url = args.nats_url  # type: ignore[attr-defined]
    passwords: dict[str, str] | None = None
    stamp, registry = registry_state(data_dir)
    if not nats_url:
        secure = not args.insecure  # type: ignore[attr-defined]
        passwords = identities.load_or_create(data_dir) if secure else None
        try:
            extra = render_authorization(passwords, registry) if passwords else ""
        except ValueError as exc:
            print(f"error: {data_dir / identities.CLIENTS_REGISTRY} is unreadable: {exc}", file=sys.stderr)
            return 1
        server = EmbeddedNats(
            data_dir / NATS_DIR,
            port=args.nats_port or -1,  # type: ignore[attr-defined]
            log_file=data_dir / NATS_LOG,
            extra_config=extra,
        )
        try:
            nats_url = server.start()  # main thread: PR_SET_PDEATHSIG follows the forking thread
        except NatsServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if passwords:
            write_private_file(data_dir / CLIENTS_APPLIED, registry_digest(registry).encode())
        print(f"[nats] nats-server with JetStream at {nats_url} (data in {data_dir / NATS_DIR})", flush=True)
    first, rest = build_children(
        args,
        nats_url,
        ensure_master_key(data_dir),
        ensure_admin_token(data_dir),
        passwords=passwords,
        audit_key_file=ensure_audit_key(data_dir),
    )
    sup = Supervisor([*first, *rest])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status = 0
    watcher: asyncio.Task[None] | None = None
    try:
        for child in first:
            await sup.start(child)
            await sup.wait_ready([child], args.ready_timeout)  # type: ignore[attr-defined]
        for c in rest:
            await sup.start(c)
        await sup.wait_ready(rest, args.ready_timeout)  # type: ignore[attr-defined]
        admin = _ADMIN_URL_RE.search(next(c.ready_line for c in first if c.name == "config"))
        admin_url = admin.group(1) if admin else None
        write_run_info(
            data_dir,
            RunInfo(
                nats_url=nats_url,
                pid=os.getpid(),
                secure=passwords is not None,
                admin_url=admin_url,
                embedded=server is not None,
            ),
        )
        if server is not None and passwords is not None:
            watcher = asyncio.create_task(watch_clients(server, data_dir, passwords, stamp))
        names = ",".join(c.name for c in sup.children)
        creds = ""
        if passwords is not None:
            creds = f" creds={identities.write_client_file(data_dir, nats_url, passwords)}"
        admin_part = f" admin={admin_url}" if admin_url else ""
        print(f"ready nats={nats_url}{creds}{admin_part} services={names}", flush=True)
        if args.demo:  # type: ignore[attr-defined]
            await _demo(nats_url, identities.connection_env("client", passwords) if passwords else {}, data_dir)
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
        if watcher is not None:
            watcher.cancel()
        await sup.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        run_file(data_dir).unlink(missing_ok=True)
    return status


async def _demo(nats_url: str, identity: dict[str, str], data_dir: Path) -> None:
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
        print(f'try:  {cli_command()}{data_dir_option(data_dir)} complete --model fast "your prompt"', flush=True)
    except ModelbusError as exc:
        print(f"demo failed: {exc.message}", file=sys.stderr, flush=True)
    finally:
        await client.close()
