"""Security over the running services: agents are who their key says, logout revokes, limits on every door."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlmodel import select

from services.outcomes.models import Attempt
from tests.outcomes_support import due_callbacks, outcomes_db
from tests.support import KEYS, PRINCIPALS, Huifang


def address() -> str:
    """A client address of its own (uvicorn trusts X-Forwarded-For from 127.0.0.1), so lockouts stay apart."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


def from_address(huifang: Huifang, service: str, role: str | None, where: str) -> httpx.AsyncClient:
    headers = {"X-Forwarded-For": where}
    if role:
        headers["Authorization"] = f"Bearer {KEYS[role]}"
    return httpx.AsyncClient(base_url=huifang.url(service), headers=headers, timeout=10)


async def attempts(huifang: Huifang, callback_id: str) -> list[dict[str, Any]]:
    async with huifang.client("outcomes") as client:
        response = await client.get(f"/v1/callbacks/{callback_id}/attempts")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def test_an_agent_records_under_their_own_principal(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    async with huifang.client("outcomes", "agent") as agent:
        response = await agent.post(f"/v1/callbacks/{callbacks['borrower']}/attempts", json={"disposition": "busy"})
    assert response.status_code == 201, response.text
    assert response.json()["agent_id"] == PRINCIPALS["agent"]
    assert response.json()["recorded_by"] == PRINCIPALS["agent"]
    recorded = await huifang.tap.wait_events("callback.outcome.recorded", loan)
    assert recorded[0]["data"]["agent_id"] == PRINCIPALS["agent"]


async def test_an_agent_cannot_record_as_another_agent(huifang: Huifang) -> None:
    _, callbacks = await due_callbacks(huifang)
    callback_id = callbacks["borrower"]
    async with huifang.client("outcomes", "agent") as agent:
        forged = await agent.post(
            f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "completed", "agent_id": "agent-2"}
        )
        own = await agent.post(
            f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "no_answer", "agent_id": PRINCIPALS["agent"]}
        )
    assert forged.status_code == 403 and "own agent_id" in forged.json()["detail"]
    assert own.status_code == 201, own.text
    assert [a["disposition"] for a in await attempts(huifang, callback_id)] == ["no_answer"]


async def test_a_supervisor_records_for_a_named_agent_and_is_kept_as_recorder(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    callback_id = callbacks["borrower"]
    async with huifang.client("outcomes", "supervisor") as supervisor:
        response = await supervisor.post(
            f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "completed", "agent_id": "agent-9"}
        )
    assert response.status_code == 201, response.text
    shown = await attempts(huifang, callback_id)
    assert [(a["agent_id"], a["recorded_by"]) for a in shown] == [("agent-9", PRINCIPALS["supervisor"])]
    async with outcomes_db(huifang).uow() as uow:
        row = (await uow.session.execute(select(Attempt).where(Attempt.callback_id == callback_id))).scalar_one()
    assert (row.agent_id, row.recorded_by) == ("agent-9", PRINCIPALS["supervisor"])
    refused = await huifang.tap.wait_events("callback.outcome.recorded", loan)
    assert refused[0]["data"]["agent_id"] == "agent-9"


async def test_logging_out_revokes_the_session_on_the_server(huifang: Huifang) -> None:
    async with httpx.AsyncClient(base_url=huifang.url("outcomes"), timeout=10) as browser:
        login = await browser.post("/dashboard/login", data={"key": KEYS["supervisor"]})
        assert login.status_code == 303
        stolen = browser.cookies["huifang_session"]
        assert (await browser.get("/dashboard")).status_code == 200
        assert (await browser.post("/dashboard/logout")).status_code == 303
    async with httpx.AsyncClient(base_url=huifang.url("outcomes"), timeout=10) as replay:
        replay.cookies.set("huifang_session", stolen, path="/dashboard")
        after = await replay.get("/dashboard")
    assert after.status_code == 303 and after.headers["location"].startswith("/dashboard/login")


async def test_bodies_over_64_kib_are_413_on_every_service_before_authentication(huifang: Huifang) -> None:
    big = b"{" + b" " * (64 * 1024) + b"}"

    async def streamed() -> AsyncIterator[bytes]:
        for _ in range(40):  # 2.5 MiB if it were all read; never announced in Content-Length
            yield b" " * 65536

    for service, path in (
        ("scheduler", "/v1/callbacks/CB-1/cancel"),
        ("outcomes", "/v1/callbacks/CB-1/attempts"),
        ("notifier", "/v1/escalations/E-1/ack"),
    ):
        async with from_address(huifang, service, None, address()) as client:
            declared = await client.post(path, content=big, headers={"content-type": "application/json"})
            chunked = await client.post(path, content=streamed(), headers={"content-type": "application/json"})
        assert declared.status_code == 413, (service, declared.text)
        assert chunked.status_code == 413, (service, chunked.text)
    async with from_address(huifang, "outcomes", None, address()) as browser:
        login = await browser.post("/dashboard/login", content=b"key=" + b"k" * (64 * 1024))
    assert login.status_code == 413


async def test_ten_failed_authentications_lock_the_address_out_for_a_minute(huifang: Huifang) -> None:
    attacker = address()
    async with (
        from_address(huifang, "outcomes", None, attacker) as guesser,
        from_address(huifang, "outcomes", "supervisor", attacker) as same_address,
        from_address(huifang, "outcomes", "supervisor", address()) as elsewhere,
    ):
        failed = [(await guesser.post("/dashboard/login", data={"key": f"guess-{i}"})).status_code for i in range(5)]
        failed += [
            (await guesser.get("/v1/stats/refusals", headers={"Authorization": f"Bearer guess-{i}"})).status_code
            for i in range(5)
        ]
        locked = await same_address.get("/v1/stats/refusals")
        login = await guesser.post("/dashboard/login", data={"key": KEYS["supervisor"]})
        other = await elsewhere.get("/v1/stats/refusals")
    assert failed == [401] * 10
    assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 60
    assert login.status_code == 429
    assert other.status_code == 200
