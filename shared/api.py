"""What every HTTP endpoint depends on: the database, cipher and policy as `Annotated` dependencies,
the contract's id and paging limits, and one `Page[T]` with its `paginate()`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel

from shared.crypto import Cipher
from shared.db import Database, UnitOfWork
from shared.policy import Policy

T = TypeVar("T")

# CONTRACT.md 2.2 and 3: an id is 1-64 characters of A-Z a-z 0-9 . _ : -; anything else is 422.
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
# A cursor is a row sequence number: at most 18 digits, so it always fits a BIGINT.
CURSOR_PATTERN = r"^\d{1,18}$"


# Async, though they only read app state: FastAPI runs a plain `def` dependency in its thread pool,
# a thread hop per dependency per request.
async def _database(request: Request) -> Database:
    db: Database = request.app.state.runtime.db
    return db


async def _cipher(request: Request) -> Cipher:
    cipher: Cipher = request.app.state.runtime.cipher
    return cipher


async def _policy(request: Request) -> Policy:
    policy: Policy = request.app.state.policy
    return policy


DatabaseDep = Annotated[Database, Depends(_database)]
CipherDep = Annotated[Cipher, Depends(_cipher)]
PolicyDep = Annotated[Policy, Depends(_policy)]

PathId = Annotated[str, Path(pattern=ID_PATTERN)]
QueryId = Annotated[str | None, Query(pattern=ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the page before")]


class Page(BaseModel, Generic[T]):
    """One page of a list, oldest first; pass `next_cursor` back as `cursor` for the next."""

    items: list[T]
    next_cursor: str | None


async def paginate(
    uow: UnitOfWork,
    query: sa.Select[Any],
    *,
    seq: Any,
    limit: int,
    cursor: str | None,
    out: Callable[[Any], T],
) -> Page[T]:
    """Run `query` ordered by the `seq` column from after `cursor`, and shape one page of it."""
    query = query.order_by(seq).limit(limit + 1)
    if cursor:
        query = query.where(seq > int(cursor))
    rows = list((await uow.session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[T](items=[out(r) for r in rows], next_cursor=str(getattr(rows[-1], seq.key)) if more else None)
