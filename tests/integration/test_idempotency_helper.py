"""shared/idempotency.py on both databases: replay, 422, 409, release, abandoned claims taken over, one transaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from shared import idempotency
from shared.crypto import Cipher, generate_key
from shared.db import Database, UnitOfWork
from shared.idempotency import STALE_AFTER, IdempotencyRecord, KeyConflict, Keyed
from shared.kafka import ProcessedEvent
from shared.web import Principal
from tests.support import service_database


class Body(BaseModel):
    note: str = ""


class Effect:
    """A request whose effect is one processed_event row under its own consumer name."""

    def __init__(self) -> None:
        self.consumer = f"idem-{uuid.uuid4().hex[:8]}"
        self.runs = 0

    async def __call__(self, uow: UnitOfWork) -> BaseModel:
        self.runs += 1
        event_id = f"E{self.runs}"
        uow.session.add(ProcessedEvent(consumer=self.consumer, event_id=event_id))
        return Body(note=event_id)

    async def rows(self, db: Database) -> int:
        query = sa.select(sa.func.count()).where(ProcessedEvent.consumer == self.consumer)  # type: ignore[arg-type]
        async with db.uow() as uow:
            return int((await uow.session.execute(query)).scalar_one())


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "outcomes", cipher=Cipher([generate_key()])) as db:
        yield db


def keyed(note: str = "", *, key: str = "K-1", operation: str = "test.write", who: str = "agent") -> Keyed:
    result = idempotency.keyed(
        key, who=Principal(who, "k1"), operation=operation, params={"id": "X-1"}, body=Body(note=note)
    )
    assert result is not None
    return result


async def test_the_first_response_is_replayed_and_the_effect_happens_once(database: Database) -> None:
    effect = Effect()
    first = await idempotency.once(db=database, keyed=keyed(), status_code=201, run=effect)
    again = await idempotency.once(db=database, keyed=keyed(), status_code=201, run=effect)
    assert first.status_code == again.status_code == 201 and first.body == again.body
    assert effect.runs == 1 and await effect.rows(database) == 1


async def test_another_request_with_the_key_is_422_and_changes_nothing(database: Database) -> None:
    effect = Effect()
    await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)
    for other in (keyed("other body"), keyed(operation="test.other")):
        with pytest.raises(KeyConflict) as conflict:
            await idempotency.once(db=database, keyed=other, status_code=200, run=effect)
        assert conflict.value.status_code == 422
    assert effect.runs == 1 and await effect.rows(database) == 1


async def test_a_key_of_another_caller_is_another_key(database: Database) -> None:
    effect = Effect()
    mine = await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)
    theirs = await idempotency.once(db=database, keyed=keyed(who="supervisor"), status_code=200, run=effect)
    assert mine.body != theirs.body and await effect.rows(database) == 2


async def test_a_claim_in_flight_is_409_until_it_is_released(database: Database) -> None:
    effect = Effect()
    claimed = await idempotency.claim(db=database, keyed=keyed())
    assert isinstance(claimed, idempotency.Claim)
    with pytest.raises(KeyConflict) as conflict:
        await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)
    assert conflict.value.status_code == 409 and effect.runs == 0
    assert conflict.value.headers == {"Retry-After": "1"}  # the client is told when to ask again
    await idempotency.release(db=database, claim=claimed)
    assert (await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)).status_code == 200


async def test_a_rejected_request_gives_the_key_back(database: Database) -> None:
    async def rejected(uow: UnitOfWork) -> BaseModel:
        uow.session.add(ProcessedEvent(consumer="idem-rejected", event_id=uuid.uuid4().hex))
        raise HTTPException(409, "not now")

    with pytest.raises(HTTPException):
        await idempotency.once(db=database, keyed=keyed(), status_code=200, run=rejected)
    effect = Effect()
    assert (await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)).status_code == 200
    assert effect.runs == 1


async def _abandon(database: Database, abandoned: Keyed) -> None:
    """Age the key's claim past STALE_AFTER, as if its request died between claim and result."""
    async with database.uow() as uow:
        row = await uow.session.get(IdempotencyRecord, (abandoned.scope, abandoned.key))
        assert row is not None and row.state == "in_flight"
        row.created_at -= STALE_AFTER + timedelta(seconds=1)
        await uow.commit()


async def test_an_abandoned_claim_is_taken_over_by_a_retry(database: Database) -> None:
    assert isinstance(await idempotency.claim(db=database, keyed=keyed()), idempotency.Claim)
    await _abandon(database, keyed())
    effect = Effect()
    first = await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)
    again = await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)
    assert first.status_code == again.status_code == 200 and first.body == again.body and effect.runs == 1


async def test_a_duplicate_while_the_first_runs_never_runs_twice(database: Database) -> None:
    """PostgreSQL answers the duplicate 409 at once; SQLite, one writer at a time, makes it wait and replays."""
    effect = Effect()
    duplicates: list[asyncio.Task[JSONResponse]] = []

    async def first(uow: UnitOfWork) -> BaseModel:
        duplicate = asyncio.create_task(idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect))
        duplicates.append(duplicate)
        if database.dialect == "postgresql":
            with pytest.raises(KeyConflict) as conflict:
                await duplicate
            assert conflict.value.status_code == 409
        return await effect(uow)

    result = await idempotency.once(db=database, keyed=keyed(), status_code=200, run=first)
    if database.dialect == "sqlite":
        assert (await duplicates[0]).body == result.body
    assert effect.runs == 1 and await effect.rows(database) == 1
    again = await idempotency.once(db=database, keyed=keyed(), status_code=200, run=effect)
    assert again.body == result.body and effect.runs == 1
