"""Trace context in envelopes and logs, and OTLP export only when OTEL_EXPORTER_OTLP_ENDPOINT is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from opentelemetry.sdk.trace import TracerProvider

from shared.events import LoanVerificationCompleted, new_envelope
from shared.tracing import context_from, log_ids, trace_context

DATA = LoanVerificationCompleted(
    loan_id="L-1",
    stage="final_check",
    branch_id="B-1",
    status="verified",
    parties=[],
    completed_at="2026-11-30T09:00:00+08:00",
)


def test_no_current_span_adds_nothing_to_the_envelope_or_the_log() -> None:
    assert trace_context() == {}
    envelope = new_envelope(DATA, source="/huifang/test", subject="L-1", extensions=trace_context())
    assert "traceparent" not in json.loads(envelope.model_dump_json(exclude_none=True))
    assert log_ids(None, "info", {"event": "x"}) == {"event": "x"}


def test_the_current_span_rides_in_the_envelope_and_the_log_and_comes_back_out() -> None:
    tracer = TracerProvider().get_tracer("test")  # a local provider: the global one stays untouched
    with tracer.start_as_current_span("work") as span:
        ctx = span.get_span_context()
        envelope = new_envelope(DATA, source="/huifang/test", subject="L-1", extensions=trace_context())
        logged = log_ids(None, "info", {"event": "x"})
    wire = json.loads(envelope.model_dump_json(exclude_none=True))
    trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    version, carried_trace, carried_span, flags = wire["traceparent"].split("-")
    assert (version, carried_trace, carried_span) == ("00", trace_id, span_id) and int(flags, 16) & 1  # sampled
    assert logged == {"event": "x", "trace_id": trace_id, "span_id": span_id}
    carried = context_from(wire)
    assert carried is not None
    from opentelemetry import trace

    assert trace.get_current_span(carried).get_span_context().trace_id == ctx.trace_id


def test_a_missing_or_malformed_traceparent_is_no_context() -> None:
    assert context_from(None) is None
    assert context_from({"traceparent": None}) is None
    assert context_from({"traceparent": "not-a-trace"}) is None
    assert context_from({"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"}) is None  # all-zero ids


PROBE = """
from opentelemetry import trace
from shared.tracing import recording, setup_tracing
print(setup_tracing(service_name="huifang-probe"), recording(), type(trace.get_tracer_provider()).__name__)
"""


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.strip()


def test_otlp_export_is_set_up_only_when_the_endpoint_is_set() -> None:
    # A fresh process each: the global provider can be set once per process.
    assert _probe() == "False False ProxyTracerProvider"
    assert _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9") == "True True TracerProvider"
