"""What every peer gateway's test needs: a key-checking llm-katan, the peer started in front of it, the request.

llm-katan runs with ``--validate-keys``, so a 200 through a peer also proves
that the upstream key reached it the way that peer forwards keys. The request
is the benchmark's own body (:func:`bench.contenders.chat_body`), sent the way
the load generator sends it: to :attr:`Running.path` with :attr:`Running.headers`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from bench.contenders import PROMPT, chat_body
from bench.peers import Peer, Running, Upstream
from tests.conftest import Katan, start_katan, stop_process

LOOPBACK_HEX = "0100007F"
"""127.0.0.1 as ``/proc/net/tcp`` writes it (little-endian hex)."""

PeerT = TypeVar("PeerT", bound=Peer)


def keyed_katan(api_key: str) -> Callable[[pytest.TempPathFactory], Iterator[Katan]]:
    """A module-scoped fixture: llm-katan that accepts only ``api_key`` (assign it to a name ``katan``)."""

    @pytest.fixture(scope="module")
    def katan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Katan]:
        server = start_katan(tmp_path_factory.mktemp("katan"), "--validate-keys", "--api-keys", f"openai={api_key}")
        try:
            yield server
        finally:
            stop_process(server.proc)

    return katan


@contextlib.contextmanager
def started(
    peer: PeerT, katan: Katan, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PeerT, Running]]:
    """``peer`` installed (unless it already is) and running in front of ``katan``; stopped on exit."""
    work_dir = tmp_path_factory.mktemp(peer.name)
    peer.install(work_dir / "install.log")
    running = peer.start(Upstream("127.0.0.1", katan.port, api_key), work_dir, work_dir / f"{peer.name}.log")
    try:
        yield peer, running
    finally:
        peer.stop(running)


def send_benchmark_request(
    client: httpx.Client, running: Running, *, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """POST the benchmark body to ``running`` with its headers, or with ``headers`` instead of them."""
    return client.post(
        f"http://{running.host}:{running.port}{running.path}",
        content=chat_body(running.model),
        headers={"content-type": "application/json", **(running.headers if headers is None else headers)},
    )


def post_benchmark_request(
    running: Running, *, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0
) -> httpx.Response:
    """:func:`send_benchmark_request` on a client of its own (no proxy from the environment)."""
    with httpx.Client(timeout=timeout_s, trust_env=False) as client:
        return send_benchmark_request(client, running, headers=headers)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address in ``/proc`` hex, port) of every TCP socket that ``pid`` itself holds in LISTEN.

    The ``/proc/<pid>/net`` tables list the whole network namespace, so they are
    matched to the process by the socket inodes among its open descriptors."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, _, hex_port = local.partition(":")
                found.add((address, int(hex_port, 16)))
    return found


def assert_echo_answer(reply: httpx.Response) -> None:
    """A 200 with llm-katan's echo of the benchmark prompt, for model ``echo``."""
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.content)
    assert answer["model"] == "echo"
    assert answer["choices"][0]["message"]["content"].startswith("[echo]")
    assert PROMPT in answer["choices"][0]["message"]["content"]


def assert_logs_nothing_for_successful_requests(running: Running) -> None:
    """20 successful requests after a first one add nothing to the peer's log."""
    assert running.log_path is not None
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        send_benchmark_request(client, running)  # anything logged at start-up is written by now
        before = running.log_path.stat().st_size
        replies = [send_benchmark_request(client, running) for _ in range(20)]
    assert [reply.status_code for reply in replies] == [200] * 20
    assert running.log_path.stat().st_size == before, running.log_path.read_text()[before:]
