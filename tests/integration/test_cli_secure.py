"""The CLI against a real secure `modelbus up`: files, connections, application identities, secrets.

The stack runs as a new user would start it: no ``--data-dir`` and no
``MODELBUS_HOME``, so its data directory is ``$HOME/.local/share/modelbus``
with ``HOME`` a fresh directory other users can traverse (so the permission
tests test the data directory, not a private parent). What the stack prints
(the demo's ``try:`` hint) and what README.md shows (the Python snippet) are
run exactly as written.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from services.cli.connection import CliError, Target, connect
from shared import identities
from shared.client import CredentialsRefused, ModelbusClient
from shared.natsserver import die_with_parent
from tests.conftest import ROOT, free_port, run, wait_for_line

MODELBUS = [sys.executable, "-m", "services.cli"]
HELLO = {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}


class Up:
    def __init__(self, proc: subprocess.Popen[str], home: Path, ready: str, output: list[str]) -> None:
        self.proc, self.home, self.ready, self.output = proc, home, ready, output
        self.data_dir = home / ".local" / "share" / "modelbus"
        self.url = re.search(r"nats=(\S+)", ready).group(1)  # type: ignore[union-attr]

    def env(self, **extra: str) -> dict[str, str]:
        """A new terminal of the same user: same HOME, none of the stack's variables."""
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "MODELBUS_HOME", "MODELBUS_CREDS")
        }
        return {**clean, "HOME": str(self.home), **extra}

    def cli(self, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MODELBUS, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT, env=self.env(**env)
        )


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    home = Path(tempfile.mkdtemp(prefix="modelbus-cli-home-", dir="/tmp"))
    (home / ".local" / "share").mkdir(parents=True)
    for folder in (home, home / ".local", home / ".local" / "share"):
        folder.chmod(0o755)  # traversable by anyone, like a usual home: only the data dir keeps others out
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MODELBUS_HOME")}
    env |= {"HOME": str(home), "PYTHONUNBUFFERED": "1", "MODELBUS_ADMIN_HTTP": "127.0.0.1:0"}
    proc = subprocess.Popen(
        [*MODELBUS, "up", "--nats-port", "0", "--http-port", "0", "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
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
        shutil.rmtree(home, ignore_errors=True)


def _wait_output(up: Up, prefix: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(up.output):
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line starting {prefix!r}:\n" + "".join(up.output[-40:]))


# ---------------------------------------------------------------- files


def test_every_file_in_the_data_dir_is_0600_and_every_folder_0700(up: Up) -> None:
    paths = [up.data_dir, *up.data_dir.rglob("*")]
    names = {p.name for p in paths}
    assert {"nats-server.log", "run.json", "audit.key", "master.key", "admin.token", "nats-server.conf"} <= names
    wrong = [f"{p.stat().st_mode & 0o777:o} {p}" for p in paths if p.stat().st_mode & 0o777 not in (0o600, 0o700)]
    assert wrong == []
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in paths if p.is_dir())


def _readable_by_nobody(paths: list[Path]) -> list[str]:
    """The paths user ``nobody`` can open, by trying (``runuser`` as root)."""
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")
    probe = (
        "import sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        open(p, 'rb').close()\n"
        "        print(p)\n"
        "    except PermissionError:\n"
        "        pass\n"
        "    except FileNotFoundError:\n"
        "        pass  # a temporary file renamed into place since it was listed: nothing to read\n"
    )
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(python), "-c", probe, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root and runuser")
def test_another_local_user_can_open_no_file_of_the_stack(up: Up) -> None:
    files = [p for p in up.data_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    assert _readable_by_nobody(files) == []
    # Even with the data dir itself opened up by mistake, every file and folder below keeps them out.
    up.data_dir.chmod(0o755)
    try:
        assert _readable_by_nobody(files) == []
    finally:
        up.data_dir.chmod(0o700)


def test_the_server_configuration_holds_no_password(up: Up) -> None:
    conf = (up.data_dir / "nats" / "nats-server.conf").read_text()
    passwords = json.loads((up.data_dir / identities.IDENTITIES_FILE).read_text())
    assert [role for role, password in passwords.items() if password in conf] == []
    assert conf.count('"password": "$2a$') >= len(identities.ROLES)


def _child_environments(up: Up) -> dict[str, dict[str, str]]:
    """Each service process's environment, as a compromised one would read its own."""
    out: dict[str, dict[str, str]] = {}
    for task in Path(f"/proc/{up.proc.pid}/task").glob("*"):
        for kid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
            match = next((a.decode() for a in cmdline if a.startswith(b"services.")), None)
            if match:
                raw = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
                out[match.removeprefix("services.")] = dict(e.decode().split("=", 1) for e in raw if b"=" in e)
    return out


def test_each_service_is_given_only_its_own_keys(up: Up) -> None:
    envs = _child_environments(up)
    assert set(envs) == {"secrets", "config", "router", "providers", "gateway"}
    holders = {
        var: sorted(name for name, env in envs.items() if var in env)
        for var in (
            "MODELBUS_MASTER_KEY_FILE",
            "MODELBUS_AUDIT_KEY_FILE",
            "MODELBUS_ADMIN_TOKEN_FILE",
            "MODELBUS_GATEWAY_KEYS",
        )
    }
    assert holders == {
        "MODELBUS_MASTER_KEY_FILE": ["secrets"],
        "MODELBUS_AUDIT_KEY_FILE": ["config"],
        "MODELBUS_ADMIN_TOKEN_FILE": ["config"],
        "MODELBUS_GATEWAY_KEYS": [],  # the gateway's keys are in JetStream; no key file unless an operator sets one
    }
    assert envs["config"]["MODELBUS_AUDIT_KEY_FILE"] == str(up.data_dir / "audit.key")
    assert {env["NATS_USER"] for env in envs.values()} == {"secrets", "config", "router", "providers", "gateway"}
    key = (up.data_dir / "gateway.key").read_text().strip()
    assert [name for name, env in envs.items() if key in "\0".join(env.values())] == []


def test_up_refuses_a_key_file_others_can_read_and_names_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    leaked = tmp_path / "operator-audit.key"
    leaked.write_text("a" * 44 + "\n")
    leaked.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"} | {"MODELBUS_AUDIT_KEY_FILE": str(leaked)}
    result = subprocess.run(
        [*MODELBUS, "--data-dir", str(home), "up", "--nats-port", "0", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 1
    assert f"chmod 600 {leaked}" in result.stderr
    assert not (home / "nats").exists()  # refused before anything started


# ---------------------------------------------------------------- what it prints


def test_the_ready_line_and_status_give_the_admin_address_the_config_service_bound(up: Up) -> None:
    admin = re.search(r"admin=(http://127\.0\.0\.1:\d+)", up.ready)
    assert admin, up.ready
    assert not admin.group(1).endswith(":0")
    assert json.loads((up.data_dir / "run.json").read_text())["admin_url"] == admin.group(1)
    status = up.cli("status", "--admin-url")
    assert status.returncode == 0 and status.stdout.strip() == admin.group(1)
    assert httpx.get(f"{admin.group(1)}/healthz", timeout=10).status_code == 200


def test_the_demo_hint_works_exactly_as_printed_from_another_terminal(up: Up) -> None:
    hint = _wait_output(up, "try:").removeprefix("try:").strip()
    result = subprocess.run(
        ["bash", "-c", hint.replace('"your prompt"', '"hint works"')],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=up.env(),
    )
    assert result.returncode == 0, (hint, result.stderr)
    assert result.stdout.strip() == "mock:mock-fast says: hint works"


def _readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Calling modelbus from your code", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_snippet_works_as_printed(up: Up, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(_readme_snippet())
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=up.env()
    )
    assert result.returncode == 0, result.stderr
    assert "mock:mock-fast says: hello mock" in result.stdout
    assert "mock:mock-smart says: stream, please" in result.stdout


def _readme_block(heading: str, language: str, count: int = 1) -> str:
    """The first ``count`` ``language`` code blocks after ``heading`` in the README, joined."""
    section = (ROOT / "README.md").read_text().split(heading, 1)[1]
    blocks = [part.split("```", 1)[0] for part in section.split(f"```{language}\n")[1:]]
    return "\n".join(blocks[:count])


def test_the_readme_curl_example_works_as_printed(up: Up) -> None:
    script = _readme_block("### Over HTTP", "sh", count=2)  # where the key is, then curl
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd="/", env=up.env())
    assert result.returncode == 0, (script, result.stderr)
    answer = json.loads(result.stdout)
    assert answer["choices"][0]["message"]["content"] == "mock:mock-fast says: hello over HTTP"


def test_the_readme_openai_sdk_example_works_as_printed(up: Up, tmp_path: Path) -> None:
    script = tmp_path / "openai_snippet.py"
    script.write_text(_readme_block("### Over HTTP", "python"))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=up.env()
    )
    assert result.returncode == 0, result.stderr
    assert "mock:mock-fast says: hello" in result.stdout
    assert "mock:mock-smart says: stream, please" in result.stdout


def test_the_ready_line_names_the_gateway_which_refuses_a_request_without_the_key(up: Up) -> None:
    http = re.search(r" http=(http://127\.0\.0\.1:\d+) ", up.ready)
    assert http, up.ready
    info = json.loads((up.data_dir / identities.CLIENT_FILE).read_text())
    assert info["http_url"] == http.group(1)
    assert info["api_key"] not in up.ready
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    url = f"{http.group(1)}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer mb-guess"}, timeout=30)
    assert wrong.status_code == 401
    right = httpx.post(url, json=body, headers={"Authorization": f"Bearer {info['api_key']}"}, timeout=30)
    assert right.status_code == 200, right.text


# ---------------------------------------------------------------- finding the stack


def test_nats_url_of_the_local_stack_uses_its_stored_identities(up: Up) -> None:
    result = up.cli("complete", "via NATS_URL", NATS_URL=up.url)
    assert result.returncode == 0, result.stderr
    assert "says: via NATS_URL" in result.stdout


def test_refused_credentials_are_reported_as_such_with_the_ways_to_pass_them(up: Up, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"url": up.url, "user": "client", "password": "guess", "inbox_prefix": "_INBOX_x"}))
    result = up.cli("--creds", str(wrong), "complete", "hi")
    assert result.returncode == 1
    assert "authorization violation" in result.stderr and "no servers available" not in result.stderr
    for way in ("NATS_USER", "--creds FILE", "MODELBUS_CREDS", "--data-dir", "MODELBUS_HOME"):
        assert way in result.stderr
    anonymous = up.cli("--data-dir", str(tmp_path / "other"), "complete", "hi", NATS_URL=up.url)
    assert anonymous.returncode == 1 and "refused a connection without credentials" in anonymous.stderr


def test_a_missing_stack_is_reported_within_two_seconds(tmp_path: Path) -> None:
    target = Target(url=f"nats://127.0.0.1:{free_port()}", login=None, source="", data_dir=tmp_path, run=None)

    async def attempt() -> float:
        start = time.monotonic()
        with pytest.raises(CliError, match=r"no modelbus stack found at nats://127\.0\.0\.1:\d+ \(data dir "):
            await connect(target, "test")
        return time.monotonic() - start

    assert run(attempt()) < 2.0


def test_a_forgotten_data_dir_is_reported_not_replaced_by_localhost(up: Up, tmp_path: Path) -> None:
    result = up.cli("--data-dir", str(tmp_path / "forgotten"), "complete", "hi")
    assert result.returncode == 1
    assert f"no modelbus stack found (data dir {tmp_path / 'forgotten'}" in result.stderr


# ---------------------------------------------------------------- application identities


def test_a_created_client_completes_and_once_deleted_is_disconnected_and_refused(up: Up, tmp_path: Path) -> None:
    created = up.cli("create", "client", "billing")
    assert created.returncode == 0, created.stderr
    creds = up.data_dir / "clients" / "billing.json"
    assert str(creds) in created.stdout and creds.stat().st_mode & 0o777 == 0o600
    copied = tmp_path / "billing.json"
    shutil.copy(creds, copied)  # what someone who copied the file still holds after the revocation

    async def scenario() -> None:
        dropped = asyncio.Event()

        async def on_disconnect() -> None:
            dropped.set()

        client = await ModelbusClient.from_creds(creds, disconnected_cb=on_disconnect)
        completion, _ = await client.complete(HELLO, timeout=30)
        assert "says: hello" in (completion.choices[0].message.content or "")
        deleted = await asyncio.to_thread(up.cli, "delete", "client", "billing")
        assert deleted.returncode == 0, deleted.stderr
        await asyncio.wait_for(dropped.wait(), 5)  # the broker dropped the revoked identity's live connection
        with pytest.raises(CredentialsRefused):
            await ModelbusClient.from_creds(copied)
        await client.nc.close()  # it would keep trying to reconnect, and keep being refused

    run(scenario())
    assert not creds.exists()


def test_a_client_cannot_subscribe_to_the_inbox_of_another(up: Up) -> None:
    assert up.cli("create", "client", "reader").returncode == 0
    login = json.loads((up.data_dir / "clients" / "reader.json").read_text())

    async def attempt() -> list[str]:
        errors: list[str] = []
        all_refused = asyncio.Event()

        async def error_cb(err: Exception) -> None:
            errors.append(str(err).lower())
            if len(errors) >= 3:
                all_refused.set()

        nc = await nats.connect(
            up.url,
            user=login["user"],
            password=login["password"],
            inbox_prefix=login["inbox_prefix"],
            error_cb=error_cb,
            allow_reconnect=False,
        )
        try:
            for subject in ("_INBOX_client.>", "_INBOX_client.default.>", "_INBOX_client.billing.>"):
                await nc.subscribe(subject)
            await nc.flush(timeout=2)
            await asyncio.wait_for(all_refused.wait(), 3)
        finally:
            await nc.close()
        return errors

    try:
        errors = run(attempt())
    finally:
        up.cli("delete", "client", "reader")
    assert len([e for e in errors if "permissions violation for subscription" in e]) == 3, errors


def test_get_clients_lists_identities_without_their_secrets(up: Up) -> None:
    assert up.cli("create", "client", "lister").returncode == 0
    try:
        table = up.cli("get", "clients")
        rows = json.loads(up.cli("get", "clients", "-o", "json").stdout)
    finally:
        up.cli("delete", "client", "lister")
    assert table.returncode == 0 and table.stdout.split("\n")[0].split() == [
        "NAME",
        "USER",
        "INBOX_PREFIX",
        "CREATED_AT",
    ]
    assert {"name": "default", "user": "client", "inbox_prefix": "_INBOX_client.default"}.items() <= rows[0].items()
    lister = next(r for r in rows if r["name"] == "lister")
    assert lister["user"] == "client-lister" and lister["inbox_prefix"] == "_INBOX_client.lister"
    assert "password" not in table.stdout + json.dumps(rows) and "$2a$" not in table.stdout + json.dumps(rows)


def test_create_client_without_a_running_stack_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [*MODELBUS, "--data-dir", str(tmp_path), "create", "client", "app"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "no modelbus stack is running" in result.stderr
    assert not (tmp_path / "clients").exists()


# ---------------------------------------------------------------- secrets


def test_a_secret_from_stdin_is_stored_and_listed_without_its_value(up: Up) -> None:
    value = "sk-from-stdin-0123456789"
    stored = up.cli("create", "secret", "stdin-key", "--from-stdin", stdin=value + "\n")
    assert stored.returncode == 0, stored.stderr
    table = up.cli("get", "secrets")
    listing = json.loads(up.cli("get", "secrets", "-o", "json").stdout)
    assert table.stdout.split("\n")[0].split() == ["NAME", "KEY_PRESENT", "KEY_LAST4", "SOURCE", "UPDATED_AT"]
    item = next(i for i in listing if i["name"] == "stdin-key")
    assert item["key_present"] is True and item["key_last4"] == "6789" and item["source"] == "store"
    assert value not in table.stdout + json.dumps(listing)


def test_from_literal_works_but_warns_that_the_command_line_is_visible(up: Up) -> None:
    result = up.cli("create", "secret", "literal-key", "--from-literal", "value=sk-literal-abcdef123")
    assert result.returncode == 0, result.stderr
    assert "other local users" in result.stderr and "--from-stdin" in result.stderr
    assert "sk-literal" not in result.stderr + result.stdout


def test_delete_secret_removes_it_through_the_config_service(up: Up, tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-to-be-deleted-4444\n")
    assert up.cli("create", "secret", "doomed", "--from-file", str(key_file)).returncode == 0
    deleted = up.cli("delete", "secret", "doomed")
    assert deleted.returncode == 0, deleted.stderr
    names = [i["name"] for i in json.loads(up.cli("get", "secrets", "-o", "json").stdout)]
    assert "doomed" not in names
    again = up.cli("delete", "secret", "doomed")
    assert again.returncode == 1 and "404" in again.stderr
