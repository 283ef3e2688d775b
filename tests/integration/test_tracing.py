"""One refused attempt, POSTed over HTTP, is one trace: outcomes → callback.refused → notifier → webhook.

Runs across the real broker. The in-memory SDK provider is installed once per session (the global
provider can be set only once) and records only while a test here holds the switch; spans are then
filtered by the trace id of the test's own request, so other tests' background work never mixes in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import Attributes

from shared.tracing import install
from tests.outcomes_support import due_callbacks
from tests.support import Huifang, loan_event, wait_for


class Switch(Sampler):
    """Records spans only while a tracing test runs: the rest of the session pays almost nothing."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "Switch"


@pytest.fixture(scope="session")
def tracing() -> tuple[Switch, InMemorySpanExporter]:
    switch, exporter = Switch(), InMemorySpanExporter()
    provider = TracerProvider(sampler=switch, resource=Resource.create({"service.name": "huifang-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(provider)
    assert trace.get_tracer_provider() is provider, "another test installed a tracer provider first"
    return switch, exporter


@pytest.fixture
def spans(tracing: tuple[Switch, InMemorySpanExporter]) -> Iterator[InMemorySpanExporter]:
    switch, exporter = tracing
    exporter.clear()
    switch.on = True
    try:
        yield exporter
    finally:
        switch.on = False
        exporter.clear()


def _hex(span: ReadableSpan, what: str = "span") -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return format(ctx.trace_id, "032x") if what == "trace" else format(ctx.span_id, "016x")


def _parent(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent else None


async def test_a_refusal_posted_over_http_is_one_trace_to_the_webhook(
    huifang: Huifang, spans: InMemorySpanExporter
) -> None:
    loan, by_role = await due_callbacks(huifang)
    callback_id = by_role["borrower"]
    async with huifang.client("outcomes") as client:
        # No traceparent from the caller: the server starts the trace.
        answer = await client.post(
            f"/v1/callbacks/{callback_id}/attempts",
            json={"disposition": "refused", "reason_code": "time_conflict", "notes": "别再打了"},
        )
    assert answer.status_code == 201, answer.text

    def server_span() -> ReadableSpan | None:
        found = [
            s
            for s in spans.get_finished_spans()
            if s.kind == SpanKind.SERVER and callback_id in str((s.attributes or {}).get("http.target", ""))
        ]
        return found[0] if found else None

    root = await wait_for(server_span, what="the outcomes server span of the POST")
    trace_id = _hex(root, "trace")
    [(headers, body, _)] = await wait_for(
        lambda: [d for d in huifang.webhook_deliveries(loan) if d[1].get("type") == "callback.refused"],
        what="the officer's refusal webhook",
    )
    assert body["callback_id"] == callback_id

    def deliver_span() -> ReadableSpan | None:
        found = [s for s in spans.get_finished_spans() if s.name == "deliver webhook" and _hex(s, "trace") == trace_id]
        return found[0] if found else None

    delivery = await wait_for(deliver_span, what="the webhook delivery span to end")
    ours = sorted(
        (s for s in spans.get_finished_spans() if _hex(s, "trace") == trace_id), key=lambda s: s.start_time or 0
    )
    by_id = {_hex(s): s for s in ours}
    refused_topic = huifang.settings.topic("callback.refused.v1")
    [sent] = [s for s in ours if s.name == f"send {refused_topic}"]
    [processed] = [s for s in ours if s.name == f"process {refused_topic}"]

    # The chain: POST (outcomes) → publish callback.refused → notifier consumes it → webhook delivery.
    assert root.parent is None and "POST /v1/callbacks/{callback_id}/attempts" in root.name
    assert sent.kind == SpanKind.PRODUCER and _parent(sent) in by_id
    assert processed.kind == SpanKind.CONSUMER and (processed.attributes or {})["huifang.service"] == "notifier"
    assert _parent(processed) in by_id  # continued from the envelope's traceparent, across the broker
    assert delivery.kind == SpanKind.CLIENT and _parent(delivery) == _hex(processed)
    # The receiver gets the delivery span's context, so its own work can join the trace.
    traceparent = {k.lower(): v for k, v in headers.items()}["traceparent"]
    version, header_trace, header_parent, _flags = traceparent.split("-")
    assert (version, header_trace, header_parent) == ("00", trace_id, _hex(delivery))
    # The event on the broker carries it as the CloudEvents distributed-tracing extension.
    [event] = huifang.tap.events("callback.refused", loan)
    assert event["traceparent"].split("-")[1] == trace_id

    # Personal data never rides in spans: not the party's name or phone, not the agent's notes.
    party = loan_event(loan, roles=("borrower",))["parties"][0]
    for s in ours:
        text = repr(dict(s.attributes or {})) + s.name + repr([e.attributes for e in s.events])
        for secret in (party["name"], party["phone"], "别再打了"):
            assert secret not in text, (s.name, secret)

    # The scheduler's due timer started a trace of its own that reached outcomes over the broker.
    [due] = [
        s
        for s in spans.get_finished_spans()
        if s.name == "timer due" and (s.attributes or {}).get("huifang.timer.subject_id") == callback_id
    ]
    lifecycle = huifang.settings.topic("callback.lifecycle.v1")
    timer_trace = {s.name for s in spans.get_finished_spans() if _hex(s, "trace") == _hex(due, "trace")}
    assert {f"send {lifecycle}", f"process {lifecycle}"} <= timer_trace

    start = root.start_time or 0
    print(f"\ntrace {trace_id} ({huifang.kind}):")
    for s in ours:
        offset, took = ((s.start_time or 0) - start) / 1e6, ((s.end_time or 0) - (s.start_time or 0)) / 1e6
        print(f"  +{offset:8.1f} ms {took:7.1f} ms  {s.kind.name:<8} {s.name}")
