"""Idempotency-Key: the first request with a key claims it; its stored result answers every repeat."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from services.outcomes.attempts import AttemptRejected
from services.outcomes.models import IdempotencyRecord
from shared.db import Database, UnitOfWork, utcnow

# A claim older than this belongs to a request that died between claim and result; a retry may take it.
STALE_AFTER = timedelta(minutes=2)


@dataclass(frozen=True)
class Claim:
    key: str
    at: datetime  # when this request claimed the key; also the token that proves the claim is still ours


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: Any


class KeyConflict(AttemptRejected):
    """The key cannot be used for this request now (409 in flight, 422 another body)."""


IN_FLIGHT = "a request with this Idempotency-Key is still in flight; retry later to get its result"


async def claim(*, db: Database, key: str, digest: str) -> Claim | Replay:
    """Claim the key in its own committed transaction, or return the first result; raise KeyConflict."""
    now = utcnow()
    table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
    async with db.uow() as uow:
        earlier = await uow.session.get(IdempotencyRecord, key)
        if earlier is None:
            uow.session.add(
                IdempotencyRecord(
                    key=key, request_hash=digest, status_code=0, response="", state="in_flight", created_at=now
                )
            )
        elif earlier.request_hash != digest:
            raise KeyConflict(422, "Idempotency-Key was already used with a different body")
        elif earlier.state == "done":
            return Replay(earlier.status_code, json.loads(earlier.response))
        elif earlier.created_at > now - STALE_AFTER:
            raise KeyConflict(409, IN_FLIGHT)
        else:
            taken = await uow.session.execute(
                sa.update(table)
                .where(table.c.key == key, table.c.state == "in_flight", table.c.created_at == earlier.created_at)
                .values(created_at=now)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise KeyConflict(409, IN_FLIGHT)
        try:
            await uow.commit()
        except sa.exc.IntegrityError:
            raise KeyConflict(409, IN_FLIGHT) from None  # a concurrent request claimed it first
    return Claim(key=key, at=now)


async def finish(*, uow: UnitOfWork, claim: Claim, status_code: int, response: str) -> None:
    """Store the result in the request's own transaction; fail if the claim was taken over meanwhile."""
    table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
    done = await uow.session.execute(
        sa.update(table)
        .where(table.c.key == claim.key, table.c.state == "in_flight", table.c.created_at == claim.at)
        .values(state="done", status_code=status_code, response=response)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise KeyConflict(409, IN_FLIGHT)


async def release(*, db: Database, claim: Claim) -> None:
    """Give the key back when the request had no effect (rejected or failed), so a retry runs afresh."""
    async with db.uow() as uow:
        await uow.session.execute(
            sa.delete(IdempotencyRecord).where(
                col(IdempotencyRecord.key) == claim.key,
                col(IdempotencyRecord.state) == "in_flight",
                col(IdempotencyRecord.created_at) == claim.at,
            )
        )
        await uow.commit()
