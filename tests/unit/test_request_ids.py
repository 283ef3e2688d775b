"""Every request's id (X-Request-ID, given or made) in its logs and its answer, and its count in the metrics."""

from __future__ import annotations

import re

import httpx
import structlog
from fastapi import FastAPI

from shared.web import create_app
from tests.support import no_lifespan


def app() -> FastAPI:
    web = create_app(service="ids", api_keys="", lifespan=no_lifespan)

    @web.get("/v1/seen/{thing}")
    async def seen(thing: str) -> dict[str, str]:
        return {"thing": thing, "logged_as": structlog.contextvars.get_contextvars().get("request_id", "")}

    @web.get("/v1/broken")
    async def broken() -> None:
        raise RuntimeError("a bug in a handler")

    return web


def client(web: FastAPI) -> httpx.AsyncClient:
    # A handler's bug still answers 500 (ServerErrorMiddleware) instead of raising into the test.
    transport = httpx.ASGITransport(app=web, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://huifang.test")


def count(metrics: str, route: str, status: int) -> float:
    labels = f'method="GET",route="{route}",service="ids",status="{status}"'
    found = re.search(re.escape(f"huifang_http_requests_total{{{labels}}} ") + r"(\S+)", metrics)
    return float(found.group(1)) if found else 0.0


async def test_a_given_request_id_is_logged_and_answered() -> None:
    async with client(app()) as c:
        response = await c.get("/v1/seen/a", headers={"X-Request-ID": "trace-from-the-desk-42"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-from-the-desk-42"
    assert response.json()["logged_as"] == "trace-from-the-desk-42"
    assert "request_id" not in structlog.contextvars.get_contextvars()  # unbound after the request


async def test_without_one_each_request_gets_its_own() -> None:
    async with client(app()) as c:
        first, second = await c.get("/v1/seen/a"), await c.get("/v1/seen/b")
    ids = [r.headers["x-request-id"] for r in (first, second)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0] != ids[1]
    assert [r.json()["logged_as"] for r in (first, second)] == ids


async def test_requests_are_counted_by_route_template_and_status_a_bug_as_500() -> None:
    web = app()
    async with client(web) as c:
        before = (await c.get("/metrics")).text
        await c.get("/v1/seen/x")
        await c.get("/v1/seen/y")
        assert (await c.get("/v1/broken")).status_code == 500
        after = (await c.get("/metrics")).text
    assert count(after, "/v1/seen/{thing}", 200) - count(before, "/v1/seen/{thing}", 200) == 2
    assert count(after, "/v1/broken", 500) - count(before, "/v1/broken", 500) == 1
