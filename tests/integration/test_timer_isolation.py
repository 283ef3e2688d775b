"""Timers that go wrong or fire late (real SQLite and PostgreSQL, no broker needed)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlmodel import col

from services.scheduler.callbacks import apply_outcome, schedule_callbacks
from services.scheduler.models import Callback, Timer
from services.scheduler.timers import TimerLoop
from shared.crypto import Cipher, generate_key
from shared.db import Database, utcnow
from shared.events import CallbackOutcomeRecorded, LoanStageChanged
from shared.outbox import OutboxMessage
from shared.policy import Policy, load_policy
from tests.support import ROOT, loan_event, service_database

CIPHER = Cipher([generate_key()], index_key="index-key-for-tests")


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "scheduler", cipher=CIPHER) as db:
        yield db


def _callback(cipher: Cipher, *, contact_enc: str | None = None) -> Callback:
    now = utcnow()
    return Callback(
        callback_id=str(uuid.uuid4()),
        loan_id=f"L-{uuid.uuid4().hex[:8]}",
        stage="final_check",
        branch_id="BR-1",
        party_id=f"P-{uuid.uuid4().hex[:6]}",
        role="borrower",
        state="scheduled",
        contact_enc=contact_enc or cipher.encrypt_json({"name": "张伟", "phone": "+8613800138000"}),
        phone_index="x",
        timezone="Asia/Shanghai",
        language="zh-CN",
        due_at=now,
        deadline=now + timedelta(days=5),
        notice_at=now,
    )


async def test_an_undecryptable_callback_does_not_block_other_timers(database: Database) -> None:
    cipher = CIPHER
    good = _callback(cipher)
    broken = _callback(cipher, contact_enc=Cipher([generate_key()]).encrypt_json({"name": "?", "phone": "?"}))
    async with database.uow() as uow:
        for cb in (broken, good):
            uow.session.add(cb)
            uow.session.add(Timer(callback_id=cb.callback_id, kind="due", fire_at=utcnow() - timedelta(seconds=1)))
        await uow.commit()

    fired = await TimerLoop(db=database, cipher=cipher, poll_seconds=0.1).fire_due()

    assert fired == 2
    async with database.uow() as uow:
        states = {cb.callback_id: cb.state for cb in (await uow.session.execute(sa.select(Callback))).scalars()}
        outbox = [m.key for m in (await uow.session.execute(sa.select(OutboxMessage))).scalars()]
        retry = (
            await uow.session.execute(sa.select(Timer).where(Timer.callback_id == broken.callback_id))
        ).scalar_one()
    assert states == {good.callback_id: "due", broken.callback_id: "scheduled"}
    assert good.loan_id in outbox and broken.loan_id not in outbox
    assert retry.fired_at is None and retry.fire_at > utcnow()


def _hours_excluding_now(zone: str) -> tuple[str, str]:
    hour = utcnow().astimezone(ZoneInfo(zone)).hour
    return ("05:00", "07:00") if hour in (1, 2) else ("01:00", "03:00")


async def test_a_late_due_timer_waits_for_calling_hours(database: Database) -> None:
    start, end = _hours_excluding_now("Asia/Shanghai")
    policy = Policy.model_validate({"calling_hours": {"start": start, "end": end, "holidays": ""}})
    cb = _callback(CIPHER)
    async with database.uow() as uow:
        uow.session.add(cb)
        uow.session.add(Timer(callback_id=cb.callback_id, kind="due", fire_at=utcnow() - timedelta(minutes=5)))
        await uow.commit()

    assert await TimerLoop(db=database, cipher=CIPHER, poll_seconds=0.1, policy=policy).fire_due() == 1

    async with database.uow() as uow:
        moved = (await uow.session.execute(sa.select(Callback))).scalar_one()
        pending = (await uow.session.execute(sa.select(Timer).where(col(Timer.fired_at).is_(None)))).scalars().all()
        sent = (await uow.session.execute(sa.select(OutboxMessage))).scalars().all()
    local = moved.due_at.astimezone(ZoneInfo("Asia/Shanghai"))
    assert moved.state == "scheduled" and sent == []  # nobody is rung at night
    assert start <= local.strftime("%H:%M") < end and moved.due_at > utcnow()
    assert [(t.kind, t.fire_at) for t in pending] == [("due", moved.due_at)]


# Calls at any hour, no quiet hours, a one-hour notice lead: the timers alone decide.
ANY_HOUR = Policy.model_validate(
    {
        "notice": {"lead": "PT1H", "quiet_start": "00:00", "quiet_end": "00:00"},
        "calling_hours": {"start": "00:00", "end": "24:00", "holidays": ""},
    }
)


async def _outbox_types(database: Database) -> list[str]:
    async with database.uow() as uow:
        payloads = (await uow.session.execute(sa.select(OutboxMessage.payload))).scalars().all()
    return [json.loads(database.unseal(p))["type"] for p in payloads]


@pytest.mark.parametrize(("disposition", "state"), [("no_answer", "scheduled"), ("completed", "completed")])
async def test_a_call_before_the_notice_cancels_the_notice_timer(
    database: Database, disposition: str, state: str
) -> None:
    policy = load_policy(ROOT / "tests" / "policy-test.toml")
    loan = f"L-{uuid.uuid4().hex[:8]}"
    event = LoanStageChanged.model_validate(loan_event(loan, roles=("borrower",)))
    async with database.uow() as uow:
        [cb] = await schedule_callbacks(uow=uow, event=event, policy=policy, cipher=CIPHER, now=utcnow())
        await uow.commit()
    notice_at = cb.notice_at
    # The agent rings (early, or from another list) before the timer loop sent the advance notice.
    async with database.uow() as uow:
        [notice] = (await uow.session.execute(sa.select(Timer).where(Timer.kind == "notice"))).scalars().all()
        assert notice.fired_at is None
        outcome = CallbackOutcomeRecorded.model_validate(
            {
                "loan_id": loan, "callback_id": cb.callback_id, "party_id": cb.party_id, "role": cb.role,
                "stage": cb.stage, "branch_id": cb.branch_id, "attempt": cb.attempt, "state": cb.state,
                "attempt_id": str(uuid.uuid4()), "disposition": disposition, "agent_id": "A-7",
                "recorded_at": utcnow(),
            }
        )  # fmt: skip
        await apply_outcome(uow=uow, event=outcome, policy=policy)
        await uow.commit()

    # The timer loop then wakes at the time the notice was planned for.
    await TimerLoop(db=database, cipher=CIPHER, poll_seconds=0.1, policy=policy).fire_due(now=notice_at)

    async with database.uow() as uow:
        moved = (await uow.session.execute(sa.select(Callback))).scalar_one()
        timer = (await uow.session.execute(sa.select(Timer).where(Timer.id == notice.id))).scalar_one()
    sent = await _outbox_types(database)
    assert "callback.scheduled" in sent  # the outbox is read, not empty by accident
    assert "callback.notice.requested" not in sent  # the party hears nothing of a call already made
    assert moved.state == state
    assert timer.cancelled and timer.fired_at is not None


async def test_quiet_hours_that_last_until_the_call_send_the_notice_at_once(database: Database) -> None:
    """The planner's "at once" notice inside quiet hours is sent, not dropped: never a call without a notice."""
    policy = Policy.model_validate(
        {
            "calling_hours": {"start": "09:00", "end": "20:00", "holidays": ""},
            "notice": {"lead": "PT1H", "quiet_start": "20:15", "quiet_end": "20:00"},
            "attempts": {"first_call_within_business_days": 1, "deadline_business_days": 1},
        }
    )
    now = datetime(2026, 12, 1, 20, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
    event = LoanStageChanged.model_validate(loan_event(f"L-{uuid.uuid4().hex[:8]}", roles=("borrower",)))
    async with database.uow() as uow:
        [cb] = await schedule_callbacks(uow=uow, event=event, policy=policy, cipher=CIPHER, now=now)
        await uow.commit()
    assert cb.notice_at == now and cb.due_at > now  # the plan: notice now, though quiet, call in the morning

    await TimerLoop(db=database, cipher=CIPHER, poll_seconds=0.1, policy=policy).fire_due(now=now)

    assert "callback.notice.requested" in await _outbox_types(database)


async def _pending(database: Database) -> list[tuple[str, object]]:
    async with database.uow() as uow:
        rows = (await uow.session.execute(sa.select(Timer).where(col(Timer.fired_at).is_(None)))).scalars().all()
    return sorted((t.kind, t.fire_at) for t in rows if t.kind != "deadline")


async def test_a_scheduler_back_after_the_call_was_due_sends_the_notice_and_replans_the_call(
    database: Database,
) -> None:
    policy = ANY_HOUR
    loan = f"L-{uuid.uuid4().hex[:8]}"
    event = LoanStageChanged.model_validate(loan_event(loan, roles=("borrower",)))
    async with database.uow() as uow:
        [cb] = await schedule_callbacks(uow=uow, event=event, policy=policy, cipher=CIPHER, now=utcnow())
        await uow.commit()
    # Killed before the notice was due, back ten minutes after the call was due: both timers are overdue.
    back = cb.due_at + timedelta(minutes=10)
    loop = TimerLoop(db=database, cipher=CIPHER, poll_seconds=0.1, policy=policy)
    assert await loop.fire_due(now=back) == 2

    async with database.uow() as uow:
        moved = (await uow.session.execute(sa.select(Callback))).scalar_one()
    assert (await _outbox_types(database))[1:] == ["callback.rescheduled", "callback.notice.requested"]
    assert moved.state == "scheduled" and moved.due_at >= back + timedelta(hours=1)  # the whole lead, kept
    assert await _pending(database) == [("due", moved.due_at)]
    async with database.uow() as uow:
        payloads = (await uow.session.execute(sa.select(OutboxMessage.payload))).scalars().all()
    rescheduled = json.loads(database.unseal(payloads[1]))
    assert rescheduled["data"]["reason"] == "late_notice"

    # The call goes out at its new time, after the notice.
    assert await loop.fire_due(now=moved.due_at) == 1
    assert (await _outbox_types(database))[-1] == "callback.due"


async def test_a_due_timer_never_fires_while_its_notice_is_still_to_go(database: Database) -> None:
    policy = load_policy(ROOT / "tests" / "policy-test.toml")
    cb = _callback(CIPHER)
    now = utcnow()
    async with database.uow() as uow:
        uow.session.add(cb)
        # The notice failed once and was put back for later; the call's own time has come.
        uow.session.add(Timer(callback_id=cb.callback_id, kind="notice", fire_at=now + timedelta(minutes=1)))
        uow.session.add(Timer(callback_id=cb.callback_id, kind="due", fire_at=now - timedelta(seconds=1)))
        await uow.commit()

    assert await TimerLoop(db=database, cipher=CIPHER, poll_seconds=0.1, policy=policy).fire_due(now=now) == 1

    assert await _outbox_types(database) == []
    async with database.uow() as uow:
        assert (await uow.session.execute(sa.select(Callback))).scalar_one().state == "scheduled"


async def test_a_notice_and_its_call_claimed_together_fire_notice_first_whatever_order_the_database_returns(
    database: Database,
) -> None:
    """PostgreSQL's UPDATE ... RETURNING gives rows in storage order, not the claim's ORDER BY: found by chaos."""
    policy = ANY_HOUR
    cb = _callback(CIPHER)
    cb.notice_at = cb.due_at - timedelta(hours=1)
    async with database.uow() as uow:
        uow.session.add(cb)
        await uow.commit()
    # The due timer stored first: a scan meets it before the notice's.
    for kind, at in (("due", cb.due_at), ("notice", cb.notice_at)):
        async with database.uow() as uow:
            uow.session.add(Timer(callback_id=cb.callback_id, kind=kind, fire_at=at))
            await uow.commit()

    back = cb.due_at + timedelta(minutes=10)
    assert await TimerLoop(db=database, cipher=CIPHER, poll_seconds=0.1, policy=policy).fire_due(now=back) == 2

    assert await _outbox_types(database) == ["callback.rescheduled", "callback.notice.requested"]
