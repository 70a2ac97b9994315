"""The ``modelbus`` command.

``modelbus up``        start an embedded NATS and every service
``modelbus complete``  send one completion through the bus and print it

The CLI is a NATS client like any other: it imports only :mod:`shared`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from services.cli.admin import add_parsers as add_admin_parsers
from services.cli.secrets_cmd import add_parser as add_secrets_parser
from services.cli.up import default_data_dir, run_file, run_up
from shared import identities
from shared.bus import DEFAULT_NATS_URL


def _discover_url(args: argparse.Namespace) -> str:
    """``--nats-url``, then ``NATS_URL``, then a running ``modelbus up``, then localhost."""
    if args.nats_url:
        return str(args.nats_url)
    if os.environ.get("NATS_URL"):
        return os.environ["NATS_URL"]
    marker = run_file(Path(args.data_dir).expanduser())
    try:
        return str(json.loads(marker.read_text())["nats_url"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_NATS_URL


def identity_kwargs(args: argparse.Namespace, role: str) -> dict[str, str]:
    """Connection credentials for ``role``: ``NATS_USER``/``NATS_PASSWORD`` from the
    environment when set (``shared.bus`` reads them), else the identities a local secure
    ``modelbus up`` generated in its data directory, else none."""
    if os.environ.get("NATS_USER") or args.nats_url or os.environ.get("NATS_URL"):
        return {}
    data_dir = Path(args.data_dir).expanduser()
    try:
        if not json.loads(run_file(data_dir).read_text()).get("secure"):
            return {}
        passwords = json.loads((data_dir / identities.IDENTITIES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {"user": role, "password": passwords[role], "inbox_prefix": identities.inbox_prefix(role)}


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
    url = _discover_url(args)
    try:
        client = await ModelbusClient.connect(url, **identity_kwargs(args, "client"))
    except Exception as exc:
        print(f"error: cannot connect to NATS at {url}: {exc}", file=sys.stderr)
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
    from shared.bus import connect
    from shared.errors import ModelbusError

    args.nats_url = getattr(args, "nats_url", None) or args.nats_url_global
    url = _discover_url(args)
    try:
        nc = await connect("modelbus-cli", url, **identity_kwargs(args, "admin"))
    except Exception as exc:
        print(f"error: cannot connect to NATS at {url}: {exc}", file=sys.stderr)
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
    up.add_argument("--routers", type=int, default=1, help="router worker processes")
    up.add_argument("--provider-workers", type=int, default=1, help="provider worker processes")
    up.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for services")
    up.add_argument("--demo", action="store_true", help="send one demo completion once ready")
    up.add_argument("--insecure", action="store_true",
                    help="embedded NATS without per-role identities (default: secure, see docs/security.md)")

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
    complete.add_argument("-v", "--verbose", action="store_true", help="print routing details to stderr")

    add_admin_parsers(sub)
    add_secrets_parser(sub)
    parser.add_argument("--nats-url", dest="nats_url_global", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``modelbus`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "up":
        if args.routers < 1 or args.provider_workers < 1:
            print("error: --routers and --provider-workers must be at least 1", file=sys.stderr)
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
