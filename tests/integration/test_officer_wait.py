"""A refusal and the loan's first stage event handled at the same moment (two replicas, two topics): the
officer's email is queued once, never missed (both databases; on PostgreSQL the stage event waits for the lock).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.notifier.models import Notification, OfficerWait
from services.notifier.notifications import refusal
from services.notifier.outbound import Outbound, keep_contacts
from shared.crypto import Cipher, generate_key
from shared.db import Database
from shared.events import CallbackRefused, LoanStageChanged
from shared.policy import load_policy
from tests.support import loan_event, service_database, wait_for

ROOT = Path(__file__).resolve().parents[2]
OUT = Outbound(cipher=Cipher([generate_key()]), email_enabled=True)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "notifier", cipher=OUT.cipher) as db:
        yield db


def refused(loan_id: str) -> CallbackRefused:
    return CallbackRefused.model_validate(
        {
            "loan_id": loan_id, "callback_id": f"cb-{uuid.uuid4().hex[:8]}", "party_id": f"P-1-{loan_id}",
            "role": "borrower", "stage": "final_check", "branch_id": "BR-SH-001", "attempt": 1, "state": "refused",
            "reason_code": "time_conflict", "agent_id": "A-1", "refusals_for_loan": 1,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
    )  # fmt: skip


async def stage_waits_for_lock(db: Database, stage: asyncio.Task[object]) -> bool:
    """The stage event's transaction is blocked on the advisory lock (or, without one, already done)."""
    if stage.done() or db.dialect == "sqlite":  # SQLite: BEGIN IMMEDIATE holds it back until the refusal commits
        return True
    async with db.engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return bool((await conn.execute(query)).scalar_one())


async def test_a_refusal_and_the_first_stage_event_at_once_queue_one_officer_email(database: Database) -> None:
    loan_id = f"L-{uuid.uuid4().hex[:8]}"
    policy = load_policy(ROOT / "tests" / "policy-notifier.toml")
    contacts = LoanStageChanged.model_validate(loan_event(loan_id))

    async def stage_event() -> object:
        async with database.uow() as uow:
            row = await keep_contacts(uow=uow, event=contacts, out=OUT)
            await uow.commit()
        return row

    async with database.uow() as first:
        # The refusal finds no contacts and remembers its officer notification, not committed yet...
        await refusal(uow=first, event=refused(loan_id), event_id="E-refused", policy=policy, out=OUT)
        # ...while another replica takes the loan's first stage event.
        stage = asyncio.create_task(stage_event())
        await wait_for(lambda: stage_waits_for_lock(database, stage), 30, "the stage event at the lock")
        await first.commit()
    await stage

    async with database.uow() as uow:
        notes = (await uow.session.execute(sa.select(Notification))).scalars().all()
        waits = (await uow.session.execute(sa.select(OfficerWait))).scalars().all()
    assert sorted((n.recipient, n.channel) for n in notes) == [("officer", "webhook"), ("officer:EMP-778", "email")]
    assert all(n.source_event_id == "E-refused" for n in notes) and waits == []
    email = next(n for n in notes if n.channel == "email")
    assert OUT.cipher.decrypt(email.address_enc or "") == "li.na@bank.example"
