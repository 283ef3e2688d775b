"""Pooled PostgreSQL connections the server dropped: no ping at every checkout, yet nothing fails or runs twice."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from shared import idempotency
from shared.crypto import Cipher, generate_key
from shared.db import IDLE_PING_AFTER_S, Database, UnitOfWork
from shared.kafka import ProcessedEvent
from shared.web import Principal
from tests.support import ROOT, service_database, wait_for


class Done(BaseModel):
    runs: int


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    async with service_database(postgres_url, "outcomes", cipher=Cipher([generate_key()])) as db:
        yield db


@pytest.fixture
async def never_pinged(postgres_url: str) -> AsyncIterator[Database]:
    """A database whose pool never pings, so only the retry can save a write on a dropped connection."""
    db = Database(
        postgres_url,
        schema=f"t{uuid.uuid4().hex[:8]}_outcomes",
        source="/huifang/outcomes",
        cipher=Cipher([generate_key()]),
        idle_ping_after_s=math.inf,
    )
    await db.migrate(ROOT / "services" / "outcomes" / "migrations")
    try:
        yield db
    finally:
        await db.dispose()


async def backend(db: Database) -> int:
    """The server process behind the pooled connection a unit of work gets."""
    async with db.uow() as uow:
        return int(await uow.session.scalar(sa.text("SELECT pg_backend_pid()")) or 0)


async def drop(url: str, pid: int) -> None:
    """End one server connection from outside, as a database restart or failover would."""
    # Autocommit: pg_stat_activity is a snapshot per transaction, so one transaction would never see it end.
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"
            await wait_for(
                lambda: _scalar(conn, gone, pid),
                within=10.0,
                what="the dropped connection's server process to end",
            )
    finally:
        await engine.dispose()


async def _scalar(conn: sa.ext.asyncio.AsyncConnection, sql: str, pid: int) -> bool | None:
    count = (await conn.execute(sa.text(sql), {"pid": pid})).scalar_one()
    return True if count == 0 else None


async def test_a_keyed_write_on_a_dropped_connection_runs_once_on_a_fresh_one(
    never_pinged: Database, postgres_url: str
) -> None:
    database = never_pinged
    dropped = await backend(database)
    await drop(postgres_url, dropped)
    consumer, runs = f"stale-{uuid.uuid4().hex[:8]}", []

    async def write(uow: UnitOfWork) -> BaseModel:
        runs.append(1)
        uow.session.add(ProcessedEvent(consumer=consumer, event_id="E1"))
        return Done(runs=len(runs))

    keyed = idempotency.keyed("K-1", who=Principal("agent", "k1"), operation="test.write", params={}, body=Done(runs=0))
    response = await idempotency.once(db=database, keyed=keyed, status_code=201, run=write)
    assert response.status_code == 201 and runs == [1]
    async with database.uow() as uow:
        rows = await uow.session.scalar(
            sa.select(sa.func.count()).where(ProcessedEvent.consumer == consumer)  # type: ignore[arg-type]
        )
    assert rows == 1
    assert await backend(database) != dropped


async def test_a_connection_idle_in_the_pool_is_pinged_before_use(database: Database, postgres_url: str) -> None:
    dropped = await backend(database)
    idle_since = time.monotonic()
    await drop(postgres_url, dropped)
    # The precondition is idleness itself: the pool pings only connections idle this long.
    remaining = IDLE_PING_AFTER_S - (time.monotonic() - idle_since)
    if remaining > 0:
        await asyncio.sleep(remaining + 0.05)
    # A plain read, with no retry around it: the checkout's ping found the dropped connection.
    assert await backend(database) != dropped
