"""Events in: loan stages open and cancel callbacks; outcomes close, retry or expire them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select

from services.scheduler import planner
from services.scheduler.models import Callback, Timer
from shared.crypto import Cipher
from shared.db import UnitOfWork, utcnow
from shared.events import (
    CLOSED_STATES,
    CallbackCancelled,
    CallbackExpired,
    CallbackOutcomeRecorded,
    CallbackRescheduled,
    CallbackScheduled,
    Event,
    LoanStageChanged,
)
from shared.kafka import Handler
from shared.policy import Policy

CANCEL_REASON = {"rejected": "loan_rejected", "withdrawn": "loan_withdrawn"}


def ref(cb: Callback) -> dict[str, object]:
    """The fields every callback event carries."""
    return {
        "loan_id": cb.loan_id,
        "callback_id": cb.callback_id,
        "party_id": cb.party_id,
        "role": cb.role,
        "stage": cb.stage,
        "branch_id": cb.branch_id,
        "attempt": cb.attempt,
        "state": cb.state,
    }


async def open_callbacks(*, uow: UnitOfWork, loan_id: str) -> list[Callback]:
    rows = await uow.session.execute(
        select(Callback).where(Callback.loan_id == loan_id, col(Callback.state).not_in(CLOSED_STATES))
    )
    return list(rows.scalars())


async def cancel_timers(*, uow: UnitOfWork, callback_id: str, kinds: tuple[str, ...] | None = None) -> None:
    query = sa.update(Timer).where(col(Timer.callback_id) == callback_id, col(Timer.fired_at).is_(None))
    if kinds:
        query = query.where(col(Timer.kind).in_(kinds))
    await uow.session.execute(query.values(fired_at=utcnow(), cancelled=True))


def add_timer(uow: UnitOfWork, callback_id: str, kind: str, fire_at: datetime) -> None:
    uow.session.add(Timer(callback_id=callback_id, kind=kind, fire_at=fire_at))


async def schedule_callbacks(
    *, uow: UnitOfWork, event: LoanStageChanged, policy: Policy, cipher: Cipher, now: datetime
) -> list[Callback]:
    """Open one callback per party whose role the policy calls at this stage."""
    roles = policy.stages.get(event.stage, [])
    existing = {cb.party_id for cb in await open_callbacks(uow=uow, loan_id=event.loan_id) if cb.stage == event.stage}
    created = []
    for party in event.parties:
        if party.role not in roles or party.party_id in existing:
            continue
        plan = planner.plan_first_call(policy, party, now)
        cb = Callback(
            callback_id=_new_id(),
            loan_id=event.loan_id,
            stage=event.stage,
            branch_id=event.branch_id,
            party_id=party.party_id,
            role=party.role,
            state="scheduled",
            contact_enc=cipher.encrypt_json({"name": party.name, "phone": party.phone, "email": party.email}),
            phone_index=cipher.blind_index(party.phone),
            timezone=party.timezone,
            language=party.language,
            contact_consent=party.contact_consent,
            due_at=plan.due_at,
            deadline=plan.deadline,
            notice_at=plan.notice_at,
            flags="" if party.contact_consent else "no_consent",
        )
        uow.session.add(cb)
        add_timer(uow, cb.callback_id, "notice", plan.notice_at)
        add_timer(uow, cb.callback_id, "due", plan.due_at)
        add_timer(uow, cb.callback_id, "deadline", plan.deadline)
        uow.emit(
            CallbackScheduled(
                **ref(cb),
                due_at=cb.due_at,
                deadline=cb.deadline,  # type: ignore[arg-type]
                notice_at=cb.notice_at,
                verification_items=planner.VERIFICATION_ITEMS,
            ),
            key=cb.loan_id,
        )
        created.append(cb)
    return created


async def cancel_loan(*, uow: UnitOfWork, loan_id: str, reason: str, now: datetime) -> list[Callback]:
    """Cancel every open callback of a loan."""
    cancelled = await open_callbacks(uow=uow, loan_id=loan_id)
    for cb in cancelled:
        await close(uow=uow, cb=cb, state="cancelled", now=now)
        uow.emit(CallbackCancelled(**ref(cb), reason=reason), key=cb.loan_id)  # type: ignore[arg-type]
    return cancelled


async def close(*, uow: UnitOfWork, cb: Callback, state: str, now: datetime) -> None:
    cb.state = state
    cb.closed_at = now
    cb.updated_at = now
    uow.session.add(cb)
    await cancel_timers(uow=uow, callback_id=cb.callback_id)


async def on_loan_stage(*, uow: UnitOfWork, event: LoanStageChanged, policy: Policy, cipher: Cipher) -> None:
    """A loan moved: open callbacks for a calling stage, cancel them for rejected/withdrawn."""
    now = utcnow()
    if event.stage in CANCEL_REASON:
        await cancel_loan(uow=uow, loan_id=event.loan_id, reason=CANCEL_REASON[event.stage], now=now)
    elif event.stage in policy.stages:
        await schedule_callbacks(uow=uow, event=event, policy=policy, cipher=cipher, now=now)


async def on_outcome(*, uow: UnitOfWork, event: CallbackOutcomeRecorded, policy: Policy) -> None:
    """An attempt was recorded: close, retry later, move to the party's time, or expire."""
    cb = await find(uow=uow, callback_id=event.callback_id)
    if cb is None or cb.state in CLOSED_STATES:
        return
    now = utcnow()
    if event.disposition in ("completed", "refused", "wrong_number"):
        await close(uow=uow, cb=cb, state=event.disposition, now=now)
        return
    if event.disposition == "reschedule_requested":
        await reschedule(
            uow=uow,
            cb=cb,
            due_at=event.reschedule_to or now + policy.attempts.min_gap,
            reason="party_requested",
            now=now,
        )
        return
    cb.calls_made += 1
    retry_at = planner.plan_retry(policy, now, cb.deadline)
    if cb.calls_made >= policy.attempts.max_calls or retry_at is None:
        await close(uow=uow, cb=cb, state="expired", now=now)
        uow.emit(CallbackExpired(**ref(cb), reason="attempts_exhausted"), key=cb.loan_id)  # type: ignore[arg-type]
        return
    cb.attempt += 1
    await reschedule(uow=uow, cb=cb, due_at=retry_at, reason=event.disposition, now=now)


async def reschedule(*, uow: UnitOfWork, cb: Callback, due_at: datetime, reason: str, now: datetime) -> None:
    cb.state = "scheduled"
    cb.due_at = due_at
    cb.updated_at = now
    uow.session.add(cb)
    await cancel_timers(uow=uow, callback_id=cb.callback_id, kinds=("due",))
    add_timer(uow, cb.callback_id, "due", due_at)
    uow.emit(CallbackRescheduled(**ref(cb), due_at=due_at, reason=reason), key=cb.loan_id)  # type: ignore[arg-type]


async def find(*, uow: UnitOfWork, callback_id: str) -> Callback | None:
    result = await uow.session.execute(select(Callback).where(Callback.callback_id == callback_id))
    return result.scalar_one_or_none()


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())


def handlers(policy: Policy, cipher: Cipher) -> dict[str, Handler]:
    async def loan_stage(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, LoanStageChanged)
        await on_loan_stage(uow=uow, event=event.data, policy=policy, cipher=cipher)

    async def outcome(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, CallbackOutcomeRecorded)
        await on_outcome(uow=uow, event=event.data, policy=policy)

    return {"loan.stage.changed": loan_stage, "callback.outcome.recorded": outcome}
