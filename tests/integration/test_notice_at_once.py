"""An advance notice planned for "now" leaves with the loan's own transaction, not by a timer a moment later.

Real SQLite and PostgreSQL, no broker: the loan event is handled as the scheduler's handler does, with its
`Notices`, then the timer loop runs over whatever is due.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from services.scheduler import callbacks
from services.scheduler.models import Callback, CallbackEvent, Timer
from services.scheduler.notices import Notices
from services.scheduler.timers import TimerLoop
from shared.crypto import Cipher, generate_key
from shared.db import Database, utcnow
from shared.events import LoanStageChanged
from shared.policy import Policy, load_policy
from tests.support import ROOT, loan_event, service_database

CIPHER = Cipher([generate_key()], index_key="index-key-for-tests")
NOTICE = "callback.notice.requested"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "scheduler", cipher=CIPHER) as db:
        yield db


def _policy(*, quiet_now: bool) -> Policy:
    """The test policy (calls at any hour) with a lead of an hour; quiet hours around this moment if asked."""
    data = load_policy(ROOT / "tests" / "policy-test.toml").model_dump(mode="json")
    data["notice"]["lead"] = "PT1H"
    if quiet_now:  # the parties live in Asia/Shanghai: quiet from an hour ago until two hours ahead there
        local = utcnow().astimezone(ZoneInfo("Asia/Shanghai"))
        start, end = local - timedelta(hours=1), local + timedelta(hours=2)
        data["notice"]["quiet_start"], data["notice"]["quiet_end"] = f"{start:%H:00}", f"{end:%H:00}"
    return Policy.model_validate(data)


async def _ingest(db: Database, policy: Policy) -> str:
    loan_id = f"L-{uuid.uuid4().hex[:10]}"
    event = LoanStageChanged.model_validate(loan_event(loan_id, roles=("borrower", "co_borrower", "guarantor")))
    async with db.uow() as uow:
        notices = Notices(cipher=CIPHER, policy=policy)
        await callbacks.loan_moved(uow=uow, event=event, policy=policy, cipher=CIPHER, notices=notices)
        await uow.commit()
    return loan_id


async def _left(db: Database, loan_id: str) -> tuple[Counter[str], Counter[str]]:
    """The loan's timeline lines by type, and its timers by kind."""
    async with db.uow() as uow:
        ids = sa.select(Callback.callback_id).where(Callback.loan_id == loan_id).scalar_subquery()
        lines = await uow.session.execute(sa.select(CallbackEvent.type).where(CallbackEvent.callback_id.in_(ids)))
        kinds = await uow.session.execute(sa.select(Timer.kind).where(Timer.callback_id.in_(ids)))
        return Counter(lines.scalars()), Counter(kinds.scalars())


async def test_a_notice_due_now_goes_with_the_loan_and_only_once(database: Database) -> None:
    policy = _policy(quiet_now=False)
    loan_id = await _ingest(database, policy)

    lines, timers = await _left(database, loan_id)
    assert lines[NOTICE] == 3  # committed with the callbacks: no timer between the loan and its notices
    assert timers == Counter({"due": 3, "deadline": 3})  # and no notice timer left to send them again

    await TimerLoop(db=database, cipher=CIPHER, poll_seconds=0.1, policy=policy).fire_due(utcnow() + timedelta(hours=2))
    lines, _ = await _left(database, loan_id)
    assert lines[NOTICE] == 3 and lines["callback.due"] == 3  # the calls followed, the notices did not repeat


async def test_a_notice_in_quiet_hours_still_waits_for_its_timer(database: Database) -> None:
    policy = _policy(quiet_now=True)
    loan_id = await _ingest(database, policy)

    lines, timers = await _left(database, loan_id)
    assert lines[NOTICE] == 0
    assert timers == Counter({"notice": 3, "due": 3, "deadline": 3})
