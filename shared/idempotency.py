"""Idempotency-Key (CONTRACT.md section 3): one table, one header and one helper for every service's writes.

Scope: whose key it is, the principal of the API key that sent it (or `role:fingerprint` for a key
without one), so two clients never replay, block or spoil each other's keys. Within a scope a key
names one request. The request hash covers the operation (e.g. "scheduler.cancel"), the path
parameters and the validated body (defaults filled in, so `{}` and `{"note": ""}` are one
request): the same key sent to another callback, another action or with another body is 422, never a second request.

The first request claims the key in its own committed transaction (state "in_flight"), so a
duplicate arriving meanwhile sees the claim and gets 409. Its result (status and JSON body) is
stored in the request's own transaction, with its effects (state "done"), and replayed for every
repeat. A request that fails or is rejected deletes its claim, so a retry runs afresh. A claim
older than STALE_AFTER belongs to a request that died between claim and result: a retry takes it
over, and should the old request still finish, storing its result fails and its effects roll back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlmodel import Field, SQLModel

from shared.db import Database, UnitOfWork, UTCDateTime, utcnow
from shared.web import Principal

KEY_MAX_LENGTH = 255
STALE_AFTER = timedelta(minutes=2)
IN_FLIGHT_RETRY_AFTER = "1"
IN_FLIGHT = "a request with this Idempotency-Key is still in flight; retry later to get its result"
OTHER_REQUEST = "Idempotency-Key was already used with a different request"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        description="Repeat a write safely: the same key and body replay the first response.",
    ),
]


class IdempotencyRecord(SQLModel, table=True):
    """One key of one caller: claimed while its first request runs, then that request's response."""

    __tablename__ = "idempotency_key"

    scope: str = Field(primary_key=True, max_length=128)
    key: str = Field(primary_key=True, max_length=KEY_MAX_LENGTH)
    request_hash: str = Field(max_length=64)
    state: str = Field(max_length=16)  # "in_flight" or "done"
    status_code: int = 0
    response: str = Field(default="", sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UTCDateTime)  # when claimed; also the token that proves a claim is ours


def create_idempotency_table(op: object) -> None:
    """Used by each service's migration: the idempotency_key table of IdempotencyRecord."""
    op.create_table(  # type: ignore[attr-defined]
        "idempotency_key",
        sa.Column("scope", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(KEY_MAX_LENGTH), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


class KeyConflict(HTTPException):
    """The key cannot serve this request now: 409 while its first request runs, 422 for another request."""

    @classmethod
    def in_flight(cls) -> KeyConflict:
        # The first request usually ends within a second; one that died is taken over after STALE_AFTER.
        return cls(409, IN_FLIGHT, headers={"Retry-After": IN_FLIGHT_RETRY_AFTER})


@dataclass(frozen=True)
class Keyed:
    """A request sent with an Idempotency-Key: the key, whose it is, and the hash of what it asks."""

    scope: str
    key: str
    digest: str


@dataclass(frozen=True)
class Claim:
    keyed: Keyed
    at: datetime


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: Any


def keyed(
    key: str | None, *, who: Principal, operation: str, params: Mapping[str, str], body: BaseModel
) -> Keyed | None:
    """The key with its scope and request hash; None for a request sent without a key."""
    if key is None:
        return None
    asked = {"operation": operation, "params": dict(params), "body": body.model_dump(mode="json")}
    digest = hashlib.sha256(json.dumps(asked, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return Keyed(scope=who.scope, key=key, digest=digest)


Run = Callable[[UnitOfWork], Awaitable[BaseModel]]


async def once(*, db: Database, keyed: Keyed | None, status_code: int, run: Run) -> JSONResponse:
    """Replay the key's stored response, or run the request and store its response with its effects.

    `run` makes the request's changes in the unit of work it is given and returns the response body;
    it raises (an HTTPException for a rejection) to change nothing. This function commits.
    """
    if keyed is None:
        return await _run(db=db, claim=None, status_code=status_code, run=run)
    claimed = await claim(db=db, keyed=keyed)
    if isinstance(claimed, Replay):
        return JSONResponse(claimed.body, status_code=claimed.status_code)
    try:
        return await _run(db=db, claim=claimed, status_code=status_code, run=run)
    except BaseException:
        await release(db=db, claim=claimed)
        raise


async def _run(*, db: Database, claim: Claim | None, status_code: int, run: Run) -> JSONResponse:
    """One transaction: the request's effects and, with a key, its stored response."""
    async with db.uow() as uow:
        body = (await run(uow)).model_dump(mode="json")
        if claim is not None:
            await _finish(uow=uow, claim=claim, status_code=status_code, response=_seal(db, json.dumps(body)))
        await uow.commit()
    return JSONResponse(body, status_code=status_code)


def _seal(db: Database, response: str) -> str:
    # A response may show its caller decrypted notes: at rest it is encrypted like every personal field.
    return db.seal(response) if db.cipher else response


def _table() -> sa.Table:
    table: sa.Table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
    return table


def _ours(claim: Claim) -> sa.ColumnElement[bool]:
    """The row of this claim, still in flight and not taken over."""
    table = _table()
    return sa.and_(
        table.c.scope == claim.keyed.scope,
        table.c.key == claim.keyed.key,
        table.c.state == "in_flight",
        table.c.created_at == claim.at,
    )


async def claim(*, db: Database, keyed: Keyed) -> Claim | Replay:
    """Claim the key in its own committed transaction, or return the first response; raise KeyConflict."""
    now = utcnow()
    async with db.uow() as uow:
        earlier = await uow.session.get(IdempotencyRecord, (keyed.scope, keyed.key))
        if earlier is None:
            uow.session.add(
                IdempotencyRecord(
                    scope=keyed.scope, key=keyed.key, request_hash=keyed.digest, state="in_flight", created_at=now
                )
            )
        elif earlier.request_hash != keyed.digest:
            raise KeyConflict(422, OTHER_REQUEST)
        elif earlier.state == "done":
            return Replay(earlier.status_code, json.loads(db.unseal(earlier.response)))
        elif earlier.created_at > now - STALE_AFTER:
            raise KeyConflict.in_flight()
        else:
            stale = Claim(keyed=keyed, at=earlier.created_at)
            taken = await uow.session.execute(sa.update(_table()).where(_ours(stale)).values(created_at=now))
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise KeyConflict.in_flight()  # another retry took it over first
        try:
            await uow.commit()
        except sa.exc.IntegrityError:
            raise KeyConflict.in_flight() from None  # a concurrent request claimed it first
    return Claim(keyed=keyed, at=now)


async def _finish(*, uow: UnitOfWork, claim: Claim, status_code: int, response: str) -> None:
    """Store the response in the request's transaction; fail if the claim was taken over meanwhile."""
    done = await uow.session.execute(
        sa.update(_table()).where(_ours(claim)).values(state="done", status_code=status_code, response=response)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise KeyConflict.in_flight()


async def release(*, db: Database, claim: Claim) -> None:
    """Give the key back after a request that changed nothing, so a retry runs afresh."""
    async with db.uow() as uow:
        await uow.session.execute(sa.delete(_table()).where(_ours(claim)))
        await uow.commit()
