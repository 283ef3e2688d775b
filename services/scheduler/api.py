"""Scheduler HTTP API (CONTRACT.md section 3): list, show and cancel callbacks; show the policy."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, Field
from sqlmodel import col, select

from services.scheduler.callbacks import close, find, flags_of, publish, ref
from services.scheduler.models import Callback, CallbackEvent
from shared import idempotency
from shared.db import Database, UnitOfWork, utcnow
from shared.events import CLOSED_STATES, CallbackCancelled, CallbackState, Role, Stage
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


class CallbackPage(BaseModel):
    items: list[CallbackOut]
    next_cursor: str | None


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


def _db(request: Request) -> Database:
    db: Database = request.app.state.runtime.db
    return db


@router.get("/callbacks", response_model=CallbackPage)
async def list_callbacks(
    request: Request,
    _: AgentAuth,
    loan_id: str | None = None,
    state: CallbackState | None = None,
    party_id: str | None = None,
    role: Role | None = None,
    stage: Stage | None = None,
    branch_id: str | None = None,
    flag: Annotated[str | None, Query(pattern=r"^[a-z_]+$")] = None,
    due_from: AwareDatetime | None = None,
    due_to: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d+$")] = None,
) -> CallbackPage:
    """Callbacks, oldest first, filtered; pass `next_cursor` back as `cursor` for the next page."""
    query = select(Callback).order_by(col(Callback.seq)).limit(limit + 1)
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
    if cursor:
        query = query.where(col(Callback.seq) > int(cursor))
    async with _db(request).uow() as uow:
        rows = list((await uow.session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return CallbackPage(items=[_out(cb) for cb in rows], next_cursor=str(rows[-1].seq) if more else None)


@router.get("/callbacks/{callback_id}", response_model=CallbackDetail)
async def get_callback(request: Request, callback_id: str, _: AgentAuth) -> CallbackDetail:
    """One callback with its timeline: every lifecycle event and outcome, oldest first."""
    async with _db(request).uow() as uow:
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
    request: Request, callback_id: str, body: CancelIn, who: SupervisorAuth, idempotency_key: IdempotencyKey = None
) -> Any:
    """A supervisor stops a callback; dialers and agents learn it from `callback.cancelled`."""

    async def cancel(uow: UnitOfWork) -> CallbackOut:
        cb = await find(uow=uow, callback_id=callback_id, lock=True)
        if cb is None:
            raise problem(404, f"callback {callback_id} not found")
        if cb.state in CLOSED_STATES:
            raise problem(409, f"callback {callback_id} is already {cb.state}")
        await close(uow=uow, cb=cb, state="cancelled", now=utcnow())
        # The reason is free text a supervisor typed: kept encrypted here, never put on a topic.
        cb.cancel_note_enc = request.app.state.runtime.cipher.encrypt(body.reason)
        publish(uow, cb, CallbackCancelled(**ref(cb), reason="operator"))  # type: ignore[arg-type]
        return _out(cb)

    keyed = idempotency.keyed(
        idempotency_key, who=who, operation="scheduler.cancel", params={"callback_id": callback_id}, body=body
    )
    return await idempotency.once(db=_db(request), keyed=keyed, status_code=200, run=cancel)


@router.get("/policy")
async def get_policy(request: Request, _: AgentAuth) -> dict[str, Any]:
    """The policy in force."""
    policy = request.app.state.policy
    result: dict[str, Any] = policy.model_dump(mode="json")
    return result
