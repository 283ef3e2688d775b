"""Recording one call attempt: validation, the attempt row, and the events it causes."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.outcomes.models import Attempt, CallbackView
from services.outcomes.verification import complete_if_closed, lock_loan, refusals_for_loan
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
) -> Attempt:
    """Store the attempt under `agent_id`, close the callback on a final disposition, and emit what follows."""
    # The party's own page has no agent (CONTRACT.md 2.3); a phone call always has one.
    if channel == "phone" and agent_id is None:
        raise Rejected(422, "agent_id is required for a phone attempt")
    if channel != "phone":
        agent_id = None
    view = await uow.session.get(CallbackView, callback_id)
    if view is None:
        raise Rejected(404, f"callback {callback_id} not found (yet)", retry_after=RETRY_AFTER_S)
    await lock_loan(uow=uow, loan_id=view.loan_id)  # reloads the view too: another request may have closed it
    if view.state in CLOSED_STATES:
        raise Rejected(409, f"callback {callback_id} is already closed ({view.state})")
    if view.deadline is not None and utcnow() >= view.deadline:
        # The scheduler expires it at the deadline; accepting a result now would let the two disagree.
        raise Rejected(409, f"callback {callback_id} passed its deadline and is expiring")
    number = attempt_number(view=view, body=body)
    items = set(json.loads(view.verification_items))
    unknown = sorted(set(body.verification) - items)
    if unknown:
        raise Rejected(422, f"unknown verification items {unknown}; expected some of {sorted(items)}")
    now = utcnow()
    row = Attempt(
        attempt_id=str(uuid.uuid4()),
        callback_id=callback_id,
        loan_id=view.loan_id,
        stage=view.stage,
        branch_id=view.branch_id,
        role=view.role,
        attempt=number,
        disposition=body.disposition,
        reason_code=body.reason_code,
        agent_id=agent_id,
        recorded_by=recorded_by,
        channel=channel,
        started_at=body.started_at,
        duration_s=body.duration_s,
        notes_enc=cipher.encrypt(body.notes) if body.notes else None,
        reschedule_to=body.reschedule_to,
        verification=json.dumps(body.verification),
        recorded_at=now,
    )
    uow.session.add(row)
    closed_as = CLOSING.get(body.disposition)
    if closed_as is not None:
        view.state = closed_as
        view.final_disposition = body.disposition
        view.closed_at = now
        view.reason_code, view.agent_id, view.channel = body.reason_code, agent_id, channel
    view.updated_at = now
    uow.session.add(view)
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
    await uow.session.flush()
    if body.disposition == "refused":
        assert body.reason_code is not None
        REFUSALS.labels(body.reason_code).inc()
        enqueue(
            uow,
            CallbackRefused(
                **ref,  # a refusal closed the callback: its state is "refused"
                reason_code=body.reason_code,
                agent_id=agent_id,
                refusals_for_loan=await refusals_for_loan(uow=uow, loan_id=view.loan_id),
                occurred_at=now,
            ),
            key=view.loan_id,
        )
    if view.closed_at is not None:
        await complete_if_closed(uow=uow, loan_id=view.loan_id, stage=view.stage, now=now)
    return row
