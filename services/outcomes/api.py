"""Outcomes HTTP API: agents record attempts; anyone with a key reads a loan's verification."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlmodel import col, select

from services.outcomes.attempts import AttemptIn, AttemptOut, AttemptRejected, attempt_out, record_attempt
from services.outcomes.models import Attempt, IdempotencyRecord, LoanVerification
from shared.db import Database
from shared.web import AgentAuth, problem

router = APIRouter(prefix="/v1", tags=["outcomes"])


def _db(request: Request) -> Database:
    db: Database = request.app.state.runtime.db
    return db


@router.post("/callbacks/{callback_id}/attempts", status_code=201, response_model=AttemptOut)
async def post_attempt(
    request: Request,
    callback_id: str,
    body: AttemptIn,
    who: AgentAuth,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Any:
    """Record the outcome of one call."""
    db = _db(request)
    scoped = f"attempt:{callback_id}:{idempotency_key}" if idempotency_key else None
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    async with db.uow() as uow:
        if scoped:
            earlier = await uow.session.get(IdempotencyRecord, scoped)
            if earlier is not None:
                if earlier.request_hash != digest:
                    raise problem(422, "Idempotency-Key was already used with a different body")
                return JSONResponse(json.loads(earlier.response), status_code=earlier.status_code)
        try:
            row = await record_attempt(
                uow=uow, callback_id=callback_id, body=body, cipher=request.app.state.runtime.cipher
            )
        except AttemptRejected as exc:
            raise problem(exc.status, exc.detail) from None
        out = attempt_out(row)
        if scoped:
            uow.session.add(
                IdempotencyRecord(key=scoped, request_hash=digest, status_code=201, response=out.model_dump_json())
            )
        try:
            await uow.commit()
        except sa.exc.IntegrityError:
            # The same key committed first from a concurrent request.
            raise problem(
                409, "a request with this Idempotency-Key is in flight or done; retry to get its result"
            ) from None
    return out


@router.get("/callbacks/{callback_id}/attempts", response_model=list[AttemptOut])
async def list_attempts(request: Request, callback_id: str, _: AgentAuth) -> list[AttemptOut]:
    async with _db(request).uow() as uow:
        rows = (
            await uow.session.execute(
                select(Attempt).where(Attempt.callback_id == callback_id).order_by(col(Attempt.recorded_at))
            )
        ).scalars()
        return [attempt_out(r) for r in rows]


class VerificationOut(BaseModel):
    loan_id: str
    stage: str
    status: str
    parties: list[dict[str, Any]]
    completed_at: Any


@router.get("/loans/{loan_id}/verification", response_model=list[VerificationOut])
async def loan_verification(request: Request, loan_id: str, _: AgentAuth) -> list[VerificationOut]:
    """The loan's completed verifications, one per stage."""
    async with _db(request).uow() as uow:
        rows = list(
            (await uow.session.execute(select(LoanVerification).where(LoanVerification.loan_id == loan_id))).scalars()
        )
    if not rows:
        raise problem(404, f"no completed verification for loan {loan_id}")
    return [
        VerificationOut(
            loan_id=r.loan_id,
            stage=r.stage,
            status=r.status,
            parties=json.loads(r.parties),
            completed_at=r.completed_at,
        )
        for r in rows
    ]
