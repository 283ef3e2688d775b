"""Limits on unauthenticated work (CONTRACT.md section 3) on the shared app factory, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from shared.limits import MAX_BODY_BYTES, FailedAuthLimit
from shared.web import AgentAuth, create_app
from tests.support import no_lifespan

KEY = "agent-key-for-limits"


def app() -> FastAPI:
    web = create_app(service="limits", api_keys=f"agent:agent-1:{KEY}", lifespan=no_lifespan)
    seen: list[int] = []
    web.state.seen = seen

    @web.post("/echo")
    async def echo(payload: dict[str, str], who: AgentAuth) -> dict[str, int]:
        seen.append(len(payload.get("x", "")))
        return {"len": len(payload.get("x", ""))}

    return web


def client(web: FastAPI, address: str = "198.51.100.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=web, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://huifang.test")


async def test_a_declared_body_over_64_kib_is_413_before_authentication() -> None:
    web = app()
    async with client(web) as c:
        big = await c.post("/echo", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
        small = await c.post("/echo", json={"x": "y" * 1000}, headers={"Authorization": f"Bearer {KEY}"})
    assert big.status_code == 413 and "bytes" in big.json()["detail"]
    assert small.status_code == 200 and web.state.seen == [1000]


async def test_a_streamed_body_over_64_kib_is_413_and_not_read_to_the_end() -> None:
    web = app()
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"x": "'
        for _ in range(64):  # 4 MiB if it were all read
            sent += 1
            yield b"y" * 65536
        yield b'"}'

    async with client(web) as c:
        response = await c.post("/echo", content=chunks(), headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 413
    assert sent < 4 and web.state.seen == []


async def test_ten_failed_keys_from_one_address_get_429_with_retry_after() -> None:
    web = app()
    wrong = {"Authorization": "Bearer wrong"}
    right = {"Authorization": f"Bearer {KEY}"}
    async with client(web, "203.0.113.5") as attacker, client(web, "203.0.113.6") as bystander:
        failures = [(await attacker.post("/echo", json={}, headers=wrong)).status_code for _ in range(10)]
        locked = await attacker.post("/echo", json={}, headers=right)
        health = await attacker.get("/healthz")
        other = await bystander.post("/echo", json={}, headers=right)
    assert failures == [401] * 10
    assert locked.status_code == 429 and 50 <= int(locked.headers["retry-after"]) <= 60
    assert health.status_code == 200
    assert other.status_code == 200


def test_the_lockout_lasts_a_minute_and_counts_only_failures_within_one() -> None:
    now = [1000.0]
    limit = FailedAuthLimit(app=no_lifespan, failures=10, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(9):
        limit.record_failure("a")
    now[0] += 61  # those nine are older than a minute now
    limit.record_failure("a")
    assert limit.retry_after("a") == 0
    for _ in range(9):
        limit.record_failure("a")
    assert limit.retry_after("a") == 60
    now[0] += 30
    assert limit.retry_after("a") == 30
    now[0] += 31
    assert limit.retry_after("a") == 0


async def test_unknown_methods_are_counted_as_other() -> None:
    web = app()
    async with client(web) as c:
        await c.request("BREWCOFFEE", "/healthz")
        metrics = (await c.get("/metrics")).text
    lines = [line for line in metrics.splitlines() if line.startswith("huifang_http_requests_total{")]
    assert any('method="OTHER"' in line and 'service="limits"' in line for line in lines)
    assert "BREWCOFFEE" not in metrics
