"""The HTTP API as agents and supervisors meet it: auth, validation, health (idempotency: test_idempotency.py)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support import KEYS, Huifang, loan_event


def new_loan() -> str:
    return f"L-{uuid.uuid4().hex[:12]}"


async def due_callbacks(huifang: Huifang, roles: tuple[str, ...] = ("borrower",)) -> tuple[str, list[str]]:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=roles), key=loan)
    due = await huifang.tap.wait_events("callback.due", loan, count=len(roles))
    return loan, [e["data"]["callback_id"] for e in due]


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        ("scheduler", "GET", "/v1/callbacks"),
        ("scheduler", "GET", "/v1/policy"),
        ("outcomes", "POST", "/v1/callbacks/x/attempts"),
        ("outcomes", "GET", "/v1/loans/x/verification"),
        ("notifier", "GET", "/v1/escalations"),
    ],
)
async def test_protected_endpoints_need_a_known_key(huifang: Huifang, service: str, method: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=huifang.url(service)) as client:
        missing = await client.request(method, path, json={})
        wrong = await client.request(method, path, json={}, headers={"Authorization": "Bearer not-a-key"})
    assert missing.status_code == 401 and "detail" in missing.json()
    assert wrong.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"


async def test_roles_are_enforced(huifang: Huifang) -> None:
    async with huifang.client("scheduler", "agent") as agent:
        cancel = await agent.post("/v1/callbacks/x/cancel", json={"reason": "test"})
    async with huifang.client("notifier", "agent") as agent:
        escalations = await agent.get("/v1/escalations")
    async with huifang.client("notifier", "supervisor") as supervisor:
        allowed = await supervisor.get("/v1/escalations")
    async with huifang.client("scheduler", "admin") as admin:
        admin_cancel = await admin.post("/v1/callbacks/x/cancel", json={"reason": "test"})
    assert cancel.status_code == 403 and escalations.status_code == 403
    assert allowed.status_code == 200
    assert admin_cancel.status_code == 404  # admin passes the role check; the callback does not exist


async def test_attempt_validation_and_states(huifang: Huifang) -> None:
    _, [callback_id] = await due_callbacks(huifang)
    async with huifang.client("outcomes") as client:
        unknown = await client.post("/v1/callbacks/nope/attempts", json={"disposition": "completed"})
        no_reason = await client.post(f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "refused"})
        bad_item = await client.post(
            f"/v1/callbacks/{callback_id}/attempts",
            json={"disposition": "completed", "verification": {"shoe_size": True}},
        )
        past = await client.post(
            f"/v1/callbacks/{callback_id}/attempts",
            json={"disposition": "reschedule_requested", "reschedule_to": "2020-01-01T10:00:00+08:00"},
        )
        done = await client.post(f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "completed"})
        again = await client.post(f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "completed"})
        listed = await client.get(f"/v1/callbacks/{callback_id}/attempts")
    assert unknown.status_code == 404
    assert no_reason.status_code == 422 and "reason_code" in str(no_reason.json()["detail"])
    assert bad_item.status_code == 422 and "shoe_size" in bad_item.json()["detail"]
    assert past.status_code == 422 and "future" in str(past.json()["detail"])
    assert done.status_code == 201
    assert again.status_code == 409
    assert [a["disposition"] for a in listed.json()] == ["completed"]


async def test_health_readiness_metrics_and_docs(huifang: Huifang) -> None:
    for service in ("scheduler", "outcomes", "notifier"):
        async with httpx.AsyncClient(base_url=huifang.url(service)) as client:
            assert (await client.get("/healthz")).json()["status"] == "ok"
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert "huifang_consumer_up" in (await client.get("/metrics")).text
            assert (await client.get("/docs")).status_code == 200


async def test_policy_in_force_is_shown(huifang: Huifang) -> None:
    async with huifang.client("scheduler") as client:
        policy = (await client.get("/v1/policy")).json()
    assert policy["notice"]["lead"] == "PT1S"
    assert policy["stages"]["final_check"] == ["borrower", "co_borrower", "guarantor"]
    assert KEYS["agent"] not in str(policy)


LONG_ID = "X" * 65


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("scheduler", "/v1/callbacks"),
        ("notifier", "/v1/notifications"),
        ("notifier", "/v1/escalations"),
    ],
)
@pytest.mark.parametrize(
    "query",
    [
        {"cursor": "03722435961991048070835705784"},  # schemathesis found this one answering 500
        {"cursor": "-1"},
        {"cursor": "abc"},
        {"limit": "0"},
        {"limit": "501"},
        {"loan_id": LONG_ID},
        {"loan_id": "L 1"},
    ],
)
async def test_bad_paging_or_ids_are_422_never_500(
    huifang: Huifang, service: str, path: str, query: dict[str, str]
) -> None:
    async with huifang.client(service, "supervisor") as client:
        answer = await client.get(path, params=query)
    assert answer.status_code == 422, answer.text
    assert {tuple(e["loc"]) for e in answer.json()["detail"]} == {("query", next(iter(query)))}


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        ("scheduler", "GET", f"/v1/callbacks/{LONG_ID}"),
        ("scheduler", "POST", f"/v1/callbacks/{LONG_ID}/cancel"),
        ("outcomes", "POST", f"/v1/callbacks/{LONG_ID}/attempts"),
        ("outcomes", "GET", f"/v1/callbacks/{LONG_ID}/attempts"),
        ("outcomes", "GET", f"/v1/loans/{LONG_ID}/verification"),
        ("notifier", "POST", f"/v1/escalations/{LONG_ID}/ack"),
        ("notifier", "POST", f"/v1/escalations/{LONG_ID}/resolve"),
    ],
)
async def test_an_overlong_path_id_is_422(huifang: Huifang, service: str, method: str, path: str) -> None:
    async with huifang.client(service, "admin") as client:
        answer = await client.request(method, path, json={})
    assert answer.status_code == 422, answer.text
    assert any(e["loc"][0] == "path" for e in answer.json()["detail"])


async def test_paging_walks_every_callback_of_a_loan_once(huifang: Huifang) -> None:
    loan, ids = await due_callbacks(huifang, roles=("borrower", "co_borrower", "guarantor"))
    seen: list[str] = []
    cursor: str | None = None
    async with huifang.client("scheduler") as client:
        while True:
            page = (
                await client.get(
                    "/v1/callbacks", params={"loan_id": loan, "limit": 2, **({"cursor": cursor} if cursor else {})}
                )
            ).json()
            seen += [c["callback_id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert sorted(seen) == sorted(ids) and len(seen) == 3
