"""The scheduler's callback policy end to end: consent, outcomes, caps, expiry, cancel, listing, restarts."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from services.scheduler.models import Timer
from shared.db import Database
from tests.support import Huifang, loan_event, wait_for

SH = ZoneInfo("Asia/Shanghai")


def new_loan() -> str:
    return f"L-{uuid.uuid4().hex[:12]}"


def scheduler_db(huifang: Huifang) -> Database:
    server, _, _ = huifang.servers["scheduler"]
    db: Database = server.config.app.state.runtime.db  # type: ignore[attr-defined]
    return db


async def record(huifang: Huifang, callback_id: str, disposition: str, **extra: Any) -> dict[str, Any]:
    async with huifang.client("outcomes") as client:
        response = await client.post(
            f"/v1/callbacks/{callback_id}/attempts", json={"disposition": disposition, **extra}
        )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def show(huifang: Huifang, callback_id: str) -> dict[str, Any]:
    async with huifang.client("scheduler") as client:
        response = await client.get(f"/v1/callbacks/{callback_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_no_consent_goes_to_the_questionnaire_and_expires_at_the_deadline(huifang: Huifang) -> None:
    loan = new_loan()
    event = loan_event(loan, roles=("borrower", "guarantor"))
    event["parties"][1]["contact_consent"] = False
    await huifang.publish_event("loan.stage.changed", event, key=loan)
    scheduled = {e["data"]["role"]: e["data"] for e in await huifang.tap.wait_events("callback.scheduled", loan, 2)}
    assert scheduled["guarantor"]["channel"] == "questionnaire" and scheduled["guarantor"]["flags"] == ["no_consent"]
    assert scheduled["borrower"]["channel"] == "phone" and scheduled["borrower"]["flags"] == []
    # Both callbacks' timers would have fired in the same pass: only the consenting party is phoned.
    [due] = await huifang.tap.wait_events("callback.due", loan)
    assert due["data"]["role"] == "borrower"
    assert [e["data"]["role"] for e in huifang.tap.events("callback.notice.requested", loan)] == ["borrower"]

    guarantor = scheduled["guarantor"]["callback_id"]
    async with scheduler_db(huifang).uow() as uow:  # bring the deadline to now rather than wait five days
        await uow.session.execute(
            sa.update(Timer)
            .where(Timer.callback_id == guarantor, Timer.kind == "deadline")  # type: ignore[arg-type]
            .values(fire_at=datetime.now(UTC))
        )
        await uow.commit()
    [expired] = await huifang.tap.wait_events("callback.expired", loan)
    assert expired["data"]["callback_id"] == guarantor and expired["data"]["reason"] == "deadline"
    shown = await show(huifang, guarantor)
    assert shown["state"] == "expired" and shown["flags"] == ["no_consent"]
    assert [line["type"] for line in shown["timeline"]] == ["callback.scheduled", "callback.expired"]


async def test_wrong_number_closes_and_flags(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)
    [due] = await huifang.tap.wait_events("callback.due", loan)
    callback_id = due["data"]["callback_id"]
    await record(huifang, callback_id, "wrong_number")
    await huifang.tap.wait_events("loan.verification.completed", loan)

    # The scheduler applies the outcome from the topic, beside outcomes' own verification event.
    async def closed() -> dict[str, Any] | None:
        shown = await show(huifang, callback_id)
        return shown if shown["state"] != "due" else None

    shown = await wait_for(closed, 30, "the scheduler to apply the outcome")
    assert shown["state"] == "wrong_number" and shown["flags"] == ["wrong_number"]
    assert shown["timeline"][-1]["type"] == "callback.outcome.recorded"
    assert shown["timeline"][-1]["detail"]["disposition"] == "wrong_number"


async def test_reschedule_requested_moves_the_call_without_using_an_attempt(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)
    [due] = await huifang.tap.wait_events("callback.due", loan)
    callback_id = due["data"]["callback_id"]
    wanted = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    await record(huifang, callback_id, "reschedule_requested", reschedule_to=wanted.isoformat())
    [moved] = await huifang.tap.wait_events("callback.rescheduled", loan)
    assert moved["data"]["reason"] == "party_requested" and moved["data"]["attempt"] == 1
    assert at(moved["data"]["due_at"]) == wanted
    second = (await huifang.tap.wait_events("callback.due", loan, count=2))[1]
    assert at(second["time"]) >= wanted, "due before the time the party asked for"
    shown = await show(huifang, callback_id)
    assert shown["calls_made"] == 0 and shown["attempt"] == 1


async def test_daily_cap_counts_a_person_across_loans_by_phone(huifang: Huifang) -> None:
    first, second = new_loan(), new_loan()
    borrower = loan_event(first, roles=("borrower",))
    guarantor = loan_event(second, roles=("guarantor",))
    guarantor["parties"][0]["phone"] = borrower["parties"][0]["phone"]  # same person, other party id
    await huifang.publish_event("loan.stage.changed", borrower, key=first)
    await huifang.publish_event("loan.stage.changed", guarantor, key=second)
    [due] = await huifang.tap.wait_events("callback.due", first)
    await huifang.tap.wait_events("callback.due", second)
    today = datetime.now(SH).date()
    await record(huifang, due["data"]["callback_id"], "no_answer")
    [moved] = await huifang.tap.wait_events("callback.rescheduled", first)
    # One call made today and one booked on the other loan: the cap of two is reached, so tomorrow.
    assert at(moved["data"]["due_at"]).astimezone(SH).date() > today
    assert moved["data"]["attempt"] == 2


async def test_supervisor_cancel_is_on_the_timeline(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)
    [scheduled] = await huifang.tap.wait_events("callback.scheduled", loan)
    callback_id = scheduled["data"]["callback_id"]
    async with huifang.client("scheduler", "supervisor") as client:
        first = await client.post(f"/v1/callbacks/{callback_id}/cancel", json={"reason": "duplicate"})
        again = await client.post(f"/v1/callbacks/{callback_id}/cancel", json={"reason": "duplicate"})
        empty = await client.post(f"/v1/callbacks/{callback_id}/cancel", json={"reason": ""})
    assert first.status_code == 200 and first.json()["state"] == "cancelled"
    assert again.status_code == 409 and empty.status_code == 422  # keyed repeats: test_idempotency.py
    [cancelled] = await huifang.tap.wait_events("callback.cancelled", loan)
    assert cancelled["data"]["reason"] == "operator"
    assert "duplicate" not in json.dumps(cancelled)  # the supervisor's free text stays off the topic
    timeline = (await show(huifang, callback_id))["timeline"]
    assert [line["type"] for line in timeline][-1] == "callback.cancelled"
    assert "张" not in str(timeline) and "+86" not in str(timeline)


async def test_listing_filters_and_pages(huifang: Huifang) -> None:
    loan = new_loan()
    event = loan_event(loan, roles=("borrower", "co_borrower", "guarantor"))
    await huifang.publish_event("loan.stage.changed", event, key=loan)
    await huifang.tap.wait_events("callback.scheduled", loan, count=3)
    async with huifang.client("scheduler") as client:
        pages, cursor = [], None
        while True:
            params = {"loan_id": loan, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/callbacks", params=params)).json()
            pages.append([cb["role"] for cb in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        guarantors = (await client.get("/v1/callbacks", params={"loan_id": loan, "role": "guarantor"})).json()
        bad_state = await client.get("/v1/callbacks", params={"state": "sleeping"})
        bad_cursor = await client.get("/v1/callbacks", params={"cursor": "abc"})
        missing = await client.get("/v1/callbacks/nope")
    assert [len(p) for p in pages] == [2, 1]
    assert sorted(role for page in pages for role in page) == ["borrower", "co_borrower", "guarantor"]
    assert [cb["role"] for cb in guarantors["items"]] == ["guarantor"]
    assert bad_state.status_code == bad_cursor.status_code == 422 and missing.status_code == 404


async def test_due_timer_survives_a_restart_and_never_fires_early(huifang: Huifang) -> None:
    loan = new_loan()
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)
    [due] = await huifang.tap.wait_events("callback.due", loan)
    wanted = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
    await record(huifang, due["data"]["callback_id"], "reschedule_requested", reschedule_to=wanted.isoformat())
    await huifang.tap.wait_events("callback.rescheduled", loan)
    await huifang.stop_service("scheduler")
    assert datetime.now(UTC) < wanted, "the scheduler stopped only after the due time; the test proves nothing"
    await huifang.start_service("scheduler")
    second = (await huifang.tap.wait_events("callback.due", loan, count=2))[1]
    assert at(second["time"]) >= wanted
    assert len(huifang.tap.events("callback.due", loan)) == 2
