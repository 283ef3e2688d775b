"""Events in: keep the callback view; close loans' verifications when their last callback closes."""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select

from services.outcomes.models import Attempt, CallbackView, LoanVerification
from shared.db import UnitOfWork, utcnow
from shared.events import (
    CLOSED_STATES,
    CallbackCancelled,
    CallbackDue,
    CallbackExpired,
    CallbackRef,
    CallbackRescheduled,
    CallbackScheduled,
    Event,
    LoanVerificationCompleted,
    PartyResult,
)
from shared.kafka import Handler


async def find_view(*, uow: UnitOfWork, callback_id: str) -> CallbackView | None:
    return await uow.session.get(CallbackView, callback_id)


async def on_lifecycle(*, uow: UnitOfWork, event: CallbackRef) -> None:
    """Mirror the scheduler's callback state; a closing event may complete the loan's verification."""
    view = await find_view(uow=uow, callback_id=event.callback_id)
    now = utcnow()
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
        view.due_at, view.deadline = event.due_at, event.deadline
    elif isinstance(event, CallbackDue | CallbackRescheduled):
        view.due_at = event.due_at
    elif isinstance(event, CallbackExpired | CallbackCancelled):
        view.final_disposition = event.state if isinstance(event, CallbackCancelled) else f"expired:{event.reason}"
        view.closed_at = now
    uow.session.add(view)
    if view.closed_at is not None:
        await uow.session.flush()
        await complete_if_closed(uow=uow, loan_id=view.loan_id, stage=view.stage, now=now)


def verification_status(final: list[str]) -> str:
    """refused if any refused; unreachable if any expired unanswered or wrong number; cancelled; else verified."""
    if "refused" in final:
        return "refused"
    if any(f.startswith("expired") or f == "wrong_number" for f in final):
        return "unreachable"
    if "cancelled" in final:
        return "cancelled"
    return "verified"


async def complete_if_closed(*, uow: UnitOfWork, loan_id: str, stage: str, now: datetime) -> None:
    """Emit loan.verification.completed once every callback of the loan's stage is closed."""
    views = list(
        (
            await uow.session.execute(
                select(CallbackView).where(CallbackView.loan_id == loan_id, CallbackView.stage == stage)
            )
        ).scalars()
    )
    if not views or any(v.state not in CLOSED_STATES for v in views):
        return
    if await uow.session.get(LoanVerification, (loan_id, stage)) is not None:
        return
    parties = [
        PartyResult(
            party_id=v.party_id,
            role=v.role,
            callback_id=v.callback_id,  # type: ignore[arg-type]
            disposition=v.final_disposition or v.state,
        )
        for v in sorted(views, key=lambda v: (v.role, v.party_id))
    ]
    status = verification_status([p.disposition for p in parties])
    uow.session.add(
        LoanVerification(
            loan_id=loan_id,
            stage=stage,
            status=status,
            completed_at=now,
            parties=json.dumps([p.model_dump() for p in parties]),
        )
    )
    uow.emit(
        LoanVerificationCompleted(
            loan_id=loan_id,
            stage=stage,
            branch_id=views[0].branch_id,
            status=status,  # type: ignore[arg-type]
            parties=parties,
            completed_at=now,
        ),
        key=loan_id,
    )


async def refusals_for_loan(*, uow: UnitOfWork, loan_id: str) -> int:
    count = await uow.session.scalar(
        sa.select(sa.func.count())
        .select_from(Attempt)
        .where(col(Attempt.loan_id) == loan_id, col(Attempt.disposition) == "refused")
    )
    return int(count or 0)


def handlers() -> dict[str, Handler]:
    async def lifecycle(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, CallbackRef)
        await on_lifecycle(uow=uow, event=event.data)

    names = ("callback.scheduled", "callback.due", "callback.rescheduled", "callback.cancelled", "callback.expired")
    return dict.fromkeys(names, lifecycle)
