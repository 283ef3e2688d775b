"""Outcomes' agent API beyond the basics: concurrent keyed duplicates, notes at rest, verification, escalations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlmodel import select

from services.outcomes.models import Attempt, EscalationView
from tests.outcomes_support import due_callbacks, new_id, outcomes_db
from tests.support import Huifang


async def attempts_of(huifang: Huifang, callback_id: str) -> list[dict[str, Any]]:
    async with huifang.client("outcomes") as client:
        response = await client.get(f"/v1/callbacks/{callback_id}/attempts")
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()
    return result


async def test_concurrent_duplicates_have_exactly_one_effect(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    callback_id, key = callbacks["borrower"], new_id("K")
    body = {"disposition": "completed", "verification": {"identity": True}}
    async with huifang.client("outcomes") as client:
        responses = await asyncio.gather(
            *(
                client.post(f"/v1/callbacks/{callback_id}/attempts", json=body, headers={"Idempotency-Key": key})
                for _ in range(6)
            )
        )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses
    assert len({r.text for r in responses if r.status_code == 201}) == 1  # every 201 is the first result
    assert len(await attempts_of(huifang, callback_id)) == 1
    await huifang.tap.wait_events("loan.verification.completed", loan)
    assert len(huifang.tap.events("callback.outcome.recorded", loan)) == 1


async def test_a_rejected_request_gives_its_key_back(huifang: Huifang) -> None:
    _, callbacks = await due_callbacks(huifang)
    callback_id, key = callbacks["borrower"], new_id("K")
    headers = {"Idempotency-Key": key}
    async with huifang.client("outcomes") as client:
        wrong = await client.post(
            f"/v1/callbacks/{callback_id}/attempts",
            json={"disposition": "completed", "verification": {"shoe_size": True}},
            headers=headers,
        )
        fixed = await client.post(
            f"/v1/callbacks/{callback_id}/attempts",
            json={"disposition": "completed", "verification": {"identity": True}},
            headers=headers,
        )
    assert wrong.status_code == 422 and fixed.status_code == 201, (wrong.text, fixed.text)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"disposition": "completed", "reason_code": "distrust"}, "reason_code"),
        ({"disposition": "refused", "reason_code": "rude"}, "reason_code"),
        ({"disposition": "no_answer", "reschedule_to": "2099-01-01T10:00:00+08:00"}, "reschedule_to"),
        ({"disposition": "reschedule_requested", "reschedule_to": "2099-01-01T10:00:00"}, "timezone"),
        ({"disposition": "completed", "phone": "+8613800138000"}, "phone"),
        ({"disposition": "maybe"}, "disposition"),
        ({"disposition": "completed", "duration_s": -5}, "duration_s"),
    ],
)
async def test_invalid_bodies_are_422_and_record_nothing(huifang: Huifang, body: dict[str, Any], says: str) -> None:
    async with huifang.client("outcomes") as client:
        response = await client.post("/v1/callbacks/any/attempts", json=body)
    assert response.status_code == 422
    assert says in str(response.json()["detail"])
    assert "+8613800138000" not in response.text  # inputs are not echoed back


async def test_notes_are_encrypted_at_rest_and_never_emitted(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    notes = "担心个人信息泄露 memo-7731"
    async with huifang.client("outcomes") as client:
        response = await client.post(
            f"/v1/callbacks/{callbacks['borrower']}/attempts",
            json={"disposition": "refused", "reason_code": "privacy_concern", "notes": notes},
        )
    assert response.status_code == 201 and "notes" not in response.json()
    async with outcomes_db(huifang).uow() as uow:
        row = (await uow.session.execute(select(Attempt).where(Attempt.loan_id == loan))).scalar_one()
    assert row.notes_enc and "memo-7731" not in row.notes_enc
    cipher = huifang.servers["outcomes"][0].config.app.state.runtime.cipher  # type: ignore[attr-defined]
    assert cipher.decrypt(row.notes_enc) == notes
    await huifang.tap.wait_events("loan.verification.completed", loan)
    emitted = [r.value.decode() for r in huifang.tap.records if r.key == loan and r.topic != "loan.stage.v1"]
    assert emitted and not any("memo-7731" in v or "担心" in v for v in emitted)


async def test_verification_is_pending_until_every_party_is_closed_then_verified(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang, roles=("borrower", "guarantor"))
    async with huifang.client("outcomes") as client:
        await client.post(f"/v1/callbacks/{callbacks['borrower']}/attempts", json={"disposition": "completed"})
        pending = (await client.get(f"/v1/loans/{loan}/verification")).json()
        await client.post(f"/v1/callbacks/{callbacks['guarantor']}/attempts", json={"disposition": "completed"})
        [done] = await huifang.tap.wait_events("loan.verification.completed", loan)
        verified = (await client.get(f"/v1/loans/{loan}/verification")).json()
        unknown = await client.get(f"/v1/loans/{new_id('L')}/verification")
    assert [(v["stage"], v["status"], v["completed_at"]) for v in pending] == [("final_check", "pending", None)]
    assert {p["role"]: p["disposition"] for p in pending[0]["parties"]} == {"borrower": "completed", "guarantor": None}
    assert done["data"]["status"] == "verified"
    assert verified[0]["status"] == "verified" and verified[0]["completed_at"] is not None
    assert unknown.status_code == 404


async def test_a_wrong_number_makes_the_loan_unreachable(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang, roles=("borrower", "co_borrower"))
    async with huifang.client("outcomes") as client:
        await client.post(f"/v1/callbacks/{callbacks['borrower']}/attempts", json={"disposition": "completed"})
        await client.post(f"/v1/callbacks/{callbacks['co_borrower']}/attempts", json={"disposition": "wrong_number"})
    [done] = await huifang.tap.wait_events("loan.verification.completed", loan)
    assert done["data"]["status"] == "unreachable"


async def test_parties_closed_at_the_same_moment_complete_the_loan_once(huifang: Huifang) -> None:
    roles = ("borrower", "co_borrower", "guarantor")
    loan, callbacks = await due_callbacks(huifang, roles=roles)
    async with huifang.client("outcomes") as client:
        responses = await asyncio.gather(
            *(client.post(f"/v1/callbacks/{callbacks[r]}/attempts", json={"disposition": "completed"}) for r in roles)
        )
    assert [r.status_code for r in responses] == [201, 201, 201]
    [done] = await huifang.tap.wait_events("loan.verification.completed", loan)
    assert done["data"]["status"] == "verified" and len(done["data"]["parties"]) == 3


async def test_escalations_from_the_notifier_are_kept_for_the_dashboard(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    async with huifang.client("outcomes") as client:
        await client.post(
            f"/v1/callbacks/{callbacks['borrower']}/attempts",
            json={"disposition": "refused", "reason_code": "suspected_fraud"},
        )
    [raised] = await huifang.tap.wait_events("escalation.raised", loan)
    escalation_id = raised["data"]["escalation_id"]

    async def state() -> str | None:
        async with outcomes_db(huifang).uow() as uow:
            view = await uow.session.get(EscalationView, escalation_id)
            return view.state if view else None

    await wait_state(state, "open")
    async with huifang.client("notifier", "supervisor") as notifier:
        assert (await notifier.post(f"/v1/escalations/{escalation_id}/ack", json={"note": "on it"})).status_code == 200
        await wait_state(state, "acknowledged")
        assert (await notifier.post(f"/v1/escalations/{escalation_id}/resolve", json={"note": "ok"})).status_code == 200
    await wait_state(state, "resolved")


async def wait_state(read: Any, expected: str) -> None:
    from tests.support import wait_for

    async def reached() -> bool:
        return bool(await read() == expected)

    await wait_for(reached, 30.0, f"escalation state {expected}")
