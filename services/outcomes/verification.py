"""Each loan's verification: the scheduler's callbacks mirrored, and the loan closed when its last callback closes."""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import col, select

from services.outcomes.models import CallbackView, LoanVerification
from shared.db import UnitOfWork, insert_new, utcnow
from shared.errors import Rejected
from shared.events import (
    CLOSED_STATES,
    CallbackCancelled,
    CallbackDue,
    CallbackExpired,
    CallbackRef,
    CallbackRescheduled,
    CallbackScheduled,
    CallbackState,
    Disposition,
    LoanVerificationCompleted,
    PartyResult,
    Role,
    Stage,
    VerificationStatus,
)
from shared.outbox import enqueue

_VIEW: sa.Table = CallbackView.__table__  # type: ignore[attr-defined]
_LOAN_VERIFICATION: sa.Table = LoanVerification.__table__  # type: ignore[attr-defined]

# A final disposition by name, typed; an expiry or a cancellation has none.
DISPOSITION_OF: dict[str, Disposition] = {d: d for d in typing.get_args(Disposition)}


async def find_view(*, uow: UnitOfWork, callback_id: str) -> CallbackView | None:
    return await uow.session.get(CallbackView, callback_id)


async def lock_loan(*, uow: UnitOfWork, loan_id: str) -> list[CallbackView]:
    """Lock (PostgreSQL) and reload the loan's callbacks, so two closings of one loan run one after the other."""
    # Without it, two callbacks closing at once would each see the other still open, and nobody
    # would complete the loan. Locking in callback_id order keeps concurrent lockers from deadlocking.
    # SQLite needs nothing: BEGIN IMMEDIATE already serialises writers.
    # The reload overwrites loaded rows: write this transaction's changes first (an earlier event of the
    # same batch may have changed one of this loan's callbacks), or they would be lost.
    await uow.session.flush()
    query = (
        select(CallbackView)
        .where(CallbackView.loan_id == loan_id)
        .order_by(col(CallbackView.callback_id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list((await uow.session.execute(query)).scalars())


async def lock_loan_of(*, uow: UnitOfWork, callback_id: str) -> list[CallbackView]:
    """lock_loan in one round trip, given one of the loan's callbacks: its callbacks, fresh; none if it is unknown."""
    await uow.session.flush()  # pending ORM changes first, as lock_loan does
    loan = sa.select(_VIEW.c.loan_id).where(_VIEW.c.callback_id == callback_id).scalar_subquery()
    query = sa.select(_VIEW).where(_VIEW.c.loan_id == loan).order_by(_VIEW.c.callback_id).with_for_update()
    return [CallbackView(**row._mapping) for row in await uow.session.execute(query)]


async def track_callback(*, uow: UnitOfWork, event: CallbackRef) -> None:
    """Mirror the scheduler's callback state; a closing event may complete the loan's verification."""
    await lock_loan(uow=uow, loan_id=event.loan_id)
    view = await find_view(uow=uow, callback_id=event.callback_id)
    now = utcnow()
    if view is None and isinstance(event, CallbackScheduled):
        await start_new_round_if_done(uow=uow, loan_id=event.loan_id, stage=event.stage)
    if view is None:
        view = CallbackView(
            callback_id=event.callback_id,
            loan_id=event.loan_id,
            stage=event.stage,
            branch_id=event.branch_id,
            party_id=event.party_id,
            role=event.role,
            state=event.state,
            attempt=event.attempt,
        )
    elif view.state in CLOSED_STATES:
        return  # closed here first (an attempt) or already closed: later lifecycle news changes nothing
    view.state = event.state
    view.attempt = max(view.attempt, event.attempt)
    view.updated_at = now
    if isinstance(event, CallbackScheduled):
        view.verification_items = json.dumps(event.verification_items)
        # A questionnaire-route callback is never phoned, so it has no call time to be overdue against.
        view.due_at = None if event.channel == "questionnaire" else event.due_at
        view.deadline = event.deadline
    elif isinstance(event, CallbackDue | CallbackRescheduled):
        view.due_at = event.due_at
    elif isinstance(event, CallbackExpired | CallbackCancelled):
        view.final_disposition = event.state if isinstance(event, CallbackCancelled) else f"expired:{event.reason}"
        view.closed_at = now
    uow.session.add(view)
    if view.closed_at is not None:
        await uow.session.flush()
        await complete_if_closed(uow=uow, loan_id=view.loan_id, stage=view.stage, now=now)


async def start_new_round_if_done(*, uow: UnitOfWork, loan_id: str, stage: Stage) -> None:
    """A new callback for a stage already reported: that report stands, and a new round begins."""
    done = await uow.session.get(LoanVerification, (loan_id, stage))
    if done is None:
        return
    await uow.session.delete(done)
    await uow.session.execute(
        sa.update(CallbackView)
        .where(col(CallbackView.loan_id) == loan_id, col(CallbackView.stage) == stage)
        .values(superseded=True)
    )
    await uow.session.flush()


def verification_status(final: list[str]) -> VerificationStatus:
    """refused if any refused; unreachable if any expired unanswered or wrong number; cancelled; else verified."""
    if "refused" in final:
        return "refused"
    if any(f.startswith("expired") or f == "wrong_number" for f in final):
        return "unreachable"
    if "cancelled" in final:
        return "cancelled"
    return "verified"


def party_result(view: CallbackView) -> PartyResult:
    """One party's line of loan.verification.completed: a real disposition, or the state and why."""
    final = view.final_disposition or view.state
    reason = final.partition(":")[2]
    return PartyResult(
        party_id=view.party_id,
        role=view.role,
        callback_id=view.callback_id,
        disposition=DISPOSITION_OF.get(final),
        state=view.state,
        reason=reason or None,
    )


class PartyStatus(BaseModel):
    party_id: str
    role: Role
    callback_id: str
    disposition: Disposition | None  # the final disposition; None while open, or when it expired or was cancelled
    state: CallbackState
    reason: str | None = None  # why it expired


class StageVerification(BaseModel):
    loan_id: str
    stage: Stage
    status: VerificationStatus | Literal["pending"]  # pending while a callback is open
    parties: list[PartyStatus]
    completed_at: datetime | None


async def loan_stages(*, uow: UnitOfWork, loan_id: str) -> list[StageVerification]:
    """The loan's verification per stage: the completed result, or pending with each party's state."""
    views = list(
        (
            await uow.session.execute(
                select(CallbackView)
                .where(CallbackView.loan_id == loan_id, col(CallbackView.superseded).is_(False))
                .order_by(col(CallbackView.role), col(CallbackView.party_id))
            )
        ).scalars()
    )
    done = {
        v.stage: v
        for v in (
            await uow.session.execute(select(LoanVerification).where(LoanVerification.loan_id == loan_id))
        ).scalars()
    }
    if not views and not done:
        raise Rejected(404, f"no callbacks known for loan {loan_id}")
    return [
        _stage(loan_id=loan_id, stage=stage, views=[v for v in views if v.stage == stage], done=done.get(stage))
        for stage in sorted({v.stage for v in views} | set(done))
    ]


def _stage(
    *, loan_id: str, stage: Stage, views: list[CallbackView], done: LoanVerification | None
) -> StageVerification:
    parties = [
        PartyStatus(**party_result(v).model_dump())
        if v.state in CLOSED_STATES
        else PartyStatus(party_id=v.party_id, role=v.role, callback_id=v.callback_id, disposition=None, state=v.state)
        for v in views
    ]
    if done is not None:
        status: VerificationStatus | Literal["pending"] = done.status
        return StageVerification(
            loan_id=loan_id, stage=stage, status=status, parties=parties, completed_at=done.completed_at
        )
    finals = [p.disposition for p in parties]
    status = "pending" if None in finals else verification_status([f or "" for f in finals])
    return StageVerification(loan_id=loan_id, stage=stage, status=status, parties=parties, completed_at=None)


async def complete_if_closed(*, uow: UnitOfWork, loan_id: str, stage: Stage, now: datetime) -> None:
    """Emit loan.verification.completed once every callback of the loan's stage is closed."""
    views = list(
        (
            await uow.session.execute(
                select(CallbackView).where(
                    CallbackView.loan_id == loan_id,
                    CallbackView.stage == stage,
                    col(CallbackView.superseded).is_(False),
                )
            )
        ).scalars()
    )
    await complete_stage(uow=uow, loan_id=loan_id, stage=stage, views=views, now=now)


async def complete_stage(
    *, uow: UnitOfWork, loan_id: str, stage: Stage, views: Sequence[CallbackView], now: datetime
) -> None:
    """Given the stage's current (not superseded) callbacks: report the stage once, when all are closed."""
    if not views or any(v.state not in CLOSED_STATES for v in views):
        return
    ordered = sorted(views, key=lambda v: (v.role, v.party_id))
    parties = [party_result(v) for v in ordered]
    status = verification_status([v.final_disposition or v.state for v in ordered])
    row = {
        "loan_id": loan_id,
        "stage": stage,
        "status": status,
        "completed_at": now,
        "parties": json.dumps([p.model_dump() for p in parties]),
    }
    inserted = await uow.session.execute(insert_new(_LOAN_VERIFICATION, uow.dialect).values(**row))
    if inserted.rowcount != 1:  # type: ignore[attr-defined]
        return  # already reported
    enqueue(
        uow,
        LoanVerificationCompleted(
            loan_id=loan_id,
            stage=stage,
            branch_id=views[0].branch_id,
            status=status,
            parties=parties,
            completed_at=now,
        ),
        key=loan_id,
    )
