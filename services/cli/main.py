"""The ``modelbus`` command.

``modelbus up``        start an embedded NATS, every service and the HTTP gateway
``modelbus complete``  send one completion through the bus and print it
``modelbus status``    where the running stack of the data dir listens, and the state of each process
``modelbus apply|get|describe|delete|history|rollback|audit|test``  administration
``modelbus create|delete client NAME``, ``get clients``  per-application identities
``modelbus create|delete secret NAME``, ``get secrets``  stored secrets
``modelbus create|delete key NAME``, ``get keys``  the HTTP gateway's API keys (:mod:`services.cli.keys_cmd`)

How a command finds the stack and its credentials: :mod:`services.cli.connection`.

The CLI is a NATS client like any other: it imports only :mod:`shared`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from services.cli.admin import add_parsers as add_admin_parsers
from services.cli.clients_cmd import cmd_delete_client, cmd_get_clients
from services.cli.connection import CliError, connect, data_dir_of, no_stack_message, resolve
from services.cli.datadir import default_data_dir, read_processes, read_run_info
from services.cli.secrets_cmd import add_parser as add_secrets_parser
from services.cli.up import DEFAULT_HTTP_PORT, cluster_problem, run_up
from services.cli.usage_cmd import add_parser as add_usage_parser
from shared.client import CREDS_ENV

CLIENT_KINDS = ("client", "clients")
"""How ``get`` and ``delete`` spell application identities (handled in the data directory, not over NATS)."""


def _merge_globals(args: argparse.Namespace) -> None:
    """Options given before the subcommand count like the subcommand's own."""
    if not getattr(args, "nats_url", None):
        args.nats_url = args.nats_url_global
    if not getattr(args, "creds", None):
        args.creds = args.creds_global


async def _complete(args: argparse.Namespace) -> int:
    from shared.client import ModelbusClient
    from shared.errors import ModelbusError

    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    body: dict[str, object] = {"messages": messages}
    if args.model:
        body["model"] = args.model
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    try:
        client = ModelbusClient(await connect(resolve(args, "client"), "modelbus-cli"))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    headers = {"Modelbus-Timeout-Ms": str(int(args.timeout * 1000))}
    if args.agent:
        headers["Modelbus-Agent"] = args.agent
    if args.run_id:
        headers["Modelbus-Run-Id"] = args.run_id
    try:
        if args.stream:
            body["stream"] = True
            async for chunk in client.stream(body, headers=headers, timeout=args.timeout):
                for choice in chunk.choices:
                    if choice.delta.content:
                        sys.stdout.write(choice.delta.content)
                        sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            completion, reply_headers = await client.complete(body, headers=headers, timeout=args.timeout)
            message = completion.choices[0].message
            if message.content:
                print(message.content)
            for call in message.tool_calls or []:
                print(f"tool call {call.function.name}({call.function.arguments})")
            if args.verbose:
                print(
                    f"# endpoint={reply_headers.get('Modelbus-Endpoint')} model={reply_headers.get('Modelbus-Model')} "
                    f"attempts={reply_headers.get('Modelbus-Attempts')}",
                    file=sys.stderr,
                )
        return 0
    except ModelbusError as exc:
        print(f"error: {exc.http_status} {exc.message}", file=sys.stderr)
        return 1
    finally:
        await client.close()


async def _admin(args: argparse.Namespace) -> int:
    from shared.errors import ModelbusError

    try:
        nc = await connect(resolve(args, "admin"), "modelbus-cli")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return int(await args.admin(nc, args))
    except ModelbusError as exc:
        print(f"error: {exc.http_status} {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await nc.drain()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="modelbus", description="Bring-your-own-LLM model router on NATS.")
    parser.add_argument(
        "--data-dir",
        default=str(default_data_dir()),
        help="state directory (default: $MODELBUS_HOME or ~/.local/share/modelbus)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start an embedded NATS and every service")
    up.add_argument("--config", help="routing configuration file (default: built-in example)")
    up.add_argument(
        "--nats-url", default=os.environ.get("NATS_URL"), help="use this NATS server instead of starting one"
    )
    up.add_argument("--nats-port", type=int, default=4222, help="port of the embedded nats-server (0 picks a free one)")
    up.add_argument(
        "--http-port",
        type=_port,
        default=DEFAULT_HTTP_PORT,
        help=f"port of the HTTP gateway (OpenAI and Anthropic APIs) on 127.0.0.1 (default {DEFAULT_HTTP_PORT}; "
        "0 picks a free one)",
    )
    up.add_argument("--routers", type=int, default=1, help="router worker processes")
    up.add_argument("--provider-workers", type=int, default=1, help="provider worker processes")
    up.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for services")
    up.add_argument("--demo", action="store_true", help="send one demo completion once ready")
    up.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="run a local N-node nats-server cluster with JetStream (odd, 3 or more; "
        "its nodes listen on --nats-port and the next N-1 ports, all replicated 3 times)",
    )
    up.add_argument(
        "--insecure",
        action="store_true",
        help="embedded NATS without per-role identities (default: secure, see docs/security.md)",
    )

    complete = sub.add_parser("complete", help="send one completion and print the answer")
    complete.add_argument("prompt", help="the user message")
    complete.add_argument("--model", help="alias, endpoint or endpoint/model (default: alias 'default')")
    complete.add_argument("--system", help="a system message")
    complete.add_argument("--agent", help="route as this agent (Modelbus-Agent: name or namespace/name)")
    complete.add_argument("--run-id", help="Modelbus-Run-Id: pin this run to the revision of its first request")
    complete.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    complete.add_argument("--max-tokens", type=int)
    complete.add_argument("--timeout", type=float, default=60.0, help="seconds")
    complete.add_argument("--nats-url", help="NATS server (default: NATS_URL or the running modelbus up)")
    complete.add_argument("--creds", help=f"credentials file to connect with (default: {CREDS_ENV} or the data dir)")
    complete.add_argument("-v", "--verbose", action="store_true", help="print routing details to stderr")

    status = sub.add_parser(
        "status", help="the running stack of the data dir: NATS URL(s), admin API, every process's state"
    )
    status.add_argument("--admin-url", action="store_true", help="print only the admin API's URL (for scripts)")
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    status.set_defaults(local=_status)

    add_admin_parsers(sub)
    add_secrets_parser(sub)
    add_usage_parser(sub)
    parser.add_argument("--nats-url", dest="nats_url_global", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--creds",
        dest="creds_global",
        default=None,
        help=f"credentials file to connect with (default: {CREDS_ENV}, else the identities in the data dir)",
    )
    return parser


def _port(text: str) -> int:
    """A TCP port number (0 to 65535) for argparse."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def _status(args: argparse.Namespace) -> int:
    """Print what the running ``modelbus up`` of the data dir recorded: where it listens, and its processes."""
    data_dir = data_dir_of(args)
    run = read_run_info(data_dir)
    table = read_processes(data_dir)
    supervisor = int(table.get("supervisor_pid") or 0) if table else 0
    if table is not None and (supervisor != (run.pid if run else supervisor) or not _supervisor_alive(supervisor)):
        table = None  # left behind by a stack that is gone (or by another one)
    if run is None:
        if table is not None and not args.admin_url:
            return _print_starting(data_dir, supervisor, table, args.output)
        print(f"error: {no_stack_message(data_dir)}", file=sys.stderr)
        return 1
    if args.admin_url:
        if not run.admin_url:
            print(f"error: the stack in {data_dir} serves no HTTP admin API (MODELBUS_ADMIN_HTTP=off)", file=sys.stderr)
            return 1
        print(run.admin_url)
        return 0
    processes = _processes(table)
    if args.output == "json":
        body = {**dataclasses.asdict(run), "nats_urls": list(run.nats_urls), "state": "running"}
        print(json.dumps({**body, "data_dir": str(data_dir), "processes": processes}, indent=2))
        return 0
    print(f"nats_url   {run.nats_url}")
    if run.cluster:
        print(f"cluster    {run.cluster} nodes (JetStream replicas 3)")
    print(f"admin_url  {run.admin_url or '-'}")
    print(f"http_url   {run.http_url or '-'}")
    print(f"secure     {'yes' if run.secure else 'no (--insecure or external NATS)'}")
    print(f"pid        {run.pid}")
    print(f"data_dir   {data_dir}")
    if processes:
        print()
        _print_processes(processes)
    return 0


def _supervisor_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _processes(table: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The supervisor's process records, each with its uptime as of now."""
    if table is None:
        return []
    now = time.time()
    rows = []
    for raw in table.get("processes", []):
        if not isinstance(raw, dict):
            continue
        row = dict(raw)
        started = row.get("started_at")
        row["uptime_s"] = round(now - float(started), 1) if isinstance(started, int | float) else None
        rows.append(row)
    return rows


def _print_starting(data_dir: Any, supervisor: int, table: dict[str, Any], output: str) -> int:
    processes = _processes(table)
    if output == "json":
        body = {"state": "starting", "pid": supervisor, "data_dir": str(data_dir), "processes": processes}
        print(json.dumps(body, indent=2))
        return 0
    print(f"a stack (pid {supervisor}) is starting in {data_dir}; not ready yet")
    print()
    _print_processes(processes)
    return 0


def _print_processes(processes: list[dict[str, Any]]) -> None:
    rows = [("PROCESS", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT")]
    for p in processes:
        uptime = p.get("uptime_s")
        rows.append(
            (
                str(p.get("name", "?")),
                str(p.get("state", "?")),
                str(p.get("pid") or "-"),
                _duration(float(uptime)) if isinstance(uptime, int | float) else "-",
                str(p.get("restarts", 0)),
                str(p.get("last_exit") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


def _duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``, ``3d04h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _local_handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int] | None:
    """The handler of a command that works on the data directory alone, without NATS."""
    kind = str(getattr(args, "kind", "")).lower()
    if args.command == "get" and kind in CLIENT_KINDS:
        return cmd_get_clients
    if args.command == "delete" and kind in CLIENT_KINDS:
        return cmd_delete_client
    return getattr(args, "local", None)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``modelbus`` console script."""
    args = build_parser().parse_args(argv)
    _merge_globals(args)
    local = _local_handler(args)
    if local is not None:
        sys.exit(local(args))
    if args.command == "up":
        if args.routers < 1 or args.provider_workers < 1:
            print("error: --routers and --provider-workers must be at least 1", file=sys.stderr)
            sys.exit(2)
        problem = cluster_problem(args.cluster, args.nats_url)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        _exit_with(run_up(args))
    if getattr(args, "admin", None) is not None:
        _exit_with(_admin(args))
    if args.command == "complete":
        _exit_with(_complete(args))


def _exit_with(main: Coroutine[Any, Any, int]) -> None:
    """Run a command's coroutine (on uvloop) and exit with its status."""
    from shared.bus import run

    status: list[int] = []

    async def wrapper() -> None:
        status.append(await main)

    run(wrapper())
    sys.exit(status[0] if status else 1)
