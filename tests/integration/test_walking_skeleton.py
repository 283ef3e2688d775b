"""End to end, as a user would: a loan event in, callbacks out, attempts over HTTP, refusal to webhook."""

from __future__ import annotations

import uuid

from services.notifier.channels.webhook import verify
from tests.support import WEBHOOK_SECRET, Huifang, loan_event


def new_loan() -> str:
    return f"L-{uuid.uuid4().hex[:12]}"


async def test_loan_event_becomes_refusal_notification_and_escalation(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)

    scheduled = await huifang.tap.wait_events("callback.scheduled", loan, count=2)
    assert {e["data"]["role"] for e in scheduled} == {"borrower", "guarantor"}
    await huifang.tap.wait_events("callback.notice.requested", loan, count=2)
    due = await huifang.tap.wait_events("callback.due", loan, count=2)
    by_role = {e["data"]["role"]: e["data"] for e in due}
    assert by_role["borrower"]["phone"].startswith("+86")  # contact details go to whoever calls

    async with huifang.client("outcomes") as client:
        ok = await client.post(
            f"/v1/callbacks/{by_role['borrower']['callback_id']}/attempts",
            json={"disposition": "completed", "agent_id": "A-1", "verification": {"identity": True}},
        )
        assert ok.status_code == 201, ok.text
        refused = await client.post(
            f"/v1/callbacks/{by_role['guarantor']['callback_id']}/attempts",
            json={
                "disposition": "refused",
                "reason_code": "privacy_concern",
                "agent_id": "A-1",
                "notes": "担心个人信息泄露",
            },
        )
        assert refused.status_code == 201, refused.text

    [refusal] = await huifang.tap.wait_events("callback.refused", loan)
    assert refusal["data"]["reason_code"] == "privacy_concern"
    assert refusal["data"]["refusals_for_loan"] == 1
    assert "notes" not in refusal["data"] and "担心" not in str(refusal)

    [done] = await huifang.tap.wait_events("loan.verification.completed", loan)
    assert done["data"]["status"] == "refused"
    assert {p["role"]: p["disposition"] for p in done["data"]["parties"]} == {
        "borrower": "completed",
        "guarantor": "refused",
    }

    [raised] = await huifang.tap.wait_events("escalation.raised", loan)
    assert raised["data"]["level"] == 1 and raised["data"]["rule"] == "reason:privacy_concern"
    await huifang.tap.wait_events("notification.sent", loan, count=2)

    deliveries = huifang.webhook_deliveries(loan)
    assert {body["type"] for _, body, _ in deliveries} >= {"callback.refused", "escalation.raised"}
    for headers, _, raw in deliveries:
        assert verify(
            WEBHOOK_SECRET,
            headers["X-Huifang-Id"],
            int(headers["X-Huifang-Timestamp"]),
            raw,
            headers["X-Huifang-Signature"],
        )
        assert not verify(
            WEBHOOK_SECRET,
            headers["X-Huifang-Id"],
            int(headers["X-Huifang-Timestamp"]),
            raw.replace(b"privacy_concern", b"time_conflict"),
            headers["X-Huifang-Signature"],
        )
        assert "李娜" not in raw.decode() and "+86" not in raw.decode()

    async with huifang.client("outcomes") as client:
        result = await client.get(f"/v1/loans/{loan}/verification")
    assert result.status_code == 200 and result.json()[0]["status"] == "refused"


async def test_no_answer_retries_then_expires_unreachable(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)
    [due] = await huifang.tap.wait_events("callback.due", loan)
    callback_id = due["data"]["callback_id"]
    async with huifang.client("outcomes") as client:
        first = await client.post(
            f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "no_answer", "agent_id": "A-2"}
        )
        assert first.status_code == 201
        [resched] = await huifang.tap.wait_events("callback.rescheduled", loan)
        assert resched["data"]["reason"] == "no_answer" and resched["data"]["attempt"] == 2
        await huifang.tap.wait_events("callback.due", loan, count=2)
        second = await client.post(
            f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "busy", "agent_id": "A-2"}
        )
        assert second.status_code == 201 and second.json()["attempt"] == 2
    [expired] = await huifang.tap.wait_events("callback.expired", loan)
    assert expired["data"]["reason"] == "attempts_exhausted"
    [done] = await huifang.tap.wait_events("loan.verification.completed", loan)
    assert done["data"]["status"] == "unreachable"


async def test_withdrawn_loan_cancels_open_callbacks(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    await huifang.tap.wait_events("callback.scheduled", loan, count=2)
    await huifang.publish_event("loan.stage.changed", loan_event(loan, stage="withdrawn"), key=loan)
    cancelled = await huifang.tap.wait_events("callback.cancelled", loan, count=2)
    assert {e["data"]["reason"] for e in cancelled} == {"loan_withdrawn"}
    [done] = await huifang.tap.wait_events("loan.verification.completed", loan)
    assert done["data"]["status"] == "cancelled"
    async with huifang.client("scheduler") as client:
        page = (await client.get("/v1/callbacks", params={"loan_id": loan})).json()
    assert {cb["state"] for cb in page["items"]} == {"cancelled"}
