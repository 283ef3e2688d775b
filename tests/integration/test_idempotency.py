"""Idempotency-Key on every write of every service, over HTTP against the running system, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from services.notifier.api import NoteIn
from services.outcomes.attempts import AttemptIn
from services.scheduler.api import CancelIn
from shared import idempotency
from shared.db import Database
from shared.idempotency import KEY_MAX_LENGTH
from shared.web import Principal, key_id
from tests.outcomes_support import due_callbacks
from tests.support import KEYS, PRINCIPALS, Huifang, loan_event


async def scheduled_callback(huifang: Huifang) -> tuple[str, str]:
    loan = f"L-{uuid.uuid4().hex[:12]}"
    await huifang.publish_event("loan.stage.changed", loan_event(loan, roles=("borrower",)), key=loan)
    [scheduled] = await huifang.tap.wait_events("callback.scheduled", loan)
    return loan, scheduled["data"]["callback_id"]


async def due_callback(huifang: Huifang) -> tuple[str, str]:
    loan, callbacks = await due_callbacks(huifang)
    return loan, callbacks["borrower"]


async def open_escalation(huifang: Huifang) -> tuple[str, str]:
    loan, callbacks = await due_callbacks(huifang)
    async with huifang.client("outcomes") as client:
        refused = await client.post(
            f"/v1/callbacks/{callbacks['borrower']}/attempts",
            json={"disposition": "refused", "reason_code": "suspected_fraud"},
        )
    assert refused.status_code == 201, refused.text
    [raised] = await huifang.tap.wait_events("escalation.raised", loan)
    return loan, raised["data"]["escalation_id"]


@dataclass(frozen=True)
class Write:
    """One keyed write endpoint: what it is, how to make something for it to act on, and its one effect."""

    service: str
    role: str
    operation: str
    path: str  # with {id} for its one path parameter
    param: str
    model: type[BaseModel]
    body: dict[str, Any]
    other: dict[str, Any]
    status: int
    target: Callable[[Huifang], Awaitable[tuple[str, str]]]  # -> (loan_id, id)
    effect: str  # the event type its effect emits, once

    def url(self, target_id: str) -> str:
        return self.path.format(id=target_id)


WRITES = [
    Write(
        service="scheduler",
        role="supervisor",
        operation="scheduler.cancel",
        path="/v1/callbacks/{id}/cancel",
        param="callback_id",
        model=CancelIn,
        body={"reason": "duplicate"},
        other={"reason": "changed my mind"},
        status=200,
        target=scheduled_callback,
        effect="callback.cancelled",
    ),
    Write(
        service="outcomes",
        role="agent",
        operation="outcomes.attempt",
        path="/v1/callbacks/{id}/attempts",
        param="callback_id",
        model=AttemptIn,
        # Not a final disposition: a second run would record a second attempt, not be refused.
        body={"disposition": "no_answer", "duration_s": 9},
        other={"disposition": "no_answer", "duration_s": 8},
        status=201,
        target=due_callback,
        effect="callback.outcome.recorded",
    ),
    *(
        Write(
            service="notifier",
            role="supervisor",
            operation=f"notifier.{action}",
            path=f"/v1/escalations/{{id}}/{action}",
            param="escalation_id",
            model=NoteIn,
            body={"note": "mine"},
            other={"note": "changed"},
            status=200,
            target=open_escalation,
            effect=effect,
        )
        for action, effect in (("ack", "escalation.acknowledged"), ("resolve", "escalation.resolved"))
    ),
]

writes = pytest.mark.parametrize("write", WRITES, ids=[w.operation for w in WRITES])


def service_db(huifang: Huifang, service: str) -> Database:
    db: Database = huifang.servers[service][0].config.app.state.runtime.db  # type: ignore[attr-defined]
    return db


async def post(huifang: Huifang, write: Write, target_id: str, body: dict[str, Any], key: str) -> Any:
    async with huifang.client(write.service, write.role) as client:
        return await client.post(write.url(target_id), json=body, headers={"Idempotency-Key": key})


@writes
async def test_a_repeat_replays_the_first_response_with_one_effect(huifang: Huifang, write: Write) -> None:
    loan, target_id = await write.target(huifang)
    key = uuid.uuid4().hex
    first = await post(huifang, write, target_id, write.body, key)
    again = await post(huifang, write, target_id, write.body, key)
    assert first.status_code == again.status_code == write.status, (first.text, again.text)
    assert first.json() == again.json()
    await huifang.tap.wait_events(write.effect, loan)
    assert len(huifang.tap.events(write.effect, loan)) == 1


@writes
async def test_the_key_with_another_body_is_422_and_the_first_response_stays(huifang: Huifang, write: Write) -> None:
    _, target_id = await write.target(huifang)
    key = uuid.uuid4().hex
    first = await post(huifang, write, target_id, write.body, key)
    other = await post(huifang, write, target_id, write.other, key)
    again = await post(huifang, write, target_id, write.body, key)
    assert first.status_code == write.status, first.text
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    assert again.json() == first.json()


@writes
async def test_a_key_in_flight_is_409_and_the_retry_after_it_runs(huifang: Huifang, write: Write) -> None:
    loan, target_id = await write.target(huifang)
    key = uuid.uuid4().hex
    # The claim a first request with this key holds while it runs, taken through the shared helper.
    who = Principal(write.role, key_id(KEYS[write.role]), PRINCIPALS[write.role])
    keyed = idempotency.keyed(
        key, who=who, operation=write.operation, params={write.param: target_id}, body=write.model(**write.body)
    )
    assert keyed is not None
    claimed = await idempotency.claim(db=service_db(huifang, write.service), keyed=keyed)
    assert isinstance(claimed, idempotency.Claim)
    duplicate = await post(huifang, write, target_id, write.body, key)
    assert duplicate.status_code == 409 and "in flight" in duplicate.json()["detail"]
    assert duplicate.headers["Retry-After"] == "1"
    await idempotency.release(db=service_db(huifang, write.service), claim=claimed)
    # The duplicate changed nothing: once the claim is given back, the request runs as the first would.
    retry = await post(huifang, write, target_id, write.body, key)
    assert retry.status_code == write.status, retry.text
    await huifang.tap.wait_events(write.effect, loan)
    assert len(huifang.tap.events(write.effect, loan)) == 1


@writes
async def test_the_header_has_one_limit_on_every_service(huifang: Huifang, write: Write) -> None:
    longest = await post(huifang, write, "unknown", write.body, "k" * KEY_MAX_LENGTH)
    too_long = await post(huifang, write, "unknown", write.body, "k" * (KEY_MAX_LENGTH + 1))
    empty = await post(huifang, write, "unknown", write.body, "")
    assert longest.status_code == 404, longest.text  # the key passes; the target does not exist
    assert too_long.status_code == empty.status_code == 422
    assert "Idempotency-Key" in str(too_long.json()["detail"])


async def test_a_stored_response_keeps_what_a_person_typed_encrypted(huifang: Huifang) -> None:
    """The ack's response holds the supervisor's note: the replay store keeps it like every note, encrypted."""
    _, escalation_id = await open_escalation(huifang)
    note = f"canary-{uuid.uuid4().hex}"
    key = uuid.uuid4().hex
    async with huifang.client("notifier", "supervisor") as client:
        first = await client.post(
            f"/v1/escalations/{escalation_id}/ack", json={"note": note}, headers={"Idempotency-Key": key}
        )
        again = await client.post(
            f"/v1/escalations/{escalation_id}/ack", json={"note": note}, headers={"Idempotency-Key": key}
        )
    assert first.status_code == again.status_code == 200 and again.json()["ack_note"] == note
    db = service_db(huifang, "notifier")
    async with db.uow() as uow:
        stored = await uow.session.scalar(
            sa.select(idempotency.IdempotencyRecord.response).where(idempotency.IdempotencyRecord.key == key)  # type: ignore[arg-type]
        )
    assert stored and note not in stored
