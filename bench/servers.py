"""Every server the benchmark runs, started on first use and all stopped at the end.

:class:`Lab` owns them: two llm-katan echo servers (a plain one, and one with
a time to first token and inter-token latency for streams), modelbus stacks
(one untraced, one exporting every span to the OTLP sink, one with several
routers for the hot swap), the OTLP sink, and the LiteLLM proxy. All listen on
loopback ports chosen at start. Servers are started from the main thread only:
their parent-death signal (``PR_SET_PDEATHSIG``) follows the thread that forked
them. :meth:`Lab.close` stops them in reverse order and then checks that no
child process of the benchmark survived.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from bench import procs, progress
from bench.litellm_proxy import LiteLLMProxy, running_litellm
from bench.peers import Upstream
from scripts.stack import running_stack
from shared.natsserver import die_with_parent
from tests.conftest import Katan, start_katan, stop_process, wait_for_line

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "bench-key"
STREAM_TTFT_MS = 50
STREAM_ITL_MS = 10

T = TypeVar("T")

# Names of the servers, for Lab.release and the log.
KATAN = "llm-katan"
STREAMING_KATAN = "llm-katan (streaming)"
OTLP_SINK = "otlp-sink"
PLAIN_STACK = "modelbus"
TRACED_STACK = "modelbus+tracing"
SWAP_STACK = "modelbus (hot swap)"
LITELLM = "litellm"


# ---------------------------------------------------------------- configuration


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modelbus.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _openai_endpoint(name: str, katan: Katan) -> dict[str, Any]:
    spec = {
        "provider": "openai",
        "base_url": f"{katan.base_url}/v1",
        "allowPrivate": True,  # llm-katan listens on loopback
        "default_model": "echo",
        "auth": {"secretRef": "env:BENCH_KEY"},
    }
    return _doc("ModelEndpoint", name, spec)


def _alias(name: str, endpoint: str) -> dict[str, Any]:
    return _doc("ModelAlias", name, {"targets": [{"endpoint": endpoint}]})


def bench_config(katan: Katan, streaming_katan: Katan) -> str:
    """Routing for scenarios a-d and f: ``echo`` and ``echo-stream`` reach llm-katan, ``bus`` the mock."""
    docs = [
        _openai_endpoint("katan", katan),
        _alias("echo", "katan"),
        _openai_endpoint("katan-stream", streaming_katan),
        _alias("echo-stream", "katan-stream"),
        _doc("ModelEndpoint", "mock", {"provider": "mock", "default_model": "mock-1"}),
        _alias("bus", "mock"),
    ]
    return "\n---\n".join(json.dumps(doc) for doc in docs)


SWAP_ENDPOINTS = ("mock-a", "mock-b")
SWAP_ALIAS = "hot"


def swap_alias(endpoint: str) -> str:
    """The document the hot swap applies: alias ``hot`` pointing at ``endpoint``."""
    return json.dumps(_alias(SWAP_ALIAS, endpoint))


def swap_config() -> str:
    """Routing for scenario e: two mock endpoints and the alias that alternates between them."""
    docs = [_doc("ModelEndpoint", name, {"provider": "mock", "default_model": "mock-1"}) for name in SWAP_ENDPOINTS]
    return "\n---\n".join([*(json.dumps(doc) for doc in docs), swap_alias(SWAP_ENDPOINTS[0])])


# ---------------------------------------------------------------- modelbus stacks


@dataclass(frozen=True)
class ModelbusStack:
    """A running ``modelbus up`` against its own nats-server."""

    url: str
    routers: int
    tracing: bool
    processes: dict[str, int] = field(default_factory=dict)
    """Label (``services.router``, ``nats-server``, ...) to pid, for memory sampling."""
    http_url: str | None = None
    """Where its HTTP gateway serves (``http=`` of the ready line, kept in ``run.json``)."""
    api_key: str | None = field(default=None, repr=False)
    """The gateway's default key (``gateway.key`` in the data dir); never printed or written out."""

    def describe(self) -> str:
        """One line for the report: its routers, provider workers and tracing."""
        workers = sum(label.startswith("services.providers") for label in self.processes)
        routers = f"{self.routers} router{'s' if self.routers > 1 else ''}"
        providers = f"{workers} provider worker{'s' if workers != 1 else ''}"
        return f"{routers}, {providers}, tracing {'on (OTLP/HTTP export)' if self.tracing else 'off'}"


SUPERVISOR = "services.cli up (supervisor)"
GATEWAY = "services.gateway"
"""The label of the HTTP gateway's process in :attr:`ModelbusStack.processes`."""


def stack_directory(supervisor: int) -> Path:
    """The temporary directory ``running_stack`` made: the parent of ``up``'s ``--data-dir``."""
    argv = procs.command_line(supervisor)
    return Path(argv[argv.index("--data-dir") + 1]).parent


def stack_gateway(supervisor: int) -> tuple[str | None, str | None]:
    """The HTTP gateway's URL and default key, from the data dir ``up`` was given.

    ``up`` records the URL in ``run.json`` and keeps the key in ``gateway.key``
    (both 0600). Without a client identity (the bench's stacks run on their own
    nats-server, without broker identities) no ``client.json`` is written, so
    these two files are where the URL and key are."""
    argv = procs.command_line(supervisor)
    data_dir = Path(argv[argv.index("--data-dir") + 1])
    try:
        url = json.loads((data_dir / "run.json").read_text()).get("http_url") or None
        key = (data_dir / "gateway.key").read_text().strip() or None
    except (OSError, ValueError):
        return None, None
    return url, key


def stack_processes(url: str) -> dict[str, int]:
    """Find the processes of the stack serving ``url`` among this process's children.

    ``scripts.stack.running_stack`` starts the nats-server and ``modelbus up``
    as our children; ``up`` names its data dir, whose sibling ``nats`` holds the
    server's configuration, and the services are ``up``'s descendants.
    """
    supervisor = next(
        (pid for pid in procs.children_of(os.getpid()) if url in procs.command_line(pid)),
        None,
    )
    if supervisor is None:
        raise RuntimeError(f"no 'modelbus up' process for {url} among the benchmark's children")
    nats_conf = str(stack_directory(supervisor) / "nats" / "nats-server.conf")
    found: dict[str, int] = {SUPERVISOR: supervisor}
    for pid in procs.children_of(os.getpid()):
        if nats_conf in procs.command_line(pid):
            found["nats-server"] = pid
    for pid in procs.descendants_of(supervisor):
        label = procs.python_module(procs.command_line(pid)) or f"pid {pid}"
        unique, n = label, 1
        while unique in found:
            n += 1
            unique = f"{label} #{n}"
        found[unique] = pid
    return found


def _tracing_env(otlp_endpoint: str | None) -> dict[str, str]:
    if otlp_endpoint is None:
        return {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none"}
    # No OTEL_SERVICE_NAME: `modelbus up` names each service itself.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint, "OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}


# ---------------------------------------------------------------- OTLP sink


@dataclass
class OtlpSink:
    """The ``bench.otlp_sink`` process."""

    url: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        """What it has received so far."""
        reply = httpx.get(f"{self.url}/stats", timeout=10, trust_env=False)
        reply.raise_for_status()
        return cast(dict[str, Any], reply.json())


@contextmanager
def running_otlp_sink(log: list[str]) -> Iterator[OtlpSink]:
    """Run the OTLP sink in its own process group until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.otlp_sink"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        line = wait_for_line(process, lambda text: text.startswith("listening "), 15.0, log)
        yield OtlpSink(f"http://127.0.0.1:{int(line.split()[1])}", process)
    finally:
        procs.stop_group(process)


# ---------------------------------------------------------------- the lab


class Lab:
    """Starts each server once, when a scenario first needs it, and stops them all."""

    def __init__(self, work_dir: Path, log_dir: Path, *, swap_routers: int) -> None:
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.swap_routers = swap_routers
        self._running: dict[str, tuple[object, ExitStack]] = {}
        self._sink_log: list[str] = []

    def _get(self, name: str, start: Callable[[ExitStack], T]) -> T:
        if name not in self._running:
            progress(f"starting {name}")
            exits = ExitStack()
            try:
                value: object = start(exits)
            except BaseException:
                exits.close()
                raise
            self._running[name] = (value, exits)
        return cast(T, self._running[name][0])

    def release(self, name: str) -> None:
        """Stop one server early (nothing later needs it)."""
        if name in self._running:
            progress(f"stopping {name}")
            self._running.pop(name)[1].close()

    def close(self) -> list[str]:
        """Stop everything, newest first; return the children that survived (then killed)."""
        errors: list[BaseException] = []
        for name in reversed(list(self._running)):
            try:
                self.release(name)
            except Exception as exc:  # keep stopping the rest
                errors.append(exc)
        survivors = []
        for pid in procs.descendants_of(os.getpid()):
            survivors.append(f"pid {pid}: {' '.join(procs.command_line(pid))[:200]}")
            procs.kill_pid(pid)
        if errors:
            raise errors[0]
        return survivors

    # ---------------------------------------------------------------- servers

    def katan(self) -> Katan:
        """llm-katan, echo backend, answering at once."""
        return self._get(KATAN, lambda exits: self._start_katan(exits, "katan"))

    def streaming_katan(self) -> Katan:
        """llm-katan whose streams wait before the first chunk and between chunks."""
        delays = ("--ttft-ms", str(STREAM_TTFT_MS), "--itl-ms", str(STREAM_ITL_MS))
        return self._get(STREAMING_KATAN, lambda exits: self._start_katan(exits, "katan-stream", *delays))

    def _start_katan(self, exits: ExitStack, name: str, *args: str) -> Katan:
        work = self.work_dir / name
        work.mkdir(parents=True, exist_ok=True)
        # An empty --stats-file (the last one wins) turns off llm-katan's persistent
        # counters, which rewrite a JSON file twice per request.
        katan = start_katan(work, "--stats-file", "", *args)
        exits.callback(stop_process, katan.proc)
        return katan

    def otlp_sink(self) -> OtlpSink:
        """The OTLP/HTTP receiver the traced stack exports to."""
        return self._get(OTLP_SINK, lambda exits: exits.enter_context(running_otlp_sink(self._sink_log)))

    def plain_stack(self) -> ModelbusStack:
        """One router, one provider worker, tracing off."""
        return self._get(PLAIN_STACK, lambda exits: self._start_stack(exits, "plain", routers=1, traced=False))

    def traced_stack(self) -> ModelbusStack:
        """The same stack, exporting every span to the OTLP sink."""
        return self._get(TRACED_STACK, lambda exits: self._start_stack(exits, "traced", routers=1, traced=True))

    def swap_stack(self) -> ModelbusStack:
        """Several routers and two mock endpoints, for the hot swap."""
        return self._get(
            SWAP_STACK, lambda exits: self._start_stack(exits, "swap", routers=self.swap_routers, traced=False)
        )

    def _start_stack(self, exits: ExitStack, name: str, *, routers: int, traced: bool) -> ModelbusStack:
        text = swap_config() if name == "swap" else bench_config(self.katan(), self.streaming_katan())
        config = self.work_dir / f"{name}.yaml"
        config.write_text(text)
        endpoint = self.otlp_sink().url if traced else None
        env = {"BENCH_KEY": BENCH_KEY, **_tracing_env(endpoint)}
        args = ("--config", str(config), "--routers", str(routers))
        # running_stack leaves its temporary directory (NATS data, keys) behind; remove it
        # once the stack has stopped, which is why this callback is registered first.
        leftovers: list[Path] = []

        def remove_leftovers() -> None:
            for path in leftovers:
                shutil.rmtree(path, ignore_errors=True)

        exits.callback(remove_leftovers)
        url = exits.enter_context(running_stack(*args, env=env, prefix=f"modelbus-bench-{name}-"))
        processes = stack_processes(url)
        leftovers.append(stack_directory(processes[SUPERVISOR]))
        http_url, api_key = stack_gateway(processes[SUPERVISOR])
        return ModelbusStack(url, routers, traced, processes, http_url, api_key)

    def litellm(self) -> LiteLLMProxy:
        """The LiteLLM proxy in front of the plain llm-katan (installed into its venv once)."""

        def start(exits: ExitStack) -> LiteLLMProxy:
            upstream = Upstream("127.0.0.1", self.katan().port, BENCH_KEY)
            return exits.enter_context(running_litellm(upstream, self.work_dir / "litellm", self.log_dir))

        return self._get(LITELLM, start)
