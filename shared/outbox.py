"""Transactional outbox and its relay: events leave only after the transaction that made them commits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel import Field, SQLModel

from shared import faults
from shared.db import AsRow, BigIntPK, Database, RowBuffer, UnitOfWork, UTCDateTime, among, utcnow, woken
from shared.events import CONTENT_TYPE, EventData, encode, new_envelope
from shared.metrics import OUTBOX_OLDEST_AGE, OUTBOX_PUBLISHED, OUTBOX_RELAY_ERRORS, Every
from shared.tracing import end_span, recording, start_publish, trace_context

log = structlog.get_logger(__name__)
BACKLOG_EVERY_SECONDS = 5.0
# Batches per relay pass: each next one is read (and the last one marked sent) while the broker
# acknowledges the one in flight. More per pass means more sent again after a crash mid-pass.
PIPELINED = 4
HEADERS = [("content-type", CONTENT_TYPE.encode())]


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    event_id: str = Field(max_length=64)
    topic: str = Field(max_length=255)
    key: str = Field(max_length=255)
    payload: str = Field(sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


def create_outbox_table(op: object) -> None:
    """Used by each service's first migration."""
    create_table = op.create_table  # type: ignore[attr-defined]
    create_index = op.create_index  # type: ignore[attr-defined]
    create_table(
        "outbox",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
    )
    create_index(
        "ix_outbox_unsent",
        "outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )


# PostgreSQL's own name for the first migration's unnamed UNIQUE (event_id); on SQLite, the name a
# naming convention gives it (SQLite keeps none), so a downgrade's constraint is named alike.
_EVENT_ID_UNIQUE = {"postgresql": "outbox_event_id_key", "sqlite": "uq_outbox_event_id"}


def drop_event_id_unique(op: object) -> None:
    """Used by each service's migration that drops the outbox's UNIQUE (event_id). Every id is a
    fresh UUID and the row is deleted once sent, so the index guarded nothing, while on SQLite each
    of the relay's deletes paid a random page of it: 2.1 s per 100,000 rows against 0.3 s without."""
    name = _EVENT_ID_UNIQUE[op.get_bind().dialect.name]  # type: ignore[attr-defined]
    convention = {"uq": "uq_%(table_name)s_%(column_0_name)s"}  # no effect outside SQLite's rebuild
    with op.batch_alter_table("outbox", naming_convention=convention) as batch:  # type: ignore[attr-defined]
        batch.drop_constraint(name, type_="unique")


def restore_event_id_unique(op: object) -> None:
    """The downgrade of `drop_event_id_unique`."""
    name = _EVENT_ID_UNIQUE[op.get_bind().dialect.name]  # type: ignore[attr-defined]
    with op.batch_alter_table("outbox") as batch:  # type: ignore[attr-defined]
        batch.create_unique_constraint(name, ["event_id"])


def enqueue(uow: UnitOfWork, data: EventData, *, key: str, event_id: str | None = None) -> str:
    """Queue an event in the unit of work; the relay publishes it after commit. Returns its id.

    The row is written with the transaction's other outbox rows in one multi-row INSERT just before
    it commits (see `_write_pending`); a rolled-back savepoint drops the rows queued inside it.
    """
    db = uow.db
    # The caller's trace context rides in the envelope, so the trace survives the wait in the table.
    envelope = new_envelope(data, source=db.source, subject=key, event_id=event_id, extensions=trace_context())
    payload = encode(envelope).decode()
    if data.personal:
        # Contact details wait in the outbox until sent: encrypted there like everywhere at rest.
        payload = db.seal(payload)
    session = uow.session.sync_session
    if not session.in_transaction():
        session.begin()  # what autobegin would do: a rollback before any statement then drops the row too
    _pending(session).append(
        {"event_id": envelope.id, "topic": db.topic_prefix + data.topic, "key": key, "payload": payload,
         "created_at": utcnow()}
    )  # fmt: skip
    uow.emitted += 1
    return envelope.id


# Outbox rows queued in a session's transaction, and where each open savepoint began in that list.
_PENDING = "huifang.outbox.pending"
_MARKS = "huifang.outbox.marks"


def _pending(session: Session) -> list[dict[str, Any] | AsRow]:
    buffer = RowBuffer.of(session, _PENDING) or RowBuffer.start(session, _PENDING)
    return buffer.pending(OutboxMessage.__table__)  # type: ignore[attr-defined]


def _queued(session: Session) -> list[dict[str, Any] | AsRow]:
    buffer = RowBuffer.of(session, _PENDING)
    return buffer.pending(OutboxMessage.__table__) if buffer else []  # type: ignore[attr-defined]


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    """One INSERT for all the rows queued in the transaction, inside it, as it commits."""
    buffer = RowBuffer.of(session, _PENDING)
    if buffer is None or not _queued(session) or session.in_nested_transaction():
        return  # a savepoint's release keeps its rows queued for the outer commit
    # Runs inside the async session's greenlet, so the sync call here awaits the driver.
    connection = session.connection()
    for statement, params in buffer.drain(connection.dialect.name):
        connection.execute(statement, params)


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested and _queued(session):
        session.info.setdefault(_MARKS, {})[transaction] = len(_queued(session))


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous: SessionTransaction) -> None:
    """What a rolled-back savepoint queued is dropped; a rolled-back transaction drops everything."""
    rows = _queued(session)
    if not rows:
        return
    if previous.nested:
        del rows[session.info.get(_MARKS, {}).pop(previous, 0) :]
    else:
        rows.clear()


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    # A session closed without commit or rollback (the unit of work's block ended) keeps nothing.
    if transaction.parent is None and _PENDING in session.info:
        session.info.pop(_PENDING)
        session.info.pop(_MARKS, None)


def _unsent(batch: int, *, gated: bool) -> sa.Select[Any]:
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    query = sa.select(table.c.id, table.c.topic, table.c.key, table.c.payload).where(table.c.sent_at.is_(None))
    if gated:
        # An uncorrelated scalar subquery: PostgreSQL tries the lock once, before it reads a row.
        lock = sa.select(sa.func.pg_try_advisory_xact_lock(sa.func.hashtext(sa.bindparam("lock")))).scalar_subquery()
        query = query.where(lock)
    return query.order_by(table.c.id).limit(batch)


def _unsent_after(batch: int) -> sa.Select[Any]:
    """The next batch after the rows in flight (within a pass that holds the lock already)."""
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    return _unsent(batch, gated=False).where(table.c.id > sa.bindparam("after"))


def _delete_sent(dialect: str) -> sa.Delete:
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    return sa.delete(table).where(among(table.c.id, (), dialect, name="ids"))


class OutboxRelay:
    """Publishes committed outbox rows in order, then marks them sent; several replicas may run."""

    def __init__(self, *, db: Database, producer: AIOKafkaProducer, service: str, batch: int = 500) -> None:
        self.db = db
        self.producer = producer
        self.service = service
        self.batch = batch
        self.poll_seconds = 1.0
        self._backlog_check = Every(BACKLOG_EVERY_SECONDS)
        # Built once: a relay pass runs after every commit that emits, often for one row.
        self._unsent = _unsent(batch, gated=db.dialect == "postgresql")
        self._unsent_after = _unsent_after(batch)
        self._lock_key = f"outbox:{db.schema}"
        self._delete_sent = _delete_sent(db.dialect)

    async def run(self) -> None:
        while True:
            # Cleared before the pass, not after: a commit landing during the pass keeps it set,
            # so its rows go out at once instead of after the next poll.
            self.db.outbox_signal.clear()
            try:
                sent = await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                OUTBOX_RELAY_ERRORS.labels(self.service).inc()
                log.warning("outbox.relay_failed", service=self.service, error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            if sent < self.batch:
                await woken(self.db.outbox_signal, self.poll_seconds)

    async def _measure_backlog(self) -> None:
        """The oldest waiting row's age, for the backlog alert; one small query every few seconds at most."""
        if not self._backlog_check.due():
            return
        table = OutboxMessage.__table__  # type: ignore[attr-defined]
        # Sent rows are deleted, so every row left is waiting.
        async with self.db.uow() as uow:
            oldest: datetime | None = await uow.session.scalar(sa.select(sa.func.min(table.c.created_at)))
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        OUTBOX_OLDEST_AGE.labels(self.service).set(max(0.0, age))

    async def publish_once(self) -> int:
        """Send unsent rows, up to PIPELINED batches in order; returns how many were sent."""
        sent = await (self._publish_sqlite() if self.db.dialect == "sqlite" else self._publish_postgres())
        await self._measure_backlog()
        return sent

    async def _publish_postgres(self) -> int:
        async with self.db.uow() as uow:
            # The advisory lock in the same statement: one relay per service publishes at a time, so
            # each loan's events keep their order; without the lock the statement finds no rows.
            rows = (await uow.execute(self._unsent, {"lock": self._lock_key})).all()
            if not rows:
                return 0

            async def read_after(last: int) -> Sequence[sa.Row[Any]]:
                return (await uow.execute(self._unsent_after, {"after": last})).all()

            async def mark(ids: list[int]) -> None:
                await self._mark_sent(uow, ids)

            sent = await self._pipeline(rows, read_after=read_after, mark=mark)
            await uow.commit()
        return sent

    async def _publish_sqlite(self) -> int:
        # SQLite's writer lock must not be held while waiting for Kafka: each read and each delete
        # is a short unit of work of its own.
        async with self.db.uow() as uow:
            rows = (await uow.execute(self._unsent)).all()
        if not rows:
            return 0

        async def read_after(last: int) -> Sequence[sa.Row[Any]]:
            async with self.db.uow() as uow:
                return (await uow.execute(self._unsent_after, {"after": last})).all()

        async def mark(ids: list[int]) -> None:
            async with self.db.uow() as uow:
                await self._mark_sent(uow, ids)
                await uow.commit()

        return await self._pipeline(rows, read_after=read_after, mark=mark)

    async def _pipeline(
        self,
        rows: Sequence[sa.Row[Any]],
        *,
        read_after: Callable[[int], Awaitable[Sequence[sa.Row[Any]]]],
        mark: Callable[[list[int]], Awaitable[None]],
    ) -> int:
        """Up to PIPELINED batches, each sent only once the one before is acknowledged, while the
        broker acknowledges one batch the one before it is marked sent and the next one read.
        A refused row ends the pass and goes first in the next one; the rows after it in its own
        batch may have gone already (as before pipelining), the later batches wait. Returns how
        many were sent."""
        total = 0
        acked: list[int] = []
        for turn in range(PIPELINED):
            try:
                futures, spans = await self._dispatch(rows)
            except Exception as exc:
                if not acked:
                    raise  # nothing acknowledged in this pass yet: it fails as a whole
                # The batches already acknowledged are marked sent below, not sent again next pass.
                OUTBOX_RELAY_ERRORS.labels(self.service).inc()
                log.warning("outbox.send_failed", service=self.service, rows=len(rows), error=type(exc).__name__)
                break
            more = len(rows) == self.batch and turn + 1 < PIPELINED

            async def database_side(done: list[int] = acked, last: int = rows[-1].id, more: bool = more) -> Any:
                if done:
                    await mark(done)
                return await read_after(last) if more else ()

            results, following = await asyncio.gather(asyncio.gather(*futures, return_exceptions=True),
                                                      database_side())  # fmt: skip
            acked = self._settle(rows, results, spans)
            total += len(acked)
            if len(acked) < len(rows) or not following:
                break
            rows = following
        if acked:
            await mark(acked)
        return total

    async def _dispatch(self, rows: Sequence[sa.Row[Any]]) -> tuple[list[asyncio.Future[Any]], list[Any]]:
        """Hand the rows to the producer in order; returns their acknowledgements to come (and spans)."""
        values = [self._plain(row.payload) for row in rows]
        spans = (
            [start_publish(topic=row.topic, key=row.key, value=v) for row, v in zip(rows, values, strict=True)]
            if recording()
            else []
        )
        futures = [
            await self.producer.send(row.topic, value=value, key=row.key.encode(), headers=HEADERS)
            for row, value in zip(rows, values, strict=True)
        ]
        return futures, spans

    def _settle(self, rows: Sequence[sa.Row[Any]], results: Sequence[Any], spans: list[Any]) -> list[int]:
        """The ids the broker acknowledged (a failed row is retried next pass)."""
        for span, result in zip(spans, results, strict=False):  # no spans when not recording
            end_span(span, error=result if isinstance(result, BaseException) else None)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            OUTBOX_RELAY_ERRORS.labels(self.service).inc(len(failed))
            log.warning("outbox.send_failed", service=self.service, rows=len(failed), error=type(failed[0]).__name__)
        return [row.id for row, result in zip(rows, results, strict=True) if not isinstance(result, BaseException)]

    def _plain(self, payload: str) -> bytes:
        return self.db.unseal(payload).encode()

    async def _mark_sent(self, uow: UnitOfWork, ids: list[int]) -> None:
        if not ids:
            return
        faults.point("outbox.published")  # test only: the broker has the rows, the outbox still too
        # Sent rows are deleted: Kafka holds the events now, and the outbox keeps no copies of them.
        await uow.execute(self._delete_sent, {"ids": ids})
        OUTBOX_PUBLISHED.labels(self.service).inc(len(ids))
