"""The attempt an agent dialled is the attempt recorded; what outcomes has not heard of yet says "ask again"."""

from __future__ import annotations

from typing import Any

import httpx

from services.outcomes.models import CallbackView
from tests.outcomes_support import due_callbacks, new_id, outcomes_db
from tests.support import Huifang, wait_for


async def post(client: httpx.AsyncClient, callback_id: str, body: dict[str, Any], key: str) -> httpx.Response:
    return await client.post(f"/v1/callbacks/{callback_id}/attempts", json=body, headers={"Idempotency-Key": key})


async def test_an_unknown_callback_is_404_with_retry_after(huifang: Huifang) -> None:
    async with huifang.client("outcomes") as client:
        response = await post(client, new_id("CB"), {"disposition": "busy"}, new_id("K"))
    assert response.status_code == 404, response.text
    assert response.headers["Retry-After"] == "2"


async def test_an_attempt_ahead_of_outcomes_is_409_with_retry_after_and_records_nothing(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    callback_id = callbacks["borrower"]
    async with huifang.client("outcomes") as client:
        ahead = await post(client, callback_id, {"disposition": "busy", "attempt": 5}, new_id("K"))
        listed = await client.get(f"/v1/callbacks/{callback_id}/attempts")
    assert ahead.status_code == 409, ahead.text
    assert ahead.headers["Retry-After"] == "2"
    assert listed.json() == []
    assert huifang.tap.events("callback.outcome.recorded", loan) == []


async def test_the_second_call_is_recorded_and_published_as_attempt_2(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    callback_id = callbacks["borrower"]
    async with huifang.client("outcomes") as client:
        first = await post(
            client, callback_id, {"disposition": "no_answer", "attempt": 1}, "K1-" + loan
        )
        assert first.status_code == 201, first.text
        second_key = new_id("K")
        second = {"disposition": "refused", "reason_code": "time_conflict", "attempt": 2}

        async def dialled() -> httpx.Response | None:
            # What a desk does: a 409 with Retry-After means outcomes has not heard of attempt 2 yet.
            response = await post(client, callback_id, second, second_key)
            return None if response.status_code == 409 and "Retry-After" in response.headers else response

        answer: httpx.Response = await wait_for(dialled, 60, "outcomes to learn of attempt 2")
    assert answer.status_code == 201, answer.text
    assert answer.json()["attempt"] == 2
    refused = await huifang.tap.wait_events("callback.refused", loan)
    assert [e["data"]["attempt"] for e in refused] == [2]
    recorded = await huifang.tap.wait_events("callback.outcome.recorded", loan, count=2)
    assert sorted(e["data"]["attempt"] for e in recorded) == [1, 2]


async def test_a_late_result_for_an_earlier_attempt_keeps_that_attempts_number(huifang: Huifang) -> None:
    loan, callbacks = await due_callbacks(huifang)
    callback_id = callbacks["borrower"]
    async with huifang.client("outcomes") as client:
        first = await post(client, callback_id, {"disposition": "busy", "attempt": 1}, new_id("K"))
        assert first.status_code == 201, first.text
        await wait_for(lambda: known_attempt(huifang, callback_id, at_least=2), 60, "outcomes to learn of attempt 2")
        # Outcomes now numbers the callback's attempt 2; a result the agent sends for attempt 1 stays attempt 1.
        late = {"disposition": "refused", "reason_code": "time_conflict", "attempt": 1}
        answer = await post(client, callback_id, late, new_id("K"))
    assert answer.status_code == 201, answer.text
    assert answer.json()["attempt"] == 1
    refused = await huifang.tap.wait_events("callback.refused", loan)
    assert [e["data"]["attempt"] for e in refused] == [1]


async def known_attempt(huifang: Huifang, callback_id: str, *, at_least: int) -> bool:
    async with outcomes_db(huifang).uow() as uow:
        view = await uow.session.get(CallbackView, callback_id)
    return view is not None and view.attempt >= at_least
