"""Tracing over the real request path: one request is one trace across every service.

The module runs its own OTLP/HTTP receiver on a loopback port and starts the
real stack with the standard ``OTEL_*`` variables pointing at it. The test
process traces too (a local ``TracerProvider``, never the global one), so the
client's span is the root of each trace and the receiver sees the whole tree:
client -> router -> provider worker -> secrets service.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import shared.client
from shared import headers as H
from shared.bus import connect
from shared.client import ModelbusClient
from shared.natsserver import EmbeddedNats
from shared.subjects import CHAT_COMPLETIONS, SECRETS_GET, provider_subject
from tests.conftest import Stack, run, start_stack, stop_process

CONFIG = Path(__file__).with_name("configs") / "tracing.yaml"
SECRET = "sk-trace-test-0123456789"
HELLO = {"role": "user", "content": "hello bus"}
SPAN_WAIT_S = 10.0

TEST_SERVICE = "modelbus-tests"
ROUTER = "modelbus-router"
PROVIDERS = "modelbus-providers"
SECRETS = "modelbus-secrets"

SERVER = ProtoSpan.SpanKind.SPAN_KIND_SERVER
CLIENT = ProtoSpan.SpanKind.SPAN_KIND_CLIENT


# ---------------------------------------------------------------- OTLP/HTTP receiver


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, flattened, with its resource's ``service.name``."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.name)

    def __str__(self) -> str:
        return (
            f"{self.service:20} {self.name:28} trace={self.trace_id} "
            f"span={self.span_id} parent={self.parent_span_id or '-'}"
        )


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        service = str(resource.get(SERVICE_NAME, ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        service=service,
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    )
                )
    return out


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf body."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self._answer(404, b"")
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    spans = _decode(body)
                except Exception:  # a bad body is the sender's bug: answer 400
                    self._answer(400, b"")
                    return
                with receiver._lock:
                    receiver._spans.extend(spans)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def mark(self) -> int:
        """A position; :meth:`since` returns what arrived after it."""
        with self._lock:
            return len(self._spans)

    def since(self, mark: int) -> list[ReceivedSpan]:
        with self._lock:
            return self._spans[mark:]

    def wait_for(
        self, mark: int, done: Callable[[list[ReceivedSpan]], bool], what: str, timeout_s: float = SPAN_WAIT_S
    ) -> list[ReceivedSpan]:
        """Poll until the spans received since ``mark`` satisfy ``done``."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.since(mark)
            if done(got):
                return got
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout_s}s; received:\n" + "\n".join(map(str, got)))
            time.sleep(0.02)

    def wait_for_keys(self, mark: int, keys: set[tuple[str, str]]) -> list[ReceivedSpan]:
        """Wait until a span of every ``(service, name)`` in ``keys`` has arrived."""
        return self.wait_for(mark, lambda got: keys <= {s.key for s in got}, f"spans {sorted(keys)}")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def local_tracer_provider(receiver: OtlpReceiver) -> Iterator[TracerProvider]:
    """The test process's own SDK, exporting each span as it ends; never installed globally."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: TEST_SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")))
    try:
        yield provider
    finally:
        provider.shutdown()


@pytest.fixture
def traced_client(local_tracer_provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ModelbusClient's spans real (and exported) for one test, without global state."""
    monkeypatch.setattr(shared.client, "_tracer", local_tracer_provider.get_tracer("modelbus.client"))


def _without_otel_env(mp: pytest.MonkeyPatch) -> None:
    """Services must see only the OTEL_* variables a test gives them."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            mp.delenv(key)


@pytest.fixture(scope="module")
def stack(
    nats_server: EmbeddedNats, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "UPSTREAM_TRACE_KEY": SECRET,
        "UPSTREAM_TRACE_STREAM_KEY": SECRET,
    }
    with pytest.MonkeyPatch.context() as mp:
        _without_otel_env(mp)
        s = start_stack(nats_server.url, CONFIG, tmp_path_factory.mktemp("home"), env=env)
    try:
        yield s
    finally:
        stop_process(s.proc)


# ---------------------------------------------------------------- helpers


def _body(**fields: Any) -> dict[str, Any]:
    return {"messages": [HELLO], **fields}


async def _complete(url: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    client = await ModelbusClient.connect(url)
    try:
        reply = await client.request_raw(request, timeout=10)
    finally:
        await client.close()
    return reply.status, json.loads(reply.body)


async def _stream(url: str, request: dict[str, Any]) -> str:
    client = await ModelbusClient.connect(url)
    text = ""
    try:
        async for chunk in client.stream(request, timeout=10):
            text += "".join(c.delta.content or "" for c in chunk.choices)
    finally:
        await client.close()
    return text


def _one_each(spans: list[ReceivedSpan]) -> dict[tuple[str, str], ReceivedSpan]:
    by_key: dict[tuple[str, str], ReceivedSpan] = {}
    for span in spans:
        assert span.key not in by_key, "one request made two spans named " + repr(span.key)
        by_key[span.key] = span
    return by_key


ALL_SERVICES = frozenset({TEST_SERVICE, ROUTER, PROVIDERS, SECRETS})


def _assert_one_connected_trace(
    spans: list[ReceivedSpan], root: ReceivedSpan, services: frozenset[str] = ALL_SERVICES
) -> None:
    """Every span shares the root's trace id and hangs off the root through received spans."""
    listing = "\n" + "\n".join(map(str, spans))
    assert not root.parent_span_id, "the client's span is not the root of its trace" + listing
    assert {s.trace_id for s in spans} == {root.trace_id}, "one request produced several traces" + listing
    ids = {s.span_id for s in spans}
    assert len(ids) == len(spans), "span ids are not unique" + listing
    orphans = [str(s) for s in spans if s is not root and s.parent_span_id not in ids]
    assert not orphans, "spans whose parent was never exported: " + "\n".join(orphans) + listing
    assert services <= {s.service for s in spans}, listing
    assert not [s.name for s in spans if "_INBOX" in s.name], listing


def _assert_chain(by_key: dict[tuple[str, str], ReceivedSpan], chain: list[tuple[str, str]]) -> None:
    """Each span in ``chain`` is the parent of the next."""
    for parent, child in itertools.pairwise(chain):
        assert by_key[child].parent_span_id == by_key[parent].span_id, f"{child} is not a child of {parent}"


# ---------------------------------------------------------------- tests


def test_one_request_is_one_trace_with_spans_from_every_service(
    stack: Stack, receiver: OtlpReceiver, traced_client: None
) -> None:
    # First request to mock-keyed: the worker has no cached credential, so it asks secrets.
    mark = receiver.mark()
    status, body = run(_complete(stack.url, _body(model="keyed")))
    assert status == 200, body

    chain = [
        (TEST_SERVICE, "chat.completions request"),
        (ROUTER, "route chat.completions"),
        (ROUTER, "attempt mock-keyed"),
        (PROVIDERS, "chat keyed-model"),
        (PROVIDERS, "secrets.get"),
        (SECRETS, "secrets.get"),
    ]
    spans = receiver.wait_for_keys(mark, set(chain))
    by_key = _one_each(spans)
    _assert_one_connected_trace(spans, by_key[chain[0]])
    _assert_chain(by_key, chain)
    assert by_key[(ROUTER, "route chat.completions")].kind == SERVER
    assert by_key[(PROVIDERS, "secrets.get")].kind == CLIENT
    assert by_key[(SECRETS, "secrets.get")].kind == SERVER
    assert SECRET not in repr(spans)


def test_provider_span_follows_the_genai_semantic_conventions(
    stack: Stack, receiver: OtlpReceiver, traced_client: None
) -> None:
    mark = receiver.mark()
    status, body = run(_complete(stack.url, _body(model="plain", max_tokens=64, temperature=0.5, top_p=0.9)))
    assert status == 200, body

    chain = [
        (TEST_SERVICE, "chat.completions request"),
        (ROUTER, "route chat.completions"),
        (ROUTER, "attempt mock-plain"),
        (PROVIDERS, "chat genai-model"),
    ]
    spans = receiver.wait_for_keys(mark, set(chain))
    by_key = _one_each(spans)
    _assert_one_connected_trace(spans, by_key[chain[0]], frozenset({TEST_SERVICE, ROUTER, PROVIDERS}))
    _assert_chain(by_key, chain)
    span = by_key[(PROVIDERS, "chat genai-model")]
    attrs = span.attributes
    assert span.kind == CLIENT
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "modelbus.mock"
    assert attrs["gen_ai.request.model"] == "genai-model"
    assert attrs["gen_ai.response.model"] == body["model"] == "genai-model"
    assert attrs["gen_ai.response.id"] == body["id"]
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"] > 0
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.request.top_p"] == 0.9


def test_streamed_request_is_one_trace_and_records_time_to_first_chunk(
    stack: Stack, receiver: OtlpReceiver, traced_client: None
) -> None:
    mark = receiver.mark()
    text = run(_stream(stack.url, _body(model="keyed-stream", stream=True)))
    assert text == "mock:stream-model says: hello bus"

    chain = [
        (TEST_SERVICE, "chat.completions stream"),
        (ROUTER, "route chat.completions"),
        (ROUTER, "attempt mock-keyed-stream"),
        (PROVIDERS, "chat stream-model"),
        (PROVIDERS, "secrets.get"),
        (SECRETS, "secrets.get"),
    ]
    spans = receiver.wait_for_keys(mark, set(chain))
    by_key = _one_each(spans)
    _assert_one_connected_trace(spans, by_key[chain[0]])
    _assert_chain(by_key, chain)
    attrs = by_key[(PROVIDERS, "chat stream-model")].attributes
    assert 0 <= attrs["gen_ai.response.time_to_first_chunk"] < 5
    assert attrs["gen_ai.response.model"] == "stream-model"
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["gen_ai.usage.output_tokens"] == 4  # words of the answer


def test_span_names_never_contain_inbox_subjects(stack: Stack, receiver: OtlpReceiver, traced_client: None) -> None:
    # Both reply styles: request/reply (muxed inbox) and streamed replies to a client inbox.
    mark = receiver.mark()
    assert run(_complete(stack.url, _body(model="plain")))[0] == 200
    assert run(_stream(stack.url, _body(model="plain", stream=True)))
    keys = [(TEST_SERVICE, "chat.completions request"), (TEST_SERVICE, "chat.completions stream")] + [
        (ROUTER, "route chat.completions"),
        (ROUTER, "attempt mock-plain"),
        (PROVIDERS, "chat genai-model"),
    ] * 2
    receiver.wait_for(mark, lambda got: not Counter(keys) - Counter(s.key for s in got), "spans of both requests")
    spans = receiver.spans()  # everything this module's stack exported so far
    assert spans
    assert not [str(s) for s in spans if "_INBOX" in s.name]


def test_trace_context_passes_through_services_that_export_nothing(
    tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Propagation-only mode: no OTEL_* set, yet every hop forwards the caller's traceparent."""
    _without_otel_env(monkeypatch)
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{span_id}-01"

    async def send(url: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        nc = await connect("tracing-test", url)
        try:
            # Plain (non-queue) subscriptions get a copy of each hop's message.
            to_provider = await nc.subscribe(provider_subject("mock"))
            to_secrets = await nc.subscribe(SECRETS_GET)
            await nc.flush()
            body = json.dumps(_body(model="keyed")).encode()
            reply = await nc.request(
                CHAT_COMPLETIONS, body, timeout=10, headers={"traceparent": traceparent, H.REQUEST_ID: uuid.uuid4().hex}
            )
            provider_msg = await to_provider.next_msg(timeout=5)
            secrets_msg = await to_secrets.next_msg(timeout=5)
        finally:
            await nc.close()
        return dict(reply.headers or {}), dict(provider_msg.headers or {}), dict(secrets_msg.headers or {})

    server = EmbeddedNats(tmp_path / "nats", log_file=None)
    server.start()
    try:
        quiet = start_stack(server.url, CONFIG, tmp_path / "home", env={"UPSTREAM_TRACE_KEY": SECRET})
        mark = receiver.mark()
        try:
            reply_headers, provider_headers, secrets_headers = run(send(server.url))
        finally:
            stop_process(quiet.proc)  # services flush any exporter on exit
    finally:
        server.stop()

    assert reply_headers[H.STATUS] == "200"
    for hop, hdrs in (("router -> provider", provider_headers), ("provider -> secrets", secrets_headers)):
        assert "traceparent" in hdrs, f"{hop} dropped the trace context"
        version, got_trace, _, flags = hdrs["traceparent"].split("-")
        assert (version, got_trace, flags) == ("00", trace_id, "01"), f"{hop} changed the trace"
    assert not [s for s in receiver.since(mark) if s.trace_id == trace_id], "a service exported spans"
