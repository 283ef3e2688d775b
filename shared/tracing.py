"""OpenTelemetry traces: W3C trace context in every CloudEvent, spans on the hops that matter.

Nothing here exports unless OTEL_EXPORTER_OTLP_ENDPOINT is set: without an SDK provider the
OpenTelemetry API is a no-op, and the hot paths check `recording()` before doing any work.
Span attributes carry ids and types only, never names, phones, emails, notes or tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# W3C trace context only (no baggage): what the CloudEvents distributed-tracing extension carries.
_PROPAGATOR = TraceContextTextMapPropagator()
TRACE_KEYS = ("traceparent", "tracestate")
tracer = trace.get_tracer("huifang")
_recording = False
_NOTHING = contextlib.nullcontext()


def recording() -> bool:
    """Whether spans are recorded (an SDK provider was installed through this module): a flag, for hot paths."""
    return _recording


def _sdk_installed() -> bool:
    # Asking the API costs microseconds (it reads the environment), so this runs at set-up only.
    return type(trace.get_tracer_provider()).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def install(provider: TracerProvider) -> None:
    """Make `provider` the global tracer provider and switch span recording on (set-up and tests)."""
    global _recording
    trace.set_tracer_provider(provider)
    _recording = _sdk_installed()


def setup_tracing(*, service_name: str) -> bool:
    """Export spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or its traces variant) is set."""
    global _recording
    if _sdk_installed():  # set up before us, e.g. by `opentelemetry-instrument`: use it
        _recording = True
        return True
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over our default name.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = SdkTracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return True


def shutdown_tracing() -> None:
    """Flush spans still queued for export (a no-op without an SDK provider)."""
    provider: Any = trace.get_tracer_provider()
    if recording() and hasattr(provider, "shutdown"):
        provider.shutdown()


def trace_context() -> dict[str, str]:
    """The current W3C trace context as CloudEvents extension attributes or HTTP headers ({} when none)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, Any] | None) -> otel_context.Context | None:
    """The trace context carried by an envelope, a header set or a stored row; None when there is none."""
    if not carrier or not isinstance(carrier.get("traceparent"), str):
        return None
    found = _PROPAGATOR.extract({k: carrier[k] for k in TRACE_KEYS if isinstance(carrier.get(k), str)})
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def continued(
    name: str,
    *,
    carrier: Mapping[str, Any] | None,
    kind: SpanKind,
    attributes: Callable[[], Mapping[str, str | int]],
) -> contextlib.AbstractContextManager[None]:
    """A span continuing the trace in `carrier`; without a recording SDK, the carried context passes through."""
    if not _recording and not (carrier and carrier.get("traceparent")):
        return _NOTHING  # the common untraced case costs one check, not a generator
    return _continued(name, carrier=carrier, kind=kind, attributes=attributes)


@contextlib.contextmanager
def _continued(
    name: str,
    *,
    carrier: Mapping[str, Any] | None,
    kind: SpanKind,
    attributes: Callable[[], Mapping[str, str | int]],
) -> Iterator[None]:
    parent = context_from(carrier)
    if not recording():
        if parent is None:
            yield
            return
        # Pass-through: what this work emits still carries the caller's trace.
        token = otel_context.attach(parent)
        try:
            yield
        finally:
            otel_context.detach(token)
        return
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes()):
        yield


def span(name: str, *, attributes: Mapping[str, str | int]) -> contextlib.AbstractContextManager[object]:
    """An internal span (a timer firing, say) in the current trace, or a new one; nothing when not recording."""
    if not recording():
        return _NOTHING  # no generator per call: the timer loop asks for one per timer
    return tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)


_NOTHING = contextlib.nullcontext()


def timer_attributes(kind: str, subject_id: str) -> dict[str, str | int]:
    """The attributes of a timer's span: its kind and the id of what it fires for."""
    return {"huifang.timer.kind": kind, "huifang.timer.subject_id": subject_id}


def start_publish(*, topic: str, key: str, value: bytes) -> Span | None:
    """A producer span for one outbox row, child of the trace in its envelope; None when not recording."""
    if not recording():
        return None
    try:
        envelope = json.loads(value)
    except ValueError:
        envelope = {}
    carrier = envelope if isinstance(envelope, dict) else {}
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.kafka.message.key": key,
        "messaging.message.id": str(carrier.get("id", "")),
        "cloudevents.event_type": str(carrier.get("type", "")),
    }
    # The publishing span joins the trace that made the event (the relay's loop has none of its own).
    return tracer.start_span(
        f"send {topic}", context=context_from(carrier), kind=SpanKind.PRODUCER, attributes=attributes
    )


def mark_failed(reason: str) -> None:
    """Mark the current span failed with a short reason (an error type or status, never personal data)."""
    if recording():
        trace.get_current_span().set_status(Status(StatusCode.ERROR, reason[:200]))


def end_span(span: Span | None, *, error: BaseException | None = None) -> None:
    """End a span started by start_publish, marking it failed with the error's type (never its text)."""
    if span is None:
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def log_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current trace and span ids, so a log line leads to its trace."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict
