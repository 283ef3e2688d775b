"""Outcomes HTTP API: agents record attempts and read verifications; supervisors read refusal statistics."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query
from pydantic import AwareDatetime
from sqlmodel import col, select

from services.outcomes.attempts import AttemptIn, AttemptOut, acting_agent, attempt_out, record_attempt
from services.outcomes.models import Attempt, CallbackView
from services.outcomes.stats import GroupBy, RefusalStats, StatsRequestError, refusal_stats
from services.outcomes.verification import StageVerification, loan_stages
from shared import idempotency
from shared.api import CipherDep, DatabaseDep, PathId, PolicyDep, QueryId
from shared.db import UnitOfWork, utcnow
from shared.idempotency import IdempotencyKey
from shared.web import AgentAuth, SupervisorAuth, problem

router = APIRouter(prefix="/v1", tags=["outcomes"])


@router.post("/callbacks/{callback_id}/attempts", status_code=201, response_model=AttemptOut)
async def post_attempt(
    db: DatabaseDep,
    cipher: CipherDep,
    callback_id: PathId,
    body: AttemptIn,
    who: AgentAuth,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Record the outcome of one call."""

    agent_id = acting_agent(role=who.role, principal=who.name, claimed=body.agent_id)

    async def record(uow: UnitOfWork) -> AttemptOut:
        return await record_attempt(
            uow=uow, callback_id=callback_id, body=body, cipher=cipher, agent_id=agent_id, recorded_by=who.name
        )

    keyed = idempotency.keyed(
        idempotency_key, who=who, operation="outcomes.attempt", params={"callback_id": callback_id}, body=body
    )
    return await idempotency.once(db=db, keyed=keyed, status_code=201, run=record)


@router.get("/callbacks/{callback_id}/attempts", response_model=list[AttemptOut])
async def list_attempts(db: DatabaseDep, callback_id: PathId, _: AgentAuth) -> list[AttemptOut]:
    """Every attempt recorded for a callback, oldest first."""
    async with db.uow() as uow:
        if await uow.session.get(CallbackView, callback_id) is None:
            raise problem(404, f"callback {callback_id} not found")
        rows = (
            await uow.session.execute(
                select(Attempt).where(Attempt.callback_id == callback_id).order_by(col(Attempt.recorded_at))
            )
        ).scalars()
        return [attempt_out(r) for r in rows]


@router.get("/loans/{loan_id}/verification", response_model=list[StageVerification])
async def loan_verification(db: DatabaseDep, loan_id: PathId, _: AgentAuth) -> list[StageVerification]:
    """The loan's verification per stage: the completed result, or pending with each party's state."""
    async with db.uow() as uow:
        return await loan_stages(uow=uow, loan_id=loan_id)


def _zone(tz: str) -> str:
    """The IANA zone name, or a 422 naming it."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise problem(422, f"unknown IANA time zone {tz!r}") from None
    return tz


@router.get("/stats/refusals", response_model=RefusalStats, response_model_by_alias=True, tags=["stats"])
async def stats_refusals(
    db: DatabaseDep,
    policy: PolicyDep,
    _: SupervisorAuth,
    start: Annotated[AwareDatetime | None, Query(alias="from", description="inclusive; default to − 30 days")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to", description="end (exclusive); default now")] = None,
    group_by: GroupBy = "reason",
    compare_from: Annotated[AwareDatetime | None, Query(description="baseline period start")] = None,
    compare_to: Annotated[AwareDatetime | None, Query(description="baseline period end")] = None,
    tz: Annotated[str, Query(max_length=64, description="IANA zone of day/hour buckets")] = "Asia/Shanghai",
    branch_id: QueryId = None,
    experiment: QueryId = None,  # with group_by=arm: the experiment's name
) -> RefusalStats:
    """Closed callbacks, completions, refusals and the refusal rate per group, optionally against a baseline."""
    end = end or utcnow()
    start = start or end - timedelta(days=30)
    if (compare_from is None) != (compare_to is None):
        raise problem(422, "give both compare_from and compare_to, or neither")
    compare = (compare_from, compare_to) if compare_from and compare_to else None
    # The policy's arm order: its first arm is the one the others are tested against.
    arms = next(([a.name for a in e.arms] for e in policy.experiments if e.name == experiment), [])
    async with db.uow() as uow:
        try:
            return await refusal_stats(
                uow=uow, start=start, end=end, group_by=group_by, tz=_zone(tz), branch_id=branch_id, compare=compare,
                experiment=experiment, arm_order=arms,
            )  # fmt: skip
        except StatsRequestError as exc:
            raise problem(422, str(exc)) from None
