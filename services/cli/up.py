"""``modelbus up``: an embedded nats-server (or a local cluster) plus one process per service.

It prefixes every child's log lines with the child's name, prints a line
starting with ``ready`` (with the NATS URL(s), the client credentials file,
the admin API's address and the HTTP gateway's) once every service has said it
is serving, and keeps every process running: :mod:`services.cli.supervise`
restarts what crashes, with backoff, gives up on a crash loop, names the real
cause when nats-server dies and records each process's state for ``modelbus
status``. On SIGINT/SIGTERM it stops the services, then the server. Children
also get a parent-death signal on Linux, so even a killed supervisor leaves no
orphans.

``--cluster N`` runs N nodes (:class:`shared.natscluster.EmbeddedCluster`) with
JetStream in ``nats/node-<i>`` instead of the one server, each supervised on its
own ports and store, and tells the services to keep three replicas of every
stream and bucket (``MODELBUS_JS_REPLICAS``).

The HTTP gateway (OpenAI and Anthropic APIs over HTTP, ``services.gateway``)
starts last, once the routers serve, on ``127.0.0.1:--http-port``. Its keys are
in the JetStream key store. Once the config service is ready, ``up`` stores the
default key's hash there as ``default`` (as the admin identity, like ``modelbus
create key``): on the run that generates ``gateway.key`` (the first, or after
it was deleted) it replaces any stored ``default``; on later runs only if none
was ever stored, so ``modelbus delete key default`` stays in force across
restarts. The key itself (``gateway.key``, 0600) goes into ``client.json`` as
``api_key`` while it is the stored ``default``, never into a child's
environment or argv. With ``MODELBUS_GATEWAY_KEYS`` set, the operator supplies
an extra key file, the gateway alone is told it, and no default key is made.

Each child gets only its own secrets: its broker identities
(:func:`shared.identities.connection_env`), and the master key (secrets), the
audit key and admin token (config) or the gateway's keys file (gateway); those
variables are removed from what the others inherit. Everything is created with
umask 077 in a data directory :mod:`services.cli.datadir` keeps private.

While it runs, the supervisor watches the application registry
(``clients.json``, written by ``modelbus create/delete client``), re-renders
the server's authorization from it and reloads the nats-server(s) it owns
(SIGHUP to its own children), then writes ``clients.applied`` for the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from services.cli.datadir import (
    CLIENTS_APPLIED,
    DEFAULT_HOME,
    GATEWAY_KEYS_ENV,
    GATEWAY_KEYS_FILE,
    NATS_DIR,
    NATS_LOG,
    PROCESSES_FILE,
    DataDirError,
    RunInfo,
    ensure_admin_token,
    ensure_audit_key,
    ensure_gateway_key,
    ensure_master_key,
    ensure_route_password,
    prepare,
    read_run_info,
    run_file,
    write_run_info,
)
from services.cli.keys_cmd import store_default_key_at
from services.cli.processes import NatsProcess, ServiceProcess, StartInterrupted, Supervised
from services.cli.registry import registry_digest, registry_state, render_authorization, watch_clients
from services.cli.supervise import Supervisor
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
from shared.natscluster import EmbeddedCluster
from shared.natsserver import EmbeddedNats, NatsServerError, port_in_use

REPLICAS_ENV = "MODELBUS_JS_REPLICAS"
"""How many replicas the services keep of every stream and bucket (read by :mod:`shared.jetstream`)."""
CLUSTER_REPLICAS = 3
"""The replica count ``--cluster`` sets: survives the loss of any one node (a majority of three remains)."""
MAX_CLUSTER_NODES = 9
CLUSTER_START_TIMEOUT_S = 60.0
_ADMIN_URL_RE = re.compile(r"\badmin=(https?://\S+)")
_HTTP_URL_RE = re.compile(r"\bhttp=(https?://\S+)")
_METRICS_URL_RE = re.compile(r"\bmetrics=(https?://\S+)")
HTTP_ENV = "MODELBUS_HTTP"
"""``host:port`` the HTTP gateway listens on (read by ``services.gateway``)."""
HTTP_HOST = "127.0.0.1"
"""``modelbus up`` serves HTTP on loopback only; expose it further with a proxy of your own."""
DEFAULT_HTTP_PORT = 8787

KEY_ENV_OF: dict[str, tuple[str, ...]] = {
    "secrets": (
        MASTER_KEY_ENV,
        MASTER_KEY_FILE_ENV,
        "MODELBUS_MASTER_KEY_PREVIOUS",
        "MODELBUS_MASTER_KEY_PREVIOUS_FILE",
    ),
    "config": (AUDIT_KEY_ENV, AUDIT_KEY_FILE_ENV, ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV),
    "gateway": (GATEWAY_KEYS_ENV,),
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


@dataclass(frozen=True)
class Children:
    """The service children of a stack, in the order they are started."""

    first: list[ServiceProcess]
    """Started one at a time, each once the one before is ready: secrets, then config."""
    rest: list[ServiceProcess]
    """Routers and provider workers, started together."""
    edge: list[ServiceProcess]
    """The HTTP gateway, started once the routers serve."""

    @property
    def all(self) -> list[ServiceProcess]:
        """Every child, in start order."""
        return [*self.first, *self.rest, *self.edge]


def build_children(
    args: argparse.Namespace,
    nats_url: str,
    master_key_file: Path | None = None,
    admin_token_file: Path | None = None,
    *,
    passwords: dict[str, str] | None = None,
    audit_key_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Children:
    """Every child with its whole environment: the supervisor's, without any key or identity meant
    for another child. ``extra_env`` holds defaults the supervisor's own environment overrides (e.g.
    the replica count). The gateway listens on ``127.0.0.1:args.http_port``."""
    py = sys.executable
    withheld = {v for names in KEY_ENV_OF.values() for v in names}
    if passwords is not None:
        withheld |= set(IDENTITY_ENV)
    inherited = {k: v for k, v in os.environ.items() if k not in withheld}
    common = {**(extra_env or {}), **inherited, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}

    def child(name: str, module: str, *extra: str, service: str) -> ServiceProcess:
        env = dict(common)
        env.update({k: os.environ[k] for k in KEY_ENV_OF.get(service, ()) if os.environ.get(k)})
        if service == "secrets" and master_key_file is not None:
            env[MASTER_KEY_FILE_ENV] = str(master_key_file)
        if service == "config" and admin_token_file is not None:
            env[ADMIN_TOKEN_FILE_ENV] = str(admin_token_file)
        if service == "config" and audit_key_file is not None:
            env[AUDIT_KEY_FILE_ENV] = str(audit_key_file)
        if service == "gateway":
            env[HTTP_ENV] = f"{HTTP_HOST}:{args.http_port}"
        env["OTEL_SERVICE_NAME"] = f"modelbus-{service}"
        if passwords is not None:
            env.update(identities.connection_env(service, passwords))
        return ServiceProcess(name, [py, "-m", module, *extra], env)

    config_args = ["--config", str(Path(args.config).resolve())] if args.config else []
    first = [
        child("secrets", "services.secrets", service="secrets"),  # boot documents may carry secrets
        child("config", "services.config", *config_args, service="config"),
    ]
    rest: list[ServiceProcess] = []
    routers: int = args.routers
    workers: int = args.provider_workers
    for i in range(1, routers + 1):
        rest.append(child("router" if routers == 1 else f"router-{i}", "services.router", service="router"))
    for i in range(1, workers + 1):
        rest.append(child("providers" if workers == 1 else f"providers-{i}", "services.providers", service="providers"))
    edge = [child("gateway", "services.gateway", service="gateway")]
    return Children(first, rest, edge)


def http_port_problem(port: int) -> str | None:
    """Why the gateway cannot listen on ``127.0.0.1:port``, or ``None`` (0 always works: a free port)."""
    if not 0 <= port <= 65535:
        return f"--http-port takes a port from 0 to 65535, not {port}"
    if port and port_in_use(HTTP_HOST, port):
        return (
            f"port {port} on {HTTP_HOST} (--http-port, the HTTP gateway's) is taken by another process; "
            "stop it or pass another --http-port (0 picks a free one)"
        )
    return None


def metrics_url_of(ready_line: str) -> str | None:
    """The Prometheus endpoint a service's ready line names (``metrics=URL``), or ``None``."""
    found = _METRICS_URL_RE.search(ready_line)
    return found.group(1) if found else None


def http_url_of(ready_line: str) -> str | None:
    """The URL a gateway's ready line names (``http=http://HOST:PORT``), or ``None``."""
    found = _HTTP_URL_RE.search(ready_line)
    return found.group(1) if found else None


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


def cluster_problem(nodes: int, nats_url: str | None) -> str | None:
    """Why ``--cluster nodes`` cannot be used as given, or ``None``."""
    if not nodes:
        return None
    if nats_url:
        return "--cluster runs its own nats-server nodes; it cannot be combined with --nats-url (or NATS_URL)"
    if nodes < 3 or nodes % 2 == 0 or nodes > MAX_CLUSTER_NODES:
        return (
            f"--cluster takes an odd number of nodes from 3 to {MAX_CLUSTER_NODES} "
            f"(a majority must survive a lost node), not {nodes}"
        )
    return None


def stop_tiers(procs: list[Supervised]) -> list[list[Supervised]]:
    """Shutdown order: the HTTP gateway (no new HTTP requests, finishes its own), routers (no new
    requests), provider workers (finish theirs), config, secrets, nats-server."""
    services = [p for p in procs if isinstance(p, ServiceProcess)]

    def module(proc: ServiceProcess) -> str:
        return proc.argv[proc.argv.index("-m") + 1] if "-m" in proc.argv else ""

    order = ("services.gateway", "services.router", "services.providers", "services.config", "services.secrets")
    tiers: list[list[Supervised]] = [[p for p in services if module(p) == name] for name in order]
    tiers.append([p for p in services if module(p) not in order])
    tiers.append([p for p in procs if isinstance(p, NatsProcess)])
    return [tier for tier in tiers if tier]


async def run_up(args: argparse.Namespace) -> int:
    """The whole ``modelbus up`` life cycle; returns the exit status."""
    os.umask(0o077)  # whatever this process and its children create is theirs alone
    data_dir = Path(args.data_dir).expanduser().absolute()
    nodes: int = getattr(args, "cluster", 0) or 0
    nats_url: str | None = args.nats_url
    problem = cluster_problem(nodes, nats_url)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
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
    problem = http_port_problem(args.http_port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        gateway_key = ensure_gateway_key(data_dir)
    except DataDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if gateway_key is not None and (data_dir / GATEWAY_KEYS_FILE).exists():
        print(
            f"[modelbus] note: {data_dir / GATEWAY_KEYS_FILE} is no longer read: the gateway's keys are in "
            f"JetStream (`modelbus get keys`); to keep other keys it lists, set {GATEWAY_KEYS_ENV} to it",
            flush=True,
        )
    api_key: str | None = None
    server: EmbeddedNats | EmbeddedCluster | None = None
    nats_procs: list[NatsProcess] = []
    passwords: dict[str, str] | None = None
    stamp, registry = registry_state(data_dir)
    extra_env: dict[str, str] = {}
    if not nats_url:
        secure = not args.insecure
        passwords = identities.load_or_create(data_dir) if secure else None
        try:
            extra = render_authorization(passwords, registry) if passwords else ""
        except ValueError as exc:
            print(f"error: {data_dir / identities.CLIENTS_REGISTRY} is unreadable: {exc}", file=sys.stderr)
            return 1
        port: int = args.nats_port
        try:
            if nodes:
                server, nats_url = _start_cluster(data_dir, nodes, port, extra, passwords)
                nats_procs = [NatsProcess(f"nats-{i}", node) for i, node in enumerate(server.nodes, 1)]
                extra_env[REPLICAS_ENV] = str(CLUSTER_REPLICAS)
            else:
                _note_other_store(data_dir, cluster=False)
                server = EmbeddedNats(
                    data_dir / NATS_DIR, port=port or -1, log_file=data_dir / NATS_LOG, extra_config=extra
                )
                nats_url = server.start()  # main thread: PR_SET_PDEATHSIG follows the forking thread
                nats_procs = [NatsProcess("nats-server", server)]
                print(f"[nats] nats-server with JetStream at {nats_url} (data in {data_dir / NATS_DIR})", flush=True)
        except NatsServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if passwords:
            write_private_file(data_dir / CLIENTS_APPLIED, registry_digest(registry).encode())
    assert nats_url is not None
    children = build_children(
        args,
        nats_url,
        ensure_master_key(data_dir),
        ensure_admin_token(data_dir),
        passwords=passwords,
        audit_key_file=ensure_audit_key(data_dir),
        extra_env=extra_env,
    )
    first, rest, edge = children.first, children.rest, children.edge
    sup = Supervisor(status_file=data_dir / PROCESSES_FILE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status = 0
    watcher: asyncio.Task[None] | None = None
    ready_timeout: float = args.ready_timeout
    try:
        for proc in nats_procs:
            sup.adopt(proc)
        for child in first:
            await sup.start(child)
            await sup.wait_ready([child], ready_timeout, stop=stop)
        if gateway_key is not None:  # before the gateway starts, so its first load holds it
            api_key = await store_default_key_at(nats_url, passwords, gateway_key)
        for c in rest:
            await sup.start(c)
        await sup.wait_ready(rest, ready_timeout, stop=stop)
        for c in edge:  # the gateway, once routers answer what it forwards
            await sup.start(c)
        await sup.wait_ready(edge, ready_timeout, stop=stop)
        admin = _ADMIN_URL_RE.search(next(c.ready_line for c in first if c.name == "config"))
        admin_url = admin.group(1) if admin else None
        http_url = http_url_of(edge[0].ready_line)
        metrics = [url for c in children.all if (url := metrics_url_of(c.ready_line))]
        write_run_info(
            data_dir,
            RunInfo(
                nats_url=nats_url,
                pid=os.getpid(),
                secure=passwords is not None,
                admin_url=admin_url,
                embedded=server is not None,
                nats_urls=tuple(nats_url.split(",")),
                cluster=nodes,
                http_url=http_url,
                metrics_urls=tuple(metrics),
            ),
        )
        if server is not None and passwords is not None:
            watcher = asyncio.create_task(watch_clients(server, data_dir, passwords, stamp))
        names = ",".join(c.name for c in children.all)
        creds = ""
        if passwords is not None:
            path = identities.write_client_file(
                data_dir, nats_url, passwords, http_url=http_url, api_key=api_key, metrics_urls=metrics
            )
            creds = f" creds={path}"
        admin_part = f" admin={admin_url}" if admin_url else ""
        http_part = f" http={http_url}" if http_url else ""
        metrics_part = f" metrics={','.join(metrics)}" if metrics else ""
        print(f"ready nats={nats_url}{creds}{admin_part}{http_part}{metrics_part} services={names}", flush=True)
        if args.demo:
            await _demo(nats_url, identities.connection_env("client", passwords) if passwords else {}, data_dir)
        status = await sup.run(stop)
    except StartInterrupted:
        status = 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        print("stopping", flush=True)
        if watcher is not None:
            watcher.cancel()
        await sup.shutdown(stop_tiers(sup.processes))
        if server is not None:  # the supervisor stopped its nodes; this catches any it never adopted
            await asyncio.to_thread(server.stop)
        run_file(data_dir).unlink(missing_ok=True)
        (data_dir / PROCESSES_FILE).unlink(missing_ok=True)
    return status


def _start_cluster(
    data_dir: Path, nodes: int, port: int, extra: str, passwords: dict[str, str] | None
) -> tuple[EmbeddedCluster, str]:
    """Start the local cluster of ``--cluster``; returns it and its comma-joined URLs."""
    _note_other_store(data_dir, cluster=True)
    probe = None
    if passwords:  # an identity allowed to ask JetStream whether it has a leader
        role = "secrets-state"
        probe = {"user": role, "password": passwords[role], "inbox_prefix": identities.inbox_prefix(role)}
    cluster = EmbeddedCluster(
        data_dir / NATS_DIR,
        nodes,
        extra_config=extra,
        route_password=ensure_route_password(data_dir),
        probe_login=probe,
        ports=[port + i for i in range(nodes)] if port else None,
    )
    print(f"[nats] starting a {nodes}-node nats-server cluster with JetStream", flush=True)
    urls = cluster.start(CLUSTER_START_TIMEOUT_S)  # main thread: PR_SET_PDEATHSIG follows the forking thread
    where = ", ".join(str(n.data_dir) for n in cluster.nodes)
    print(f"[nats] cluster {cluster.name} with JetStream at {','.join(urls)} (data in {where})", flush=True)
    return cluster, ",".join(urls)


def _note_other_store(data_dir: Path, *, cluster: bool) -> None:
    """Say so when the data dir holds JetStream state of the other mode, which this run does not see."""
    nats_dir = data_dir / NATS_DIR
    single, nodes = (nats_dir / "jetstream").is_dir(), any(nats_dir.glob("node-*/jetstream"))
    if cluster and single and not nodes:
        print(
            f"[modelbus] note: {nats_dir / 'jetstream'} holds the single server's state (config history, "
            "secrets, audit); the cluster keeps its own in nats/node-<i> and starts empty",
            flush=True,
        )
    elif not cluster and nodes and not single:
        print(
            f"[modelbus] note: {nats_dir}/node-<i> holds a --cluster run's state; "
            "this single server keeps its own and starts empty",
            flush=True,
        )


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
