"""How `modelbus up` runs the HTTP gateway: port, default key, environment, ready line, client.json, run.json.

The stack is real (nats-server, secrets, config, router, provider worker), but
its gateway is a stand-in written to a temporary folder: it does only what the
interface asks of the gateway at start (bind ``MODELBUS_HTTP``, read
``MODELBUS_GATEWAY_KEYS`` when it is set, exit 2 if that file is unreadable, name
the bound URL in its ready line), so these tests check the wiring and nothing of the gateway itself
(that is ``test_gateway*.py``). The folder is a ``services`` package whose
``__path__`` continues into the repository's, so ``python -m services.gateway``
finds the stand-in and every other ``services.*`` module the real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
import pytest

from shared import identities
from shared.client import ModelbusClient
from shared.natsserver import die_with_parent
from shared.subjects import CONFIG_STREAM, GATEWAY_KEYS_BUCKET
from tests.conftest import ROOT, run, wait_for_line

STAND_IN = '''"""Stand-in for services.gateway (tests/integration/test_cli_gateway.py)."""
import json
import os
import signal
import socket
import sys

from shared.logs import READY_MARKER

try:
    keys = []
    if os.environ.get("MODELBUS_GATEWAY_KEYS"):
        with open(os.environ["MODELBUS_GATEWAY_KEYS"]) as keys_file:
            keys = json.load(keys_file)["keys"]
except (KeyError, OSError, ValueError) as exc:
    print(f"error: MODELBUS_GATEWAY_KEYS: {type(exc).__name__}", file=sys.stderr)
    sys.exit(2)
host, _, port = os.environ["MODELBUS_HTTP"].rpartition(":")
listener = socket.create_server((host, int(port)))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
bound = listener.getsockname()[1]
sys.stderr.write(f"{READY_MARKER} stand-in gateway http=http://{host}:{bound} keys={len(keys)}\\n")
sys.stderr.flush()
while True:
    signal.pause()
'''


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to run ``modelbus up`` from: ``services.gateway`` is the stand-in, the rest the repository's."""
    root = tmp_path_factory.mktemp("gateway-stand-in")
    (root / "services" / "gateway").mkdir(parents=True)
    (root / "services" / "__init__.py").write_text(f"__path__.append({str(ROOT / 'services')!r})\n")
    (root / "services" / "gateway" / "__init__.py").write_text("")
    (root / "services" / "gateway" / "__main__.py").write_text(STAND_IN)
    return root


class Up:
    """A running ``modelbus up`` and what it printed."""

    def __init__(self, proc: subprocess.Popen[str], home: Path, ready: str, output: list[str]) -> None:
        self.proc, self.home, self.ready, self.output = proc, home, ready, output
        self.nats_url = re.search(r"\bnats=(\S+)", ready).group(1)  # type: ignore[union-attr]

    @property
    def http_url(self) -> str:
        found = re.search(r" http=(\S+)", self.ready)
        assert found, self.ready
        return found.group(1)

    def children(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Each service child's argv and environment, by module (``gateway``, ``router``, ...)."""
        out = {}
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            for kid in (task / "children").read_text().split():
                argv = [a.decode() for a in Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0") if a]
                module = next((a for a in argv if a.startswith("services.")), None)
                if module:
                    raw = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
                    env = dict(e.decode().split("=", 1) for e in raw if b"=" in e)
                    out[module.removeprefix("services.")] = (argv, env)
        return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MODELBUS_HOME", "MODELBUS_GATEWAY_KEYS")}
    return env | {"PYTHONUNBUFFERED": "1", "MODELBUS_ADMIN_HTTP": "off", "MODELBUS_LOG_LEVEL": "WARNING"}


def _modelbus(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", "--data-dir", str(home), *args]


@contextmanager
def running_up(overlay: Path, home: Path, *args: str) -> Iterator[Up]:
    """``modelbus up --nats-port 0 --http-port 0 ARGS`` from the overlay; stopped by its own PID."""
    proc = subprocess.Popen(
        _modelbus(home, "up", "--nats-port", "0", "--http-port", "0", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=overlay,
        env=_env(),
        preexec_fn=die_with_parent,
    )
    output: list[str] = []
    try:
        ready = wait_for_line(proc, lambda line: line.startswith("ready "), 90, output)
        yield Up(proc, home, ready, output)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def up(overlay: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with running_up(overlay, tmp_path_factory.mktemp("home")) as stack:
        yield stack


def _key(home: Path) -> str:
    return (home / "gateway.key").read_text().strip()


async def _stored_keys(up: Up) -> dict[str, dict[str, str]]:
    """The gateway key store's records, read as its owner (``config-state``)."""
    passwords = json.loads((up.home / identities.IDENTITIES_FILE).read_text())
    nc = await nats.connect(
        up.nats_url, user="config-state", password=passwords["config-state"], inbox_prefix="_INBOX_config-state"
    )
    try:
        kv = await nc.jetstream().key_value(GATEWAY_KEYS_BUCKET)
        out = {}
        for name in await kv.keys():
            entry = await kv.get(name)
            out[name] = json.loads(entry.value or b"{}")
        return out
    finally:
        await nc.close()


# ---------------------------------------------------------------- what it prints and records


def test_the_ready_line_names_the_url_the_gateway_bound_and_run_json_records_it(up: Up, overlay: Path) -> None:
    url = up.http_url
    port = int(url.rsplit(":", 1)[1])
    assert url.startswith("http://127.0.0.1:") and port != 0
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the gateway listens there
    assert json.loads((up.home / "run.json").read_text())["http_url"] == url
    status = subprocess.run(
        _modelbus(up.home, "status"), capture_output=True, text=True, timeout=60, cwd=overlay, env=_env()
    )
    assert status.returncode == 0, status.stderr
    assert f"http_url   {url}" in status.stdout.splitlines()


def test_client_json_gives_the_http_url_and_the_default_key(up: Up) -> None:
    info = json.loads((up.home / identities.CLIENT_FILE).read_text())
    assert info["http_url"] == up.http_url
    assert info["api_key"] == _key(up.home) and info["api_key"].startswith("mb-")
    stored = run(_stored_keys(up))
    assert list(stored) == ["default"]
    assert stored["default"]["sha256"] == hashlib.sha256(info["api_key"].encode()).hexdigest()
    assert info["api_key"] not in json.dumps(stored)
    assert not (up.home / "gateway-keys.json").exists()  # no hash file any more: the store has it
    assert {info["user"], info["inbox_prefix"]} == {"client", "_INBOX_client.default"}  # NATS fields as before


def test_the_key_files_are_0600_and_the_key_is_in_no_argv_environment_or_ready_line(up: Up) -> None:
    key = _key(up.home)
    for name in ("gateway.key", identities.CLIENT_FILE):
        assert (up.home / name).stat().st_mode & 0o777 == 0o600, name
    assert key not in up.ready and key not in "".join(up.output)
    children = up.children()
    assert set(children) == {"secrets", "config", "router", "providers", "gateway"}
    for name, (argv, env) in children.items():
        assert not [a for a in argv if key in a], name
        assert not [v for v in env.values() if key in v], name


def test_only_the_gateway_is_told_its_address_no_child_a_key_file_and_it_connects_as_itself(up: Up) -> None:
    children = up.children()
    _, gateway = children["gateway"]
    assert gateway["MODELBUS_HTTP"] == "127.0.0.1:0"
    assert (gateway["NATS_USER"], gateway["MODELBUS_INBOX_PREFIX"]) == ("gateway", "_INBOX_gateway")
    assert [n for n, (_, env) in children.items() if "MODELBUS_GATEWAY_KEYS" in env] == []
    for var in ("MODELBUS_MASTER_KEY_FILE", "MODELBUS_AUDIT_KEY_FILE", "MODELBUS_ADMIN_TOKEN_FILE"):
        assert var not in gateway, var


def test_the_gateway_identity_is_answered_by_the_stack_and_reads_its_configuration(up: Up) -> None:
    passwords = json.loads((up.home / identities.IDENTITIES_FILE).read_text())

    async def scenario() -> tuple[str, str, int]:
        client = await ModelbusClient.connect(
            up.nats_url, user="gateway", password=passwords["gateway"], inbox_prefix="_INBOX_gateway"
        )
        try:
            body = {"model": "fast", "messages": [{"role": "user", "content": "via the gateway"}]}
            completion, _ = await client.complete(body, timeout=30)
            streamed = ""
            async for chunk in client.stream({**body, "model": "smart", "stream": True}, timeout=30):
                streamed += "".join(c.delta.content or "" for c in chunk.choices)
            info = await client.nc.jetstream().stream_info(CONFIG_STREAM)
            return completion.choices[0].message.content or "", streamed, int(info.state.last_seq)
        finally:
            await client.close()

    answer, streamed, revision = run(scenario())
    assert answer == "mock:mock-fast says: via the gateway"
    assert streamed == "mock:mock-smart says: via the gateway"  # delivered by the worker to _INBOX_gateway
    assert revision >= 1


# ---------------------------------------------------------------- later runs, other modes


def test_a_later_run_reuses_the_key_and_an_older_data_dir_gains_the_gateway_identity(
    overlay: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with running_up(overlay, home):
        pass
    key = _key(home)
    passwords = json.loads((home / identities.IDENTITIES_FILE).read_text())
    older = {role: pw for role, pw in passwords.items() if role != "gateway"}  # as a data dir from before the gateway
    (home / identities.IDENTITIES_FILE).write_text(json.dumps(older))
    with running_up(overlay, home) as again:
        assert _key(home) == key
        assert json.loads((home / identities.CLIENT_FILE).read_text())["api_key"] == key
        now = json.loads((home / identities.IDENTITIES_FILE).read_text())
        assert {role: now[role] for role in older} == older  # every other service kept its password
        assert now["gateway"] and now["gateway"] != passwords["gateway"]
        _, gateway = again.children()["gateway"]
        assert gateway["NATS_PASSWORD"] == now["gateway"]


def test_insecure_mode_still_stores_the_default_key(overlay: Path, tmp_path: Path) -> None:
    """Without broker identities the HTTP key is still required: the default key is in the store."""
    with running_up(overlay, tmp_path / "home", "--insecure") as stack:
        assert stack.http_url.startswith("http://127.0.0.1:")
        _, gateway = stack.children()["gateway"]
        assert "NATS_USER" not in gateway and "MODELBUS_GATEWAY_KEYS" not in gateway
        assert (tmp_path / "home" / "gateway.key").stat().st_mode & 0o777 == 0o600
        assert "stored the default API key" in "".join(stack.output)


def test_a_deleted_gateway_key_file_makes_a_new_default_key_that_replaces_the_stored_one(
    overlay: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with running_up(overlay, home):
        pass
    old = _key(home)
    (home / "gateway.key").unlink()
    with running_up(overlay, home) as again:
        new = _key(home)
        assert new != old
        assert json.loads((home / identities.CLIENT_FILE).read_text())["api_key"] == new
        stored = run(_stored_keys(again))
        assert stored["default"]["sha256"] == hashlib.sha256(new.encode()).hexdigest()


def test_a_taken_http_port_stops_up_before_anything_starts(overlay: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        result = subprocess.run(
            _modelbus(tmp_path / "home", "up", "--nats-port", "0", "--http-port", str(port)),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=overlay,
            env=_env(),
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--http-port" in result.stderr
    assert not (tmp_path / "home" / "nats").exists()
