"""A poll of loan events handled as one batch (loaded once, written in bulk) ends as handling them one by one.

Real SQLite and PostgreSQL, no broker: the batch is driven as the consumer runner drives it
(the handler's loader once, the handler per event, the loader's finisher, one commit).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from services.scheduler import callbacks
from services.scheduler.handlers import HANDLERS
from services.scheduler.models import Callback, CallbackEvent, Timer
from services.scheduler.planner import local_day
from shared.crypto import Cipher, generate_key
from shared.db import Database
from shared.events import LoanStageChanged
from shared.kafka import LOADER
from shared.outbox import OutboxMessage
from shared.policy import Policy, load_policy
from tests.support import ROOT, loan_event, service_database

CIPHER = Cipher([generate_key()], index_key="index-key-for-tests")


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "scheduler", cipher=CIPHER) as db:
        yield db


def _policy() -> Policy:
    # One call per person per day: two callbacks of one person never share a day.
    data = load_policy(ROOT / "tests" / "policy-test.toml").model_dump(mode="json")
    data["attempts"]["max_calls_per_person_per_day"] = 1
    data["stages"] = {"final_check": ["borrower", "co_borrower", "guarantor"]}
    return Policy.model_validate(data)


def _events(tag: str) -> list[LoanStageChanged]:
    """Loan A in and out of final_check and back, and loans B and C whose borrowers share one phone."""
    a, b, c = (f"L-{tag}-{x}" for x in "ABC")
    shared_phone = f"+86137{int(uuid.uuid4().int % 10**8):08d}"

    def loan(loan_id: str, stage: str = "final_check", phone: str | None = None) -> LoanStageChanged:
        raw: dict[str, Any] = loan_event(loan_id, stage=stage, roles=("borrower", "co_borrower", "guarantor"))
        if phone:
            raw["parties"][0]["phone"] = phone
        return LoanStageChanged.model_validate(raw)

    return [loan(a), loan(b, phone=shared_phone), loan(c, phone=shared_phone), loan(a, "rejected"), loan(a)]


async def _as_batch(db: Database, events: list[LoanStageChanged], policy: Policy) -> None:
    load = getattr(HANDLERS[LoanStageChanged], LOADER)
    async with db.uow() as uow:
        finish = await load(uow=uow, events=events, policy=policy, cipher=CIPHER)
        for event in events:
            await callbacks.loan_moved(uow=uow, event=event, policy=policy, cipher=CIPHER)
        await finish()
        await uow.commit()


async def _one_by_one(db: Database, events: list[LoanStageChanged], policy: Policy) -> None:
    for event in events:
        async with db.uow() as uow:
            await callbacks.loan_moved(uow=uow, event=event, policy=policy, cipher=CIPHER)
            await uow.commit()


async def _summary(db: Database, tag: str) -> dict[str, object]:
    """What the events left, with the run's own ids and clock taken out."""
    async with db.uow() as uow:
        cbs = [cb for cb in (await uow.session.execute(sa.select(Callback))).scalars() if f"-{tag}-" in cb.loan_id]
        ids = {cb.callback_id for cb in cbs}
        timers = [t for t in (await uow.session.execute(sa.select(Timer))).scalars() if t.callback_id in ids]
        lines = [e for e in (await uow.session.execute(sa.select(CallbackEvent))).scalars() if e.callback_id in ids]
        outbox = [m for m in (await uow.session.execute(sa.select(OutboxMessage))).scalars() if tag in m.key]
    loan = {cb.callback_id: cb.loan_id.rsplit("-", 1)[1] for cb in cbs}
    borrowers = {cb.loan_id.rsplit("-", 1)[1]: cb for cb in cbs if cb.role == "borrower" and cb.state == "scheduled"}
    days = {local_day(at=borrowers[x].due_at, timezone=borrowers[x].timezone) for x in "BC"}
    return {
        "callbacks": Counter((loan[cb.callback_id], cb.role, cb.state) for cb in cbs),
        "timers": Counter((loan[t.callback_id], t.kind, t.cancelled, t.fired_at is None) for t in timers),
        "timeline": Counter((loan[e.callback_id], e.type) for e in lines),
        "events": len(outbox),
        # B and C's borrower is one person: their calls fall on different days of theirs.
        "shared_phone_days_differ": len(days) == 2,
    }


async def test_a_batch_of_loan_events_ends_as_handling_them_one_by_one(database: Database) -> None:
    policy = _policy()
    await _as_batch(database, _events("batch"), policy)
    await _one_by_one(database, _events("single"), policy)

    batched, single = await _summary(database, "batch"), await _summary(database, "single")

    assert batched == single
    callbacks_by = batched["callbacks"]
    assert isinstance(callbacks_by, Counter)
    # A's first callbacks were opened and cancelled inside the batch, then opened again.
    assert callbacks_by[("A", "borrower", "cancelled")] == 1 and callbacks_by[("A", "borrower", "scheduled")] == 1
    timers_by = batched["timers"]
    assert isinstance(timers_by, Counter)
    # The cancelled callbacks' timers, written in bulk earlier in the batch, were cancelled too.
    assert timers_by[("A", "deadline", True, False)] == 3 and timers_by[("A", "deadline", False, True)] == 3
    assert batched["events"] == 15  # 12 callback.scheduled, 3 callback.cancelled
    assert batched["shared_phone_days_differ"] is True
