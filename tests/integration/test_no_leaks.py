"""A recognisable secret never shows up anywhere it should not, over the whole stack.

The module puts one secret (``sk-leakcheck-<random hex>``) into a real stack
every way a credential gets in: over the HTTP admin API (the AuroraSOC key
PUT), with ``modelbus create secret``, as an ``env:`` reference in the secrets
service's environment, and as a per-request BYO token. It then runs requests
that succeed (plain and streamed) and requests that fail: an upstream 401 that
quotes the key it *expected* (llm-katan does, in full), an upstream 401 that
quotes the key we *sent*, a timeout, a BYO call to an unreachable host and a
BYO call refused by the SSRF check, plus admin listings, probes and an audit
check. Services log at DEBUG and export spans to an OTLP/HTTP receiver in this
module; a sniffer subscribed to ``>`` from before the stack starts records
every NATS message.

After stopping everything (so logs, span exports and JetStream files are
complete), it scans the service logs, every exported span (names, attributes,
events, status, resources: the raw protobuf bytes), all NATS traffic, every
reply a client, the admin API or the CLI got, and every file under the stack's
data directory and the nats-server's store, for the secret in plain text,
URL-encoded, hex, and base64 (standard and URL-safe, at all three alignments).

Where the secret is *meant* to travel, and so is not scanned:

* the credential subjects ``modelbus.v1.secrets.get`` and
  ``modelbus.v1.secrets.put``, and the replies to requests on them;
* the BYO design: a BYO token travels router -> provider worker inside
  ``ProviderCall.credential`` on ``modelbus.v1.provider.*``. Only that field is
  blanked; the rest of each provider call is scanned;
* what the callers themselves send: the ``ANTHROPIC_AUTH_TOKEN`` key of a
  client's ``Modelbus-Env`` header on ``llm.v1.chat.completions``, and the
  ``spec.stringData.value`` of the ``Secret`` document that ``modelbus create
  secret`` sends on ``modelbus.v1.config.apply`` (the HTTP key PUT's body never
  touches NATS). Only those values are blanked; the replies are scanned.

A check that the capture did see the secret in those places keeps the scan from
passing vacuously.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from services.providers.http import transport_error
from services.providers.scrub import CredentialScrubber
from shared import headers as H
from shared.admin import WaitRequest
from shared.envelopes import SecretsDescribe
from shared.errors import ModelbusError
from shared.natsserver import EmbeddedNats
from shared.subjects import (
    CHAT_COMPLETIONS,
    CONFIG_APPLY,
    CONFIG_WAIT,
    PROVIDER_PREFIX,
    SECRETS_DESCRIBE,
    SECRETS_GET,
    SECRETS_LIST,
    SECRETS_PUT,
)
from tests.conftest import ROOT, Katan, Stack, run, start_katan, start_stack, stop_process

SECRET = f"sk-leakcheck-{secrets.token_hex(16)}"
WRONG_KEY = f"not-the-key-{secrets.token_hex(4)}"
OTHER_KEY = f"other-key-{secrets.token_hex(4)}"
TOKEN = f"admin-token-{secrets.token_hex(8)}"
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
HELLO = [{"role": "user", "content": "hello leak check"}]
SLOW_MS = 3000
DEADLINE_MS = 500
BYO_HOST = "byo.leakcheck.invalid"  # public-looking, never resolves: the call fails at the provider

KATAN_ECHO = b"expected '"
"""llm-katan's 401 text names the key it expected: ``got '<sent>', expected '<key>'``."""


class UpstreamEchoLeak(AssertionError):
    """The secret reached a caller only inside an upstream 401 that quotes the key it expected."""


# ---------------------------------------------------------------- what to look for


def _needles(secret: str) -> dict[str, bytes]:
    """The secret's encodings a leak could take, by name."""
    raw = secret.encode()
    forms = {"plain": raw, "url-encoded": quote(secret, safe="").encode(), "hex": binascii.hexlify(raw)}
    for shift in range(3):
        # base64 of the secret inside a longer value: only the groups made of secret bytes alone are stable.
        encoded = base64.b64encode(b"\0" * shift + raw + b"\0\0")
        stable = encoded[4 * ((shift + 2) // 3) : 4 * ((shift + len(raw)) // 3)]
        forms[f"base64+{shift}"] = stable
        forms[f"base64url+{shift}"] = stable.replace(b"+", b"-").replace(b"/", b"_")
    unique: dict[bytes, str] = {}
    for name, needle in forms.items():
        unique.setdefault(needle, name)  # "url-encoded" is "plain" when the secret has no special characters
    return {name: needle for needle, name in unique.items()}


NEEDLES = _needles(SECRET)


@dataclass(frozen=True)
class Hit:
    """One occurrence of the secret: where, in which encoding, and whether it is llm-katan's echo."""

    where: str
    form: str
    upstream_echo: bool

    def __str__(self) -> str:
        return f"{self.where} ({self.form}{', upstream 401 echo' if self.upstream_echo else ''})"


def find(where: str, blob: bytes | str) -> list[Hit]:
    """Every encoding of the secret in ``blob``."""
    data = blob.encode() if isinstance(blob, str) else blob
    hits: list[Hit] = []
    for form, needle in NEEDLES.items():
        start = data.find(needle)
        while start != -1:
            echo = form == "plain" and data[max(0, start - len(KATAN_ECHO)) : start] == KATAN_ECHO
            hits.append(Hit(where, form, echo))
            start = data.find(needle, start + 1)
    return hits


def assert_no_leak(hits: list[Hit], scanned: str) -> None:
    """Fail listing every hit; hits that are only llm-katan's expected-key echo raise :class:`UpstreamEchoLeak`."""
    other = [str(h) for h in hits if not h.upstream_echo]
    assert not other, f"the secret appears in {scanned}:\n" + "\n".join(other)
    if hits:
        raise UpstreamEchoLeak(
            f"the secret appears in {scanned}, quoted by an upstream 401 as the key it expected:\n"
            + "\n".join(dict.fromkeys(map(str, hits)))
        )


# ---------------------------------------------------------------- OTLP/HTTP receiver


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver that keeps every export body as it came."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.bodies.append(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def exports(self) -> list[ExportTraceServiceRequest]:
        with self._lock:
            bodies = list(self.bodies)
        out = []
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            out.append(request)
        return out

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# ---------------------------------------------------------------- NATS sniffer


@dataclass(frozen=True)
class Sniffed:
    """One message seen on the bus."""

    subject: str
    reply: str
    headers: dict[str, str]
    data: bytes


class Sniffer:
    """A connection subscribed to ``>`` on its own thread and event loop, recording every message."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[Sniffed] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"sniffer did not subscribe: {self._error!r}")

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            nc = await nats.connect(self.url, name="leak-sniffer")
            await nc.subscribe(">", cb=self._record)
            await nc.flush()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await nc.flush()  # the PONG comes after everything the server sent before it
        await nc.drain()

    async def _record(self, msg: Msg) -> None:
        self.messages.append(Sniffed(msg.subject, msg.reply or "", dict(msg.headers or {}), bytes(msg.data)))

    def stop(self) -> list[Sniffed]:
        """Drain and disconnect; every message recorded until then."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)
        return list(self.messages)


# ---------------------------------------------------------------- the stack


def _endpoint(name: str, provider: str, katan: Katan, ref: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": provider,
        "base_url": f"{katan.base_url}/v1",
        "default_model": "echo",
        "allowPrivate": True,
    }
    if ref is not None:
        spec["auth"] = {"secretRef": ref}
    return {"apiVersion": "modelbus.dev/v1", "kind": "ModelEndpoint", "metadata": {"name": name}, "spec": spec}


def _config(katan: Katan, slow: Katan) -> str:
    docs = [
        _endpoint("openai", "openai-compatible", katan, None),  # its key comes over the HTTP admin API
        _endpoint("cli-keyed", "openai", katan, "secret:leak-cli"),  # ... and this one's from the CLI
        _endpoint("env-keyed", "openai-compatible", katan, "env:LEAK_ENV_KEY"),
        _endpoint("wrong-key", "openai-compatible", katan, "env:LEAK_WRONG_KEY"),
        _endpoint("sent-key-echoed", "anthropic", slow, "env:LEAK_ENV_KEY"),
        _endpoint("slow", "openai-compatible", slow, "env:LEAK_ENV_KEY"),
        {
            "apiVersion": "modelbus.dev/v1",
            "kind": "ModelAlias",
            "metadata": {"name": "default"},
            "spec": {"targets": [{"endpoint": "openai"}]},
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


@dataclass(frozen=True)
class Outcome:
    """One client request and every message it got back."""

    label: str
    status: int
    messages: list[tuple[dict[str, str], bytes]]


@dataclass
class Capture:
    """Everything the scenario produced, gathered after every process stopped."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    replies: list[tuple[str, str]] = field(default_factory=list)
    """(where, text) of admin API replies, NATS admin replies and CLI output."""
    log: str = ""
    exports: list[ExportTraceServiceRequest] = field(default_factory=list)
    traffic: list[Sniffed] = field(default_factory=list)
    data_dirs: list[Path] = field(default_factory=list)
    audit_ok: bool = False


def _cli(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "NATS_URL": url, "MODELBUS_LOG_LEVEL": "DEBUG"},
    )


async def _nats_request(url: str, subject: str, body: bytes) -> Msg:
    nc = await nats.connect(url)
    try:
        return await nc.request(subject, body, timeout=15)
    finally:
        await nc.close()


def _wait_routers(url: str, revision: int) -> None:
    body = msgspec.json.encode(WaitRequest(revision=revision, timeout_ms=10_000))
    reply = run(_nats_request(url, CONFIG_WAIT, body))
    assert (reply.headers or {}).get(H.STATUS) == "200", reply.data


async def _send(nc: Client, label: str, request: dict[str, Any], headers: dict[str, str]) -> Outcome:
    """One request, plain or streamed, keeping every message that came back."""
    hdrs = {H.REQUEST_ID: f"leak-{uuid.uuid4().hex}", **headers}
    body = json.dumps(request).encode()
    if not request.get("stream"):
        msg = await nc.request(CHAT_COMPLETIONS, body, timeout=20, headers=hdrs)
        got = dict(msg.headers or {})
        return Outcome(label, int(got.get(H.STATUS, "0")), [(got, bytes(msg.data))])
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(CHAT_COMPLETIONS, body, reply=inbox, headers=hdrs)
        messages: list[tuple[dict[str, str], bytes]] = []
        while True:
            msg = await sub.next_msg(timeout=20)
            got = dict(msg.headers or {})
            messages.append((got, bytes(msg.data)))
            if got.get(H.STREAM) == H.STREAM_END or got.get(H.STATUS, "200") != "200":
                return Outcome(label, int(got.get(H.STATUS, "0")), messages)
    finally:
        await sub.unsubscribe()


def _byo(base_url: str) -> dict[str, str]:
    env = {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_AUTH_TOKEN": SECRET, "ANTHROPIC_DEFAULT_MODEL": "m"}
    return {H.ENV: json.dumps({**env, "API_TIMEOUT_MS": "3000"})}


REQUESTS: list[tuple[str, str | None, dict[str, str]]] = [
    ("stored-key", "openai", {}),
    ("cli-key", "cli-keyed", {}),
    ("env-key", "env-keyed", {}),
    ("wrong-key", "wrong-key", {}),
    ("sent-key-echoed", "sent-key-echoed", {}),
    ("timeout", "slow", {H.TIMEOUT_MS: str(DEADLINE_MS)}),
    ("byo-unreachable", None, _byo(f"https://{BYO_HOST}/v1")),
    ("byo-private", None, _byo("http://127.0.0.1:9/v1")),
]


async def _traffic(url: str) -> list[Outcome]:
    nc = await nats.connect(url)
    try:
        outcomes = []
        for label, model, headers in REQUESTS:
            for stream in (False, True):
                request: dict[str, Any] = {"messages": HELLO}
                if model is not None:
                    request["model"] = model
                if stream:
                    request.update(stream=True, stream_options={"include_usage": True})
                outcomes.append(await _send(nc, f"{label}{' stream' if stream else ''}", request, headers))
        return outcomes
    finally:
        await nc.close()


def _scenario(stack: Stack, admin: httpx.Client, home: Path, capture: Capture) -> None:
    def keep(where: str, reply: httpx.Response) -> httpx.Response:
        capture.replies.append((f"admin {where}", f"{reply.status_code} {reply.headers}\n{reply.text}"))
        return reply

    # In through the HTTP admin API and the CLI; the env: reference is in the stack's environment.
    put = keep("PUT openai key", admin.put("/api/v1/system/llm/providers/openai/key", json={"api_key": SECRET}))
    assert put.status_code == 200, put.text
    created = _cli(home, stack.url, "create", "secret", "leak-cli", "--from-literal", f"value={SECRET}")
    capture.replies.append(("cli create secret", created.stdout + created.stderr))
    assert created.returncode == 0, created.stderr
    _wait_routers(stack.url, put.json()["revision"])

    for outcome in run(_traffic(stack.url)):
        capture.outcomes[outcome.label] = outcome

    for path in ("/api/v1/system/llm/providers", "/api/v1/resources", "/api/v1/history"):
        assert keep(f"GET {path}", admin.get(path)).status_code == 200
    for name in ("openai", "wrong-key", "sent-key-echoed"):
        keep(f"probe {name}", admin.post(f"/api/v1/system/llm/providers/{name}/test", json={"timeout_ms": 5000}))
    verify = keep("GET /api/v1/audit/verify", admin.get("/api/v1/audit/verify"))
    capture.audit_ok = verify.status_code == 200 and verify.json()["ok"] is True

    refs = ["secret:llm-providers/openai", "secret:leak-cli", "env:LEAK_ENV_KEY", "env:LEAK_WRONG_KEY"]
    for subject, body in (
        (SECRETS_LIST, b""),
        (SECRETS_DESCRIBE, msgspec.json.encode(SecretsDescribe(refs=refs))),
    ):
        reply = run(_nats_request(stack.url, subject, body))
        capture.replies.append((f"nats {subject}", f"{reply.headers}\n{reply.data.decode()}"))
    for args in (("get", "endpoints", "-o", "json"), ("audit", "verify"), ("history",)):
        done = _cli(home, stack.url, *args)
        capture.replies.append((f"cli {' '.join(args)}", done.stdout + done.stderr))


@pytest.fixture(scope="module")
def capture(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    tmp = tmp_path_factory.mktemp("leaks")
    katan = start_katan(tmp_path_factory.mktemp("katan"), "--validate-keys", "--api-keys", f"openai={SECRET}")
    slow = start_katan(
        tmp_path_factory.mktemp("katan-slow"),
        "--validate-keys",
        "--api-keys",
        f"openai={SECRET},anthropic={OTHER_KEY}",
        "--latency-ms",
        str(SLOW_MS),
    )
    receiver = OtlpReceiver()
    sniffer = Sniffer(nats_server.url)
    config = tmp / "config.yaml"
    config.write_text(_config(katan, slow))
    home = tmp / "home"
    env = {
        "MODELBUS_LOG_LEVEL": "DEBUG",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "MODELBUS_MASTER_KEY": MASTER_KEY,
        "MODELBUS_ADMIN_HTTP": "127.0.0.1:0",
        "MODELBUS_ADMIN_TOKEN": TOKEN,
        "LEAK_ENV_KEY": SECRET,
        "LEAK_WRONG_KEY": WRONG_KEY,
    }
    stack: Stack | None = None
    capture = Capture(data_dirs=[home, nats_server.data_dir])
    try:
        sniffer.start()  # before the stack, so boot traffic is recorded too
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("OTEL_")]:
                mp.delenv(key)
            stack = start_stack(nats_server.url, config, home, env=env)
        listening = next(line for line in stack.output if "admin http listening on " in line)
        admin_url = listening.rsplit("admin http listening on ", 1)[1].split()[0]
        with httpx.Client(base_url=admin_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as admin:
            _scenario(stack, admin, home, capture)
    finally:
        # Stop in order, so everything is complete before the scan: services flush
        # their span exporters on exit, the sniffer drains, nats-server writes its files.
        if stack is not None:
            stop_process(stack.proc)
            capture.log = stack.log()
        capture.traffic = sniffer.stop()
        nats_server.stop()
        for k in (katan, slow):
            stop_process(k.proc)
        capture.exports = receiver.exports()
        receiver.close()
    yield capture


# ---------------------------------------------------------------- the documented exceptions


def _credential_replies(traffic: list[Sniffed]) -> set[str]:
    return {m.reply for m in traffic if m.subject in (SECRETS_GET, SECRETS_PUT) and m.reply}


def _without_meant_values(message: Sniffed) -> tuple[dict[str, str], bytes]:
    """Headers and body with only the values callers send on purpose blanked (see the module docstring)."""
    headers, data = dict(message.headers), message.data
    if message.subject.startswith(f"{PROVIDER_PREFIX}.") and data:
        call = json.loads(data)
        if call.get("credential") is not None:
            call["credential"] = "<blanked>"
        data = json.dumps(call).encode()
    if message.subject == CHAT_COMPLETIONS and H.ENV in headers:
        env = json.loads(headers[H.ENV])
        if "ANTHROPIC_AUTH_TOKEN" in env:
            env["ANTHROPIC_AUTH_TOKEN"] = "<blanked>"
        headers[H.ENV] = json.dumps(env)
    if message.subject == CONFIG_APPLY and data:
        request = json.loads(data)
        try:
            doc = json.loads(request["documents"])  # `create secret` sends one JSON document
        except ValueError:
            doc = None  # other applies are scanned whole
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            doc["spec"]["stringData"]["value"] = "<blanked>"
            request["documents"] = json.dumps(doc)
        data = json.dumps(request).encode()
    return headers, data


def _scannable(traffic: list[Sniffed]) -> Iterator[tuple[str, Sniffed, dict[str, str], bytes]]:
    excluded = _credential_replies(traffic)
    for i, message in enumerate(traffic):
        if message.subject in (SECRETS_GET, SECRETS_PUT) or message.subject in excluded:
            continue
        headers, data = _without_meant_values(message)
        yield f"nats message #{i} on {message.subject}", message, headers, data


# ---------------------------------------------------------------- tests: the scenario ran


def test_requests_succeeded_and_failed_the_way_the_scenario_intends(capture: Capture) -> None:
    expected = {
        "stored-key": {200},
        "cli-key": {200},
        "env-key": {200},
        "wrong-key": {401},
        "sent-key-echoed": {401},
        "timeout": {408, 504},
        "byo-unreachable": {503},
        "byo-private": {400},
    }
    for label, statuses in expected.items():
        for variant in (label, f"{label} stream"):
            outcome = capture.outcomes[variant]
            assert outcome.status in statuses, (variant, outcome.messages[-1])
    assert capture.audit_ok


def test_the_capture_saw_the_secret_where_it_is_meant_to_travel(capture: Capture) -> None:
    """The scan below is only worth something if the capture could see the secret at all."""
    credential_replies = _credential_replies(capture.traffic)
    fetched = [m for m in capture.traffic if m.reply and m.subject == SECRETS_GET]
    answered = [m for m in capture.traffic if m.subject in credential_replies and find("", m.data)]
    assert fetched and answered, "no credential fetch carrying the secret was recorded"
    assert [m for m in capture.traffic if m.subject == SECRETS_PUT and find("", m.data)], "no secrets.put seen"
    calls = [m for m in capture.traffic if m.subject.startswith(PROVIDER_PREFIX) and b'"credential"' in m.data]
    assert [m for m in calls if json.loads(m.data)["credential"] == SECRET], "no BYO provider call seen"
    assert [m for m in capture.traffic if m.subject == CHAT_COMPLETIONS and find("", m.headers.get(H.ENV, ""))]
    assert [m for m in capture.traffic if m.subject == CONFIG_APPLY and find("", m.data)], "no `create secret` seen"
    assert "DEBUG" in capture.log, "services did not log at DEBUG"
    assert sum(len(ss.spans) for e in capture.exports for rs in e.resource_spans for ss in rs.scope_spans) > 20
    assert list(Path(capture.data_dirs[1]).rglob("*.blk")), "no JetStream message files to scan"


# ---------------------------------------------------------------- tests: where it must never be


def test_error_replies_to_clients_never_contain_the_secret(capture: Capture) -> None:
    hits = [
        hit
        for outcome in capture.outcomes.values()
        for i, (headers, body) in enumerate(outcome.messages)
        for hit in find(f"reply {i} to {outcome.label!r}", f"{headers}\n".encode() + body)
    ]
    assert_no_leak(hits, "replies to clients")


def test_service_logs_at_every_level_never_contain_the_secret(capture: Capture) -> None:
    hits = [hit for n, line in enumerate(capture.log.splitlines(), 1) for hit in find(f"stack log line {n}", line)]
    assert_no_leak(hits, "the service logs")


def test_spans_span_events_and_resources_never_contain_the_secret(capture: Capture) -> None:
    hits: list[Hit] = []
    for e, export in enumerate(capture.exports):
        for resource_spans in export.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), "?"
            )
            hits += find(f"export {e} resource of {service}", resource_spans.resource.SerializeToString())
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    hits += find(f"export {e} span {service}/{span.name}", span.SerializeToString())
        if not hits:  # anything outside a span or resource still counts
            hits += find(f"export {e} body", export.SerializeToString())
    assert_no_leak(hits, "exported spans")


def test_nats_traffic_outside_the_credential_subjects_never_contains_the_secret(capture: Capture) -> None:
    hits: list[Hit] = []
    for where, message, headers, data in _scannable(capture.traffic):
        hits += find(f"{where} (subject/reply)", f"{message.subject} {message.reply}")
        hits += find(f"{where} (headers)", json.dumps(headers))
        hits += find(f"{where} (body)", data)
    assert_no_leak(hits, "NATS traffic")


def test_admin_api_nats_admin_and_cli_replies_never_contain_the_secret(capture: Capture) -> None:
    hits = [hit for where, text in capture.replies for hit in find(where, text)]
    assert_no_leak(hits, "admin replies and CLI output")


def test_files_under_the_data_directories_never_contain_the_secret(capture: Capture) -> None:
    hits: list[Hit] = []
    scanned = 0
    for root in capture.data_dirs:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            scanned += 1
            hits += find(str(path), path.read_bytes())
    assert scanned > 5
    assert_no_leak(hits, "files under the data directories")


# ---------------------------------------------------------------- unit: an httpx error carrying the secret


def test_a_transport_error_whose_request_carries_the_secret_loses_it_on_the_way_out() -> None:
    request = httpx.Request(
        "POST",
        f"https://api.example.com/v1/chat/completions?key={SECRET}",
        headers={"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET},
    )
    cause = httpx.ConnectError(f"cannot connect for {request.url} with {request.headers}", request=request)
    assert SECRET in str(cause)  # the raw exception does carry it
    for exc in (cause, httpx.ReadTimeout(f"timed out: {request.url}", request=request)):
        try:
            try:
                raise exc
            except httpx.HTTPError as caught:
                raise transport_error(caught, endpoint="leaky", provider="openai", model="m") from caught
        except ModelbusError as err:
            CredentialScrubber([SECRET]).scrub_error(err)  # what the worker does with every adapter error
            assert SECRET not in err.message
            assert SECRET not in str(err)
            assert SECRET not in repr(err)
            assert SECRET not in err.to_json().decode()
            assert err.http_status in (503, 504)


def test_scrub_removes_the_secret_from_str_and_repr_as_well_as_from_the_message() -> None:
    """An upstream text that quotes the key we sent (OpenAI does, masked; llm-katan in full)."""
    err = ModelbusError(f"openai returned 401: invalid API key: got '{SECRET}', i.e. '{SECRET[:14]}...'")
    CredentialScrubber([SECRET]).scrub_error(err)
    assert SECRET not in err.message and SECRET[:14] not in err.message
    assert SECRET not in err.to_json().decode()
    assert SECRET not in repr(err)
    assert SECRET not in str(err)
