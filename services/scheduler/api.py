"""Scheduler HTTP API (CONTRACT.md section 3): list, show and cancel callbacks; show the policy."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field
from sqlmodel import col, select

from services.scheduler.callbacks import cancel_by_operator, find, flags_of
from services.scheduler.models import Callback, CallbackEvent
from shared import idempotency
from shared.api import CipherDep, Cursor, DatabaseDep, Limit, Page, PathId, PolicyDep, QueryId, paginate
from shared.db import UnitOfWork
from shared.events import CallbackState, Role, Stage
from shared.idempotency import IdempotencyKey
from shared.web import AgentAuth, SupervisorAuth, problem

router = APIRouter(prefix="/v1", tags=["callbacks"])


class CallbackOut(BaseModel):
    callback_id: str
    loan_id: str
    stage: str
    branch_id: str
    party_id: str
    role: str
    state: str
    attempt: int
    calls_made: int
    due_at: datetime
    deadline: datetime
    notice_at: datetime
    flags: list[str]
    timezone: str
    language: str
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class TimelineEntry(BaseModel):
    type: str
    at: datetime
    detail: dict[str, Any]


class CallbackDetail(CallbackOut):
    timeline: list[TimelineEntry]


class CancelIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


def _out(cb: Callback) -> CallbackOut:
    # Contact details stay encrypted in the database; the API shows ids only.
    return CallbackOut(
        **cb.model_dump(
            exclude={"contact_enc", "phone_index", "flags", "seq", "window_start", "window_end", "cancel_note_enc"}
        ),
        flags=flags_of(cb),
    )


@router.get("/callbacks", response_model=Page[CallbackOut])
async def list_callbacks(
    db: DatabaseDep,
    _: AgentAuth,
    loan_id: QueryId = None,
    state: CallbackState | None = None,
    party_id: QueryId = None,
    role: Role | None = None,
    stage: Stage | None = None,
    branch_id: QueryId = None,
    flag: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
    due_from: AwareDatetime | None = None,
    due_to: AwareDatetime | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[CallbackOut]:
    """Callbacks, oldest first, filtered; pass `next_cursor` back as `cursor` for the next page."""
    query = select(Callback)
    equal = {"loan_id": loan_id, "state": state, "party_id": party_id, "role": role, "stage": stage}
    for name, value in {**equal, "branch_id": branch_id}.items():
        if value:
            query = query.where(getattr(Callback, name) == value)
    if flag:
        query = query.where(("," + col(Callback.flags) + ",").like(f"%,{flag},%"))
    if due_from:
        query = query.where(col(Callback.due_at) >= due_from)
    if due_to:
        query = query.where(col(Callback.due_at) < due_to)
    async with db.uow() as uow:
        return await paginate(uow, query, seq=col(Callback.seq), limit=limit, cursor=cursor, out=_out)


@router.get("/callbacks/{callback_id}", response_model=CallbackDetail)
async def get_callback(db: DatabaseDep, callback_id: PathId, _: AgentAuth) -> CallbackDetail:
    """One callback with its timeline: every lifecycle event and outcome, oldest first."""
    async with db.uow() as uow:
        cb = await find(uow=uow, callback_id=callback_id)
        if cb is None:
            raise problem(404, f"callback {callback_id} not found")
        lines = await uow.session.execute(
            select(CallbackEvent)
            .where(CallbackEvent.callback_id == callback_id)
            .order_by(col(CallbackEvent.at), col(CallbackEvent.id))
        )
        timeline = [TimelineEntry(type=e.type, at=e.at, detail=json.loads(e.detail)) for e in lines.scalars()]
    return CallbackDetail(**_out(cb).model_dump(), timeline=timeline)


@router.post("/callbacks/{callback_id}/cancel", response_model=CallbackOut)
async def cancel_callback(
    db: DatabaseDep,
    cipher: CipherDep,
    callback_id: PathId,
    body: CancelIn,
    who: SupervisorAuth,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """A supervisor stops a callback; dialers and agents learn it from `callback.cancelled`."""

    async def cancel(uow: UnitOfWork) -> CallbackOut:
        return _out(await cancel_by_operator(uow=uow, callback_id=callback_id, reason=body.reason, cipher=cipher))

    keyed = idempotency.keyed(
        idempotency_key, who=who, operation="scheduler.cancel", params={"callback_id": callback_id}, body=body
    )
    return await idempotency.once(db=db, keyed=keyed, status_code=200, run=cancel)


@router.get("/policy")
async def get_policy(policy: PolicyDep, _: AgentAuth) -> dict[str, Any]:
    """The policy in force."""
    result: dict[str, Any] = policy.model_dump(mode="json")
    return result
