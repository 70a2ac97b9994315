"""A throwaway OTLP/HTTP trace receiver that counts what it is sent.

The benchmark runs it as its own process (``python -m bench.otlp_sink``), so
decoding spans never competes with the load generator for the GIL, just as a
real collector would run apart from the services. It answers
``POST /v1/traces`` with 200 and an empty ``ExportTraceServiceResponse``
(https://opentelemetry.io/docs/specs/otlp/#otlphttp-response), decodes each
``ExportTraceServiceRequest`` and counts its spans per ``service.name``;
``GET /stats`` returns the counts as JSON. It prints ``listening PORT`` once
it accepts connections.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()


class SpanCounts:
    """Thread-safe tallies of what the exporters sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.export_requests = 0
        self.undecodable_requests = 0
        self.spans = 0
        self.spans_by_service: dict[str, int] = {}

    def add(self, body: bytes) -> None:
        """Count the spans of one export request body (protobuf)."""
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:  # protobuf raises its own DecodeError; any failure is just counted
            with self._lock:
                self.undecodable_requests += 1
            return
        per_service: dict[str, int] = {}
        for resource_spans in request.resource_spans:
            service = "unknown"
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    service = attribute.value.string_value
            count = sum(len(scope.spans) for scope in resource_spans.scope_spans)
            per_service[service] = per_service.get(service, 0) + count
        with self._lock:
            self.export_requests += 1
            for service, count in per_service.items():
                self.spans += count
                self.spans_by_service[service] = self.spans_by_service.get(service, 0) + count

    def snapshot(self) -> dict[str, object]:
        """The counts as a JSON-ready dict."""
        with self._lock:
            return {
                "export_requests": self.export_requests,
                "undecodable_requests": self.undecodable_requests,
                "spans": self.spans,
                "spans_by_service": dict(sorted(self.spans_by_service.items())),
            }


COUNTS = SpanCounts()


class OtlpHandler(BaseHTTPRequestHandler):
    """``POST /v1/traces`` and ``GET /stats``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect from a collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path != "/v1/traces":
            self._reply(404, b"", "text/plain")
            return
        if self.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        COUNTS.add(body)
        self._reply(200, EMPTY_RESPONSE, "application/x-protobuf")

    def do_GET(self) -> None:
        if self.path != "/stats":
            self._reply(404, b"", "text/plain")
            return
        self._reply(200, json.dumps(COUNTS.snapshot()).encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request access log."""


def main() -> None:
    """Serve on a free loopback port until terminated."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), OtlpHandler)
    server.daemon_threads = True
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
