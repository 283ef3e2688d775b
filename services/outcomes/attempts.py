"""Recording one call attempt: validation, the attempt row, and the events it causes."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Self

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.outcomes.models import Attempt, CallbackView
from services.outcomes.verification import complete_stage, lock_loan_of
from shared.crypto import Cipher
from shared.db import UnitOfWork, utcnow
from shared.errors import Rejected
from shared.events import (
    CLOSED_STATES,
    AttemptChannel,
    CallbackFields,
    CallbackOutcomeRecorded,
    CallbackRefused,
    CallbackState,
    Disposition,
    ReasonCode,
)
from shared.metrics import REFUSALS
from shared.outbox import enqueue

# Outcomes hears of callbacks and their attempts from the scheduler's events: ask again shortly.
RETRY_AFTER_S = 2

_VIEW: sa.Table = CallbackView.__table__  # type: ignore[attr-defined]
_ATTEMPT: sa.Table = Attempt.__table__  # type: ignore[attr-defined]
# Built once: a statement object made per request pays SQLAlchemy's cache-key walk every time.
_INSERT_ATTEMPT = sa.insert(_ATTEMPT)
_TOUCH = (
    sa.update(_VIEW)
    .where(_VIEW.c.callback_id == sa.bindparam("cb"))
    .values(updated_at=sa.bindparam("now", type_=_VIEW.c.updated_at.type))
    .returning(*_VIEW.c)
)

# The dispositions that close a callback, and the state they close it in.
CLOSING: dict[str, CallbackState] = {"completed": "completed", "refused": "refused", "wrong_number": "wrong_number"}


class AttemptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disposition: Disposition
    reason_code: ReasonCode | None = None
    # Who called: an agent's key names them; a supervisor or admin may name the agent they record for.
    agent_id: str | None = Field(default=None, min_length=1, max_length=128)
    started_at: AwareDatetime | None = None
    duration_s: int | None = Field(default=None, ge=0, le=86_400)
    notes: str | None = Field(default=None, max_length=4000)
    reschedule_to: AwareDatetime | None = None
    verification: dict[str, bool] = {}
    # The attempt the agent is dialling, from callback.due; without it, outcomes' own (possibly older) number.
    attempt: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.disposition == "refused" and self.reason_code is None:
            raise ValueError("reason_code is required when disposition is refused")
        if self.disposition != "refused" and self.reason_code is not None:
            raise ValueError("reason_code is only allowed when disposition is refused")
        if self.reschedule_to is not None and self.disposition != "reschedule_requested":
            raise ValueError("reschedule_to is only allowed with disposition reschedule_requested")
        if self.reschedule_to is not None and self.reschedule_to <= utcnow():
            raise ValueError("reschedule_to must be in the future")
        return self


class AttemptOut(BaseModel):
    attempt_id: str
    callback_id: str
    loan_id: str
    attempt: int
    disposition: str
    reason_code: str | None
    agent_id: str | None
    recorded_by: str | None
    channel: AttemptChannel
    started_at: datetime | None
    duration_s: int | None
    reschedule_to: datetime | None
    verification: dict[str, bool]
    recorded_at: datetime


def attempt_out(row: Attempt) -> AttemptOut:
    """The attempt as the API shows it: everything but the encrypted notes."""
    return AttemptOut(
        **row.model_dump(exclude={"notes_enc", "verification", "stage", "branch_id", "role"}),
        verification=json.loads(row.verification),
    )


def acting_agent(*, role: str, principal: str | None, claimed: str | None) -> str:
    """The agent an attempt is recorded under (CONTRACT.md section 3): an agent is who their key says."""
    if principal is None:
        # An older role:key entry (refused in production) names nobody: the body says who called.
        if claimed is None:
            raise Rejected(422, "agent_id is required with a key that names no principal")
        return claimed
    if role == "agent":
        if claimed is not None and claimed != principal:
            raise Rejected(403, "an agent records attempts under their own agent_id only")
        return principal
    return claimed or principal  # a supervisor or admin records for the named agent, or as themselves


def attempt_number(*, view: CallbackView, body: AttemptIn) -> int:
    """The attempt being recorded: the one the agent dialled; never a guess ahead of what outcomes knows."""
    if body.attempt is None:
        return view.attempt  # older clients: outcomes' best knowledge
    if body.attempt > view.attempt:
        raise Rejected(
            409, f"attempt {body.attempt} of callback {view.callback_id} is not known here yet",
            retry_after=RETRY_AFTER_S,
        )  # fmt: skip
    return body.attempt


async def record_attempt(
    *,
    uow: UnitOfWork,
    callback_id: str,
    body: AttemptIn,
    cipher: Cipher,
    agent_id: str | None = None,
    recorded_by: str | None = None,
    channel: AttemptChannel = "phone",
) -> AttemptOut:
    """Store the attempt under `agent_id`, close the callback on a final disposition, and emit what follows.

    A few Core statements, no ORM flush: this is the hot path of the outcomes API.
    """
    # The party's own page has no agent (CONTRACT.md 2.3); a phone call always has one.
    if channel == "phone" and agent_id is None:
        raise Rejected(422, "agent_id is required for a phone attempt")
    if channel != "phone":
        agent_id = None
    now = utcnow()
    closed_as = CLOSING.get(body.disposition)
    if closed_as is None:
        # Nothing closes: locking (and touching) this callback is enough to see it as it is now.
        touched = await uow.execute(_TOUCH, {"cb": callback_id, "now": now})
        views = [CallbackView(**row._mapping) for row in touched]
    else:
        # Two closings of one loan take turns, so one of them sees the loan's last callback close.
        views = await lock_loan_of(uow=uow, callback_id=callback_id)
    view = next((v for v in views if v.callback_id == callback_id), None)
    if view is None:
        raise Rejected(404, f"callback {callback_id} not found (yet)", retry_after=RETRY_AFTER_S)
    number = _accepted(view=view, body=body, now=now)
    row = AttemptOut(
        attempt_id=str(uuid.uuid4()),
        callback_id=callback_id,
        loan_id=view.loan_id,
        attempt=number,
        disposition=body.disposition,
        reason_code=body.reason_code,
        agent_id=agent_id,
        recorded_by=recorded_by,
        channel=channel,
        started_at=body.started_at,
        duration_s=body.duration_s,
        reschedule_to=body.reschedule_to,
        verification=body.verification,
        recorded_at=now,
    )
    stored = {
        **dict(row), "stage": view.stage, "branch_id": view.branch_id, "role": view.role,
        "notes_enc": cipher.encrypt(body.notes) if body.notes else None, "verification": json.dumps(body.verification),
    }  # fmt: skip
    await uow.execute(_INSERT_ATTEMPT, stored)
    refusals = 0
    if closed_as is not None:
        view.state, view.final_disposition, view.closed_at, view.updated_at = closed_as, body.disposition, now, now
        view.reason_code, view.agent_id, view.channel = body.reason_code, agent_id, channel
        refusals = await _close(uow=uow, view=view, counting_refusals=body.disposition == "refused")
    ref = CallbackFields(
        loan_id=view.loan_id, callback_id=callback_id, party_id=view.party_id, role=view.role, stage=view.stage,
        branch_id=view.branch_id, attempt=number, state=view.state,
    )  # fmt: skip
    enqueue(
        uow,
        CallbackOutcomeRecorded(
            **ref,
            attempt_id=row.attempt_id,
            disposition=body.disposition,
            reason_code=body.reason_code,
            agent_id=agent_id,
            channel=channel,
            recorded_at=now,
            reschedule_to=body.reschedule_to,
        ),
        key=view.loan_id,
    )
    if body.disposition == "refused":
        assert body.reason_code is not None
        REFUSALS.labels(body.reason_code).inc()
        enqueue(
            uow,
            CallbackRefused(
                **ref,  # a refusal closed the callback: its state is "refused"
                reason_code=body.reason_code,
                agent_id=agent_id,
                refusals_for_loan=refusals,
                occurred_at=now,
            ),
            key=view.loan_id,
        )
    if closed_as is not None:
        stage = [v for v in views if v.stage == view.stage and not v.superseded]
        await complete_stage(uow=uow, loan_id=view.loan_id, stage=view.stage, views=stage, now=now)
    return row


def _accepted(*, view: CallbackView, body: AttemptIn, now: datetime) -> int:
    """The attempt number to record on this callback as it is now, or Rejected."""
    if view.state in CLOSED_STATES:
        raise Rejected(409, f"callback {view.callback_id} is already closed ({view.state})")
    if view.deadline is not None and now >= view.deadline:
        # The scheduler expires it at the deadline; accepting a result now would let the two disagree.
        raise Rejected(409, f"callback {view.callback_id} passed its deadline and is expiring")
    number = attempt_number(view=view, body=body)
    items = set(json.loads(view.verification_items))
    unknown = sorted(set(body.verification) - items)
    if unknown:
        raise Rejected(422, f"unknown verification items {unknown}; expected some of {sorted(items)}")
    return number


async def _close(*, uow: UnitOfWork, view: CallbackView, counting_refusals: bool) -> int:
    """Write the closing attempt's fields to the callback; with a refusal, the loan's refusals (this one too)."""
    closing = sa.update(_VIEW).where(_VIEW.c.callback_id == view.callback_id).values(
        state=view.state, final_disposition=view.final_disposition, closed_at=view.closed_at,
        updated_at=view.updated_at, reason_code=view.reason_code, agent_id=view.agent_id, channel=view.channel,
    )  # fmt: skip
    if not counting_refusals:
        await uow.session.execute(closing)
        return 0
    # Counted after the attempt's insert and under the loan's lock: concurrent refusals are counted in turn.
    refused = (
        sa.select(sa.func.count())
        .select_from(_ATTEMPT)
        .where(_ATTEMPT.c.loan_id == view.loan_id, _ATTEMPT.c.disposition == "refused")
        .scalar_subquery()
    )
    return int((await uow.session.execute(closing.returning(refused))).scalar_one())
