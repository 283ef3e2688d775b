"""Idempotency-Key (CONTRACT.md section 3): one table, one header and one helper for every service's writes.

Scope: whose key it is, the principal of the API key that sent it (or `role:fingerprint` for a key
without one), so two clients never replay, block or spoil each other's keys. Within a scope a key
names one request. The request hash covers the operation (e.g. "scheduler.cancel"), the path
parameters and the validated body (defaults filled in, so `{}` and `{"note": ""}` are one
request): the same key sent to another callback, another action or with another body is 422, never a second request.

A request claims its key, runs and stores its result (status and JSON body, state "done") in one
transaction, so a request that fails or is rejected leaves no claim behind and a retry runs afresh.
Every repeat replays the stored result. A duplicate arriving while the first still runs gets 409:
on PostgreSQL the claim also takes a transaction-scoped advisory lock on the key, which the duplicate
tries without waiting; SQLite runs one writer at a time, so there it waits and then replays.
`claim` commits a claim on its own, standing for a request that is running elsewhere; a claim
older than STALE_AFTER belongs to a request that died: a retry takes it over.
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

from shared.db import Database, UnitOfWork, UTCDateTime, insert_new, utcnow
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
    it raises (an HTTPException for a rejection) to change nothing. One transaction, which this commits.
    """

    async def request(uow: UnitOfWork) -> JSONResponse:
        claimed = None
        if keyed is not None:
            got = await _claim(uow, keyed)
            if isinstance(got, Replay):
                return JSONResponse(got.body, status_code=got.status_code)
            claimed = got
        body = (await run(uow)).model_dump(mode="json")
        if claimed is not None:
            await _finish(uow=uow, claim=claimed, status_code=status_code, response=_seal(db, json.dumps(body)))
        await uow.commit()
        return JSONResponse(body, status_code=status_code)

    return await db.once_more_if_stale(request)


def _seal(db: Database, response: str) -> str:
    # A response may show its caller decrypted notes: at rest it is encrypted like every personal field.
    return db.seal(response) if db.cipher else response


def _table() -> sa.Table:
    table: sa.Table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
    return table


def _ours() -> sa.ColumnElement[bool]:
    """The claim's row, still in flight and not taken over; bound as b_scope, b_key, b_at (see `_bound`).

    Column names are reserved for an UPDATE's own SET values, hence the b_ prefix.
    """
    table = _table()
    return sa.and_(
        table.c.scope == sa.bindparam("b_scope"),
        table.c.key == sa.bindparam("b_key"),
        table.c.state == "in_flight",
        table.c.created_at == sa.bindparam("b_at"),
    )


def _bound(claim: Claim) -> dict[str, Any]:
    return {"b_scope": claim.keyed.scope, "b_key": claim.keyed.key, "b_at": claim.at}


# The key's advisory lock, tried without waiting, then the claim if the lock was free: one round trip.
_CLAIM_POSTGRES = sa.text(
    """
    WITH gate AS (SELECT pg_try_advisory_xact_lock(hashtextextended(:lock, 0)) AS free),
    claimed AS (
        INSERT INTO idempotency_key (scope, key, request_hash, state, status_code, response, created_at)
        SELECT :scope, :key, :digest, 'in_flight', 0, '', :now FROM gate WHERE gate.free
        ON CONFLICT DO NOTHING RETURNING 1
    )
    SELECT gate.free, EXISTS (SELECT 1 FROM claimed) AS claimed FROM gate
    """
).bindparams(sa.bindparam("now", type_=UTCDateTime()))


async def _claim(uow: UnitOfWork, keyed: Keyed) -> Claim | Replay:
    """Claim the key in the unit of work, or return the first response; raise KeyConflict."""
    now = utcnow()
    if uow.dialect == "postgresql":
        lock = f"idempotency:{uow.db.schema}:{keyed.scope}:{keyed.key}"
        params = {"lock": lock, "scope": keyed.scope, "key": keyed.key, "digest": keyed.digest, "now": now}
        free, claimed = tuple((await uow.execute(_CLAIM_POSTGRES, params)).one())
        if not free:
            raise KeyConflict.in_flight()  # its first request holds the lock until it ends
    else:
        values = {"scope": keyed.scope, "key": keyed.key, "request_hash": keyed.digest, "state": "in_flight"}
        insert = insert_new(_table(), uow.dialect).values(**values, status_code=0, response="", created_at=now)
        claimed = (await uow.session.execute(insert)).rowcount == 1  # type: ignore[attr-defined]
    if claimed:
        return Claim(keyed=keyed, at=now)
    return await _earlier(uow, keyed, now)


async def _earlier(uow: UnitOfWork, keyed: Keyed, now: datetime) -> Claim | Replay:
    """The key was used before: its stored response, 422, 409, or a takeover of an abandoned claim."""
    table = _table()
    where = sa.and_(table.c.scope == keyed.scope, table.c.key == keyed.key)
    columns = (table.c.request_hash, table.c.state, table.c.status_code, table.c.response, table.c.created_at)
    earlier = (await uow.session.execute(sa.select(*columns).where(where))).one()
    if earlier.request_hash != keyed.digest:
        raise KeyConflict(422, OTHER_REQUEST)
    if earlier.state == "done":
        return Replay(earlier.status_code, json.loads(uow.db.unseal(earlier.response)))
    if earlier.created_at > now - STALE_AFTER:
        raise KeyConflict.in_flight()
    stale = Claim(keyed=keyed, at=earlier.created_at)
    taken = await uow.execute(_TAKE_OVER, {**_bound(stale), "b_now": now})
    if taken.rowcount != 1:
        raise KeyConflict.in_flight()  # another retry took it over first
    return Claim(keyed=keyed, at=now)


async def claim(*, db: Database, keyed: Keyed) -> Claim | Replay:
    """Claim the key in a committed transaction of its own: a request running elsewhere, as its duplicates see it."""
    async with db.uow() as uow:
        got = await _claim(uow, keyed)
        await uow.commit()
    return got


# Built once: a statement made per request pays SQLAlchemy's cache-key walk.
_TAKE_OVER = sa.update(_table()).where(_ours()).values(created_at=sa.bindparam("b_now"))
_FINISH = (
    sa.update(_table())
    .where(_ours())
    .values(state="done", status_code=sa.bindparam("b_status"), response=sa.bindparam("b_response"))
)


async def _finish(*, uow: UnitOfWork, claim: Claim, status_code: int, response: str) -> None:
    """Store the response in the request's transaction; fail if the claim was taken over meanwhile."""
    done = await uow.execute(_FINISH, {**_bound(claim), "b_status": status_code, "b_response": response})
    if done.rowcount != 1:
        raise KeyConflict.in_flight()


async def release(*, db: Database, claim: Claim) -> None:
    """Give back a claim committed by `claim`, as its request would by failing, so a retry runs afresh."""
    async with db.uow() as uow:
        await uow.execute(sa.delete(_table()).where(_ours()), _bound(claim))
        await uow.commit()
