"""Outcomes HTTP API: agents record attempts and read verifications; supervisors read refusal statistics."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel
from sqlmodel import col, select

from services.outcomes.attempts import AttemptIn, AttemptOut, AttemptRejected, attempt_out, record_attempt
from services.outcomes.models import Attempt, CallbackView, LoanVerification
from services.outcomes.stats import GroupBy, RefusalStats, StatsRequestError, refusal_stats
from services.outcomes.verification import party_result, verification_status
from shared import idempotency
from shared.db import UnitOfWork, utcnow
from shared.events import CLOSED_STATES
from shared.idempotency import IdempotencyKey
from shared.runtime import Runtime
from shared.web import AgentAuth, SupervisorAuth, problem

router = APIRouter(prefix="/v1", tags=["outcomes"])


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.post("/callbacks/{callback_id}/attempts", status_code=201, response_model=AttemptOut)
async def post_attempt(
    request: Request, callback_id: str, body: AttemptIn, who: AgentAuth, idempotency_key: IdempotencyKey = None
) -> Any:
    """Record the outcome of one call."""
    runtime = _runtime(request)

    async def record(uow: UnitOfWork) -> AttemptOut:
        try:
            row = await record_attempt(uow=uow, callback_id=callback_id, body=body, cipher=runtime.cipher)
        except AttemptRejected as exc:
            raise problem(exc.status, exc.detail) from None
        return attempt_out(row)

    keyed = idempotency.keyed(
        idempotency_key, who=who, operation="outcomes.attempt", params={"callback_id": callback_id}, body=body
    )
    return await idempotency.once(db=runtime.db, keyed=keyed, status_code=201, run=record)


@router.get("/callbacks/{callback_id}/attempts", response_model=list[AttemptOut])
async def list_attempts(request: Request, callback_id: str, _: AgentAuth) -> list[AttemptOut]:
    """Every attempt recorded for a callback, oldest first."""
    async with _runtime(request).db.uow() as uow:
        if await uow.session.get(CallbackView, callback_id) is None:
            raise problem(404, f"callback {callback_id} not found")
        rows = (
            await uow.session.execute(
                select(Attempt).where(Attempt.callback_id == callback_id).order_by(col(Attempt.recorded_at))
            )
        ).scalars()
        return [attempt_out(r) for r in rows]


class PartyOut(BaseModel):
    party_id: str
    role: str
    callback_id: str
    disposition: str | None  # the final disposition; None while open, or when it expired or was cancelled
    state: str
    reason: str | None = None  # why it expired


class VerificationOut(BaseModel):
    loan_id: str
    stage: str
    status: str  # verified, refused, unreachable, cancelled; "pending" while a callback is open
    parties: list[PartyOut]
    completed_at: datetime | None


@router.get("/loans/{loan_id}/verification", response_model=list[VerificationOut])
async def loan_verification(request: Request, loan_id: str, _: AgentAuth) -> list[VerificationOut]:
    """The loan's verification per stage: the completed result, or pending with each party's state."""
    async with _runtime(request).db.uow() as uow:
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
        raise problem(404, f"no callbacks known for loan {loan_id}")
    return [
        _verification(loan_id=loan_id, stage=stage, views=views, done=done.get(stage))
        for stage in sorted({v.stage for v in views} | set(done))
    ]


def _verification(
    *, loan_id: str, stage: str, views: list[CallbackView], done: LoanVerification | None
) -> VerificationOut:
    """One stage's verification as the API shows it."""
    mine = [v for v in views if v.stage == stage]
    parties = [
        PartyOut(**party_result(v).model_dump())
        if v.state in CLOSED_STATES
        else PartyOut(party_id=v.party_id, role=v.role, callback_id=v.callback_id, disposition=None, state=v.state)
        for v in mine
    ]
    if done is not None:
        return VerificationOut(
            loan_id=loan_id, stage=stage, status=done.status, parties=parties, completed_at=done.completed_at
        )
    finals = [p.disposition for p in parties]
    status = "pending" if None in finals else verification_status([f or "" for f in finals])
    return VerificationOut(loan_id=loan_id, stage=stage, status=status, parties=parties, completed_at=None)


def _zone(tz: str) -> str:
    """The IANA zone name, or a 422 naming it."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise problem(422, f"unknown IANA time zone {tz!r}") from None
    return tz


@router.get("/stats/refusals", response_model=RefusalStats, response_model_by_alias=True, tags=["stats"])
async def stats_refusals(
    request: Request,
    _: SupervisorAuth,
    start: Annotated[AwareDatetime | None, Query(alias="from", description="inclusive; default to − 30 days")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to", description="end (exclusive); default now")] = None,
    group_by: GroupBy = "reason",
    compare_from: Annotated[AwareDatetime | None, Query(description="baseline period start")] = None,
    compare_to: Annotated[AwareDatetime | None, Query(description="baseline period end")] = None,
    tz: Annotated[str, Query(max_length=64, description="IANA zone of day/hour buckets")] = "Asia/Shanghai",
    branch_id: Annotated[str | None, Query(max_length=128)] = None,
) -> RefusalStats:
    """Closed callbacks, completions, refusals and the refusal rate per group, optionally against a baseline."""
    end = end or utcnow()
    start = start or end - timedelta(days=30)
    if (compare_from is None) != (compare_to is None):
        raise problem(422, "give both compare_from and compare_to, or neither")
    compare = (compare_from, compare_to) if compare_from and compare_to else None
    async with _runtime(request).db.uow() as uow:
        try:
            return await refusal_stats(
                uow=uow, start=start, end=end, group_by=group_by, tz=_zone(tz), branch_id=branch_id, compare=compare
            )
        except StatsRequestError as exc:
            raise problem(422, str(exc)) from None
