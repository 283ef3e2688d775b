"""Outcomes' copy of the scheduler's callbacks: every event of a batch counts (real SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from services.outcomes.models import CallbackView
from services.outcomes.verification import track_callback
from shared.crypto import Cipher, generate_key
from shared.db import Database, utcnow
from shared.events import CallbackRescheduled
from tests.support import service_database


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "outcomes", cipher=Cipher([generate_key()])) as db:
        yield db


async def test_two_events_of_one_loan_in_one_batch_both_take_effect(database: Database) -> None:
    loan = f"L-{uuid.uuid4().hex[:8]}"
    ids = [f"CB-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    async with database.uow() as uow:
        for i, callback_id in enumerate(ids):
            uow.session.add(
                CallbackView(callback_id=callback_id, loan_id=loan, stage="final_check", branch_id="BR-1",
                             party_id=f"P-{i}", role="borrower", state="due", attempt=1)
            )  # fmt: skip
        await uow.commit()
    # The consumer runner applies a batch in one transaction: here, both parties' retries of one loan.
    async with database.uow() as uow:
        for i, callback_id in enumerate(ids):
            await track_callback(
                uow=uow,
                event=CallbackRescheduled(
                    loan_id=loan, callback_id=callback_id, party_id=f"P-{i}", role="borrower", stage="final_check",
                    branch_id="BR-1", attempt=2, state="scheduled", due_at=utcnow() + timedelta(hours=1),
                    reason="no_answer",
                ),
            )  # fmt: skip
        await uow.commit()

    async with database.uow() as uow:
        views = [await uow.session.get(CallbackView, callback_id) for callback_id in ids]
    assert [(v.state, v.attempt) for v in views if v is not None] == [("scheduled", 2), ("scheduled", 2)]
