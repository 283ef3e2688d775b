"""Scheduler HTTP API (CONTRACT.md section 3): list, show and cancel callbacks; show the policy."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import col, select

from services.scheduler.handlers import close, find, ref
from services.scheduler.models import Callback
from shared.db import Database, utcnow
from shared.events import CLOSED_STATES, CallbackCancelled
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
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class CallbackPage(BaseModel):
    items: list[CallbackOut]
    next_cursor: str | None


class CancelIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


def _out(cb: Callback) -> CallbackOut:
    # Contact details stay encrypted in the database; the API shows ids only.
    return CallbackOut(
        **cb.model_dump(exclude={"contact_enc", "phone_index", "flags", "seq"}),
        flags=[f for f in cb.flags.split(",") if f],
    )


def _db(request: Request) -> Database:
    db: Database = request.app.state.runtime.db
    return db


@router.get("/callbacks", response_model=CallbackPage)
async def list_callbacks(
    request: Request,
    _: AgentAuth,
    loan_id: str | None = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d+$")] = None,
) -> CallbackPage:
    """Callbacks, oldest first; pass `next_cursor` back as `cursor` for the next page."""
    query = select(Callback).order_by(col(Callback.seq)).limit(limit + 1)
    if loan_id:
        query = query.where(Callback.loan_id == loan_id)
    if state:
        query = query.where(Callback.state == state)
    if cursor:
        query = query.where(col(Callback.seq) > int(cursor))
    async with _db(request).uow() as uow:
        rows = list((await uow.session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return CallbackPage(items=[_out(cb) for cb in rows], next_cursor=str(rows[-1].seq) if more else None)


@router.get("/callbacks/{callback_id}", response_model=CallbackOut)
async def get_callback(request: Request, callback_id: str, _: AgentAuth) -> CallbackOut:
    async with _db(request).uow() as uow:
        cb = await find(uow=uow, callback_id=callback_id)
    if cb is None:
        raise problem(404, f"callback {callback_id} not found")
    return _out(cb)


@router.post("/callbacks/{callback_id}/cancel", response_model=CallbackOut)
async def cancel_callback(request: Request, callback_id: str, body: CancelIn, who: SupervisorAuth) -> CallbackOut:
    """A supervisor stops a callback; dialers and agents learn it from `callback.cancelled`."""
    async with _db(request).uow() as uow:
        cb = await find(uow=uow, callback_id=callback_id)
        if cb is None:
            raise problem(404, f"callback {callback_id} not found")
        if cb.state in CLOSED_STATES:
            raise problem(409, f"callback {callback_id} is already {cb.state}")
        await close(uow=uow, cb=cb, state="cancelled", now=utcnow())
        uow.emit(CallbackCancelled(**ref(cb), reason="operator", note=body.reason), key=cb.loan_id)  # type: ignore[arg-type]
        await uow.commit()
    return _out(cb)


@router.get("/policy")
async def get_policy(request: Request, _: AgentAuth) -> dict[str, Any]:
    """The policy in force."""
    policy = request.app.state.policy
    result: dict[str, Any] = policy.model_dump(mode="json")
    return result
