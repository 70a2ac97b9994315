"""Process facts from /proc and the OTLP sink's span counting."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from bench import procs
from bench.otlp_sink import SpanCounts


def test_proc_readers_see_this_process() -> None:
    assert procs.parent_of(os.getpid()) == os.getppid()
    assert os.getpid() in procs.children_of(os.getppid())
    assert (procs.rss_mb(os.getpid()) or 0) > 1
    assert any("pytest" in part for part in procs.command_line(os.getpid()))
    assert procs.python_module(["python", "-m", "services.router"]) == "services.router"
    assert procs.python_module(["nats-server", "-c", "x.conf"]) is None


def test_facts_of_a_vanished_process_are_empty() -> None:
    gone = 2**22 + 12345  # above the default pid_max
    assert procs.parent_of(gone) is None
    assert procs.rss_mb(gone) is None
    assert procs.command_line(gone) == []


def _export(service: str, spans: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    scope = resource_spans.scope_spans.add()
    for i in range(spans):
        span = scope.spans.add()
        span.name = f"span {i}"
    return bytes(request.SerializeToString())


def test_the_sink_counts_spans_per_service_and_undecodable_exports() -> None:
    counts = SpanCounts()
    counts.add(_export("modelbus-router", 2))
    counts.add(_export("modelbus-providers", 1))
    counts.add(_export("modelbus-router", 3))
    counts.add(b"\xff\xff not protobuf")
    snapshot = counts.snapshot()
    assert snapshot["spans"] == 6
    assert snapshot["export_requests"] == 3
    assert snapshot["undecodable_requests"] == 1
    assert snapshot["spans_by_service"] == {"modelbus-providers": 1, "modelbus-router": 5}
