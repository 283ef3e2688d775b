"""Without an SDK recording spans, requests skip OpenTelemetry's ASGI middleware (about 1 ms each)."""

from __future__ import annotations

import httpx
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.types import Receive, Scope, Send

from shared.tracing import recording
from shared.web import WhenRecording, create_app
from tests.support import no_lifespan


def test_the_app_stack_switches_the_tracing_middleware() -> None:
    stack = create_app(service="untraced", api_keys="", lifespan=no_lifespan).build_middleware_stack()
    switch = getattr(stack, "app", None)
    assert isinstance(switch, WhenRecording), "the instrumentation's stack changed shape: tracing is always on"
    assert isinstance(switch.traced, OpenTelemetryMiddleware)
    assert switch.plain is switch.traced.app  # the same middlewares and routes either way


async def test_requests_skip_the_tracing_middleware_unless_spans_are_recorded() -> None:
    web = create_app(service="untraced", api_keys="", lifespan=no_lifespan)
    web.middleware_stack = web.build_middleware_stack()
    switch = web.middleware_stack.app  # type: ignore[attr-defined]
    entered: list[str] = []
    plain = switch.plain

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        entered.append(scope["path"])
        await plain(scope, receive, send)

    switch.traced = traced
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://huifang.test") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/v1/nothing-here")).status_code == 404
    # Unit tests alone install no SDK; after the tracing tests in one session, spans are recorded.
    assert entered == (["/healthz", "/v1/nothing-here"] if recording() else [])
