"""Outcomes rules that need its database but not the broker (both kinds)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from services.outcomes.attempts import AttemptIn, record_attempt
from services.outcomes.models import CallbackView
from services.outcomes.verification import track_callback
from shared.crypto import Cipher, generate_key
from shared.db import Database, utcnow
from shared.errors import Rejected
from shared.events import CallbackScheduled
from tests.support import service_database

CIPHER = Cipher([generate_key()])


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "outcomes", cipher=CIPHER) as db:
        yield db


def scheduled(
    callback_id: str, *, channel: str = "phone", deadline_in: timedelta = timedelta(days=5)
) -> CallbackScheduled:
    now = utcnow()
    return CallbackScheduled(
        loan_id="L-1", callback_id=callback_id, party_id="P-1", role="borrower", stage="final_check",
        branch_id="BR-1", attempt=1, state="scheduled", due_at=now, deadline=now + deadline_in, notice_at=now,
        verification_items=["identity"], channel=channel,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_questionnaire_callbacks_have_no_call_time_to_be_overdue(database: Database) -> None:
    async with database.uow() as uow:
        await track_callback(uow=uow, event=scheduled("CB-Q", channel="questionnaire"))
        await track_callback(uow=uow, event=scheduled("CB-P"))
        await uow.commit()
    async with database.uow() as uow:
        questionnaire = await uow.session.get(CallbackView, "CB-Q")
        phone = await uow.session.get(CallbackView, "CB-P")
    assert questionnaire is not None and questionnaire.due_at is None
    assert phone is not None and phone.due_at is not None


async def test_no_attempt_is_accepted_once_the_deadline_has_passed(database: Database) -> None:
    async with database.uow() as uow:
        await track_callback(uow=uow, event=scheduled("CB-LATE", deadline_in=timedelta(seconds=-1)))
        await uow.commit()
    body = AttemptIn(disposition="completed", agent_id="A-1")
    async with database.uow() as uow:
        with pytest.raises(Rejected) as rejected:
            await record_attempt(
                uow=uow, callback_id="CB-LATE", body=body, cipher=CIPHER, agent_id="A-1", recorded_by=None
            )
    assert rejected.value.status == 409 and "deadline" in rejected.value.detail
    async with database.uow() as uow:
        view = await uow.session.get(CallbackView, "CB-LATE")
    assert view is not None and json.loads(view.verification_items) == ["identity"] and view.state == "scheduled"
