"""End to end, as a user would: a loan event in, callbacks out, attempts over HTTP, refusal to webhook."""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

from cli.demo import post_attempt
from services.notifier.channels.webhook import verify
from shared import labels
from tests.support import WEBHOOK_SECRET, Huifang, loan_event, wait_for


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
            json={"disposition": "completed", "verification": {"identity": True}},
        )
        assert ok.status_code == 201, ok.text
        refused = await client.post(
            f"/v1/callbacks/{by_role['guarantor']['callback_id']}/attempts",
            json={
                "disposition": "refused",
                "reason_code": "privacy_concern",
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
    deliveries = await wait_for(
        lambda: (
            (d := huifang.webhook_deliveries(loan))
            and {body["type"] for _, body, _ in d} >= {"callback.refused", "escalation.raised"}
            and d
        ),
        what="the officer's refusal and escalation webhooks",
    )
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


async def test_notice_event_carries_data_and_the_party_reads_the_notifier_sms(huifang: Huifang) -> None:
    loan = new_loan()
    event = loan_event(loan, roles=("borrower",))
    phone = event["parties"][0]["phone"]
    await huifang.publish_event("loan.stage.changed", event, key=loan)

    [notice] = await huifang.tap.wait_events("callback.notice.requested", loan)
    data = notice["data"]
    assert "message" not in data  # events carry data; notice.j2 writes the text
    assert data["purpose"] == labels.PURPOSES["final_check"]["zh-CN"]
    assert data["topics"] == [labels.VERIFICATION_ITEM_NAMES[item]["zh-CN"] for item in labels.VERIFICATION_ITEMS]
    local = datetime.fromisoformat(data["due_at"]).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    [sms] = await wait_for(
        lambda: [m for m in huifang.sms_sent(phone) if data["purpose"] in str(m.get("text"))],
        what="the notice SMS naming the purpose",
    )
    assert local in sms["text"] and sms["text"].startswith("张伟您好")


async def test_no_answer_retries_then_expires_unreachable(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)
    [due] = await huifang.tap.wait_events("callback.due", loan)
    callback_id = due["data"]["callback_id"]
    async with huifang.client("outcomes") as client:
        first = await client.post(f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "no_answer"})
        assert first.status_code == 201
        [resched] = await huifang.tap.wait_events("callback.rescheduled", loan)
        assert resched["data"]["reason"] == "no_answer" and resched["data"]["attempt"] == 2
        await huifang.tap.wait_events("callback.due", loan, count=2)
        second = await client.post(f"/v1/callbacks/{callback_id}/attempts", json={"disposition": "busy"})
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


async def test_party_without_consent_gets_the_questionnaire_and_is_never_phoned(huifang: Huifang) -> None:
    loan = new_loan()
    event = loan_event(loan, roles=("borrower",), consent=False)
    phone = event["parties"][0]["phone"]
    await huifang.publish_event("loan.stage.changed", event, key=loan)

    [scheduled] = await huifang.tap.wait_events("callback.scheduled", loan)
    assert scheduled["data"]["channel"] == "questionnaire" and "no_consent" in scheduled["data"]["flags"]
    callback_id = scheduled["data"]["callback_id"]

    def questionnaire_sms() -> list[dict[str, object]]:
        return [m for m in huifang.sms_sent(phone) if callback_id in str(m.get("text"))]

    await wait_for(questionnaire_sms, what="the questionnaire link by SMS")
    officer = await wait_for(
        lambda: [b for _, b, _ in huifang.webhook_deliveries(loan) if b.get("type") == "callback.scheduled"],
        what="the officer told that the party gets a questionnaire",
    )
    assert officer[0]["callback_id"] == callback_id and callback_id in officer[0]["url"]
    # Never phoned: no notice and no due call for this party, even though the test policy's lead is 1 s.
    await huifang.tap.wait_events("notification.sent", loan, count=2)
    assert huifang.tap.events("callback.due", loan) == []
    assert huifang.tap.events("callback.notice.requested", loan) == []


async def complete_all(huifang: Huifang, scheduled: list[dict[str, object]]) -> None:
    async with huifang.client("outcomes") as client:
        for event in scheduled:
            data = event["data"]
            assert isinstance(data, dict)
            # As a desk does (CONTRACT 3): outcomes may not have read callback.scheduled yet, and says so.
            done = await post_attempt(
                http=client, callback_id=str(data["callback_id"]), body={"disposition": "completed"}
            )
            assert done.status_code == 201, done.text


async def test_repeated_stage_calls_nobody_again_but_a_return_to_it_is_verified_anew(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    first = await huifang.tap.wait_events("callback.scheduled", loan, count=2)
    await complete_all(huifang, first)
    await huifang.tap.wait_events("loan.verification.completed", loan)

    async def closed_by_scheduler() -> bool:
        async with huifang.client("scheduler") as client:
            items = (await client.get("/v1/callbacks", params={"loan_id": loan})).json()["items"]
        return {cb["state"] for cb in items} == {"completed"}

    await wait_for(closed_by_scheduler, what="the scheduler to close the first round")

    # Upstream re-sends final_check (a new event id): the loan is already there, nobody is called again.
    handled = await huifang.consumed("scheduler", "loan.stage.v1")
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)

    async def repeat_handled() -> bool:
        return await huifang.consumed("scheduler", "loan.stage.v1") > handled

    await wait_for(repeat_handled, what="the scheduler to handle the repeated stage")
    async with huifang.client("scheduler") as client:
        assert len((await client.get("/v1/callbacks", params={"loan_id": loan})).json()["items"]) == 2
    # The loan goes back a stage and returns: that is a new verification.
    await huifang.publish_event("loan.stage.changed", loan_event(loan, stage="initial_review_passed"), key=loan)
    await huifang.publish_event("loan.stage.changed", loan_event(loan), key=loan)
    second = (await huifang.tap.wait_events("callback.scheduled", loan, count=4))[2:]
    async with huifang.client("scheduler") as client:
        page = (await client.get("/v1/callbacks", params={"loan_id": loan})).json()
    assert len(page["items"]) == 4  # the repeat opened nothing (its events come before the return's)

    await complete_all(huifang, second)
    results = await huifang.tap.wait_events("loan.verification.completed", loan, count=2)
    assert [r["data"]["status"] for r in results] == ["verified", "verified"]
    async with huifang.client("outcomes") as client:
        shown = (await client.get(f"/v1/loans/{loan}/verification")).json()
    assert {p["callback_id"] for p in shown[0]["parties"]} == {e["data"]["callback_id"] for e in second}
