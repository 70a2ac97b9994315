"""Hot-path tracing helpers when this process exports no spans (no SDK installed)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared import telemetry

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_without_an_exporter_a_hot_span_creates_nothing_and_leaves_the_context_alone() -> None:
    assert not telemetry.tracing_enabled()
    before = trace.get_current_span()
    with telemetry.hot_span(
        telemetry.tracer("t"), "route", kind=SpanKind.SERVER, parent_headers={"traceparent": PARENT}
    ) as span:
        assert span is trace.INVALID_SPAN
        span.set_attribute("ignored", 1)  # no-ops, never errors
        assert trace.get_current_span() is before


def test_without_an_exporter_the_callers_trace_headers_are_forwarded_unchanged() -> None:
    out: dict[str, str] = {"Modelbus-Request-Id": "r"}
    incoming = {"traceparent": PARENT, "tracestate": "vendor=x", "baggage": "k=v", "Modelbus-Agent": "a"}
    telemetry.propagate_headers(out, incoming)
    assert out == {"Modelbus-Request-Id": "r", "traceparent": PARENT, "tracestate": "vendor=x", "baggage": "k=v"}
    none: dict[str, str] = {}
    telemetry.propagate_headers(none, None)
    assert none == {}
