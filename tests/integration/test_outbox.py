"""The outbox keeps personal data encrypted while it waits, and keeps nothing once Kafka has it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import REGISTRY

from shared.crypto import Cipher, generate_key
from shared.db import Database, UnitOfWork
from shared.events import CallbackDue, CallbackScheduled, Event
from shared.kafka import ConsumerRunner, create_topics
from shared.outbox import OutboxMessage, OutboxRelay, enqueue
from shared.settings import Settings
from tests.support import service_database, wait_for

CIPHER = Cipher([generate_key()])
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
REF = {
    "callback_id": "CB-1",
    "party_id": "P-1",
    "role": "borrower",
    "stage": "final_check",
    "branch_id": "BR-1",
    "attempt": 1,
}


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(
        database_url, "scheduler", cipher=CIPHER, topic_prefix=f"t{uuid.uuid4().hex[:8]}."
    ) as db:
        yield db


async def test_personal_events_wait_encrypted_and_leave_no_copy(database: Database, kafka_bootstrap: str) -> None:
    loan = f"L-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, huifang_topic_prefix=database.topic_prefix, huifang_topic_partitions=1
    )
    await create_topics(settings)
    async with database.uow() as uow:
        enqueue(
            uow,
            CallbackScheduled(
                loan_id=loan,
                **REF,
                state="scheduled",
                due_at=NOW,
                notice_at=NOW,
                deadline=NOW + timedelta(days=5),
                verification_items=["identity"],
            ),
            key=loan,
        )
        enqueue(
            uow,
            CallbackDue(
                loan_id=loan,
                **REF,
                state="due",
                due_at=NOW,
                deadline=NOW + timedelta(days=5),
                name="张伟",
                phone="+8613800138000",
                timezone="Asia/Shanghai",
                language="zh-CN",
                purpose="核实",
                verification_items=["identity"],
            ),
            key=loan,
        )
        await uow.commit()
    async with database.uow() as uow:
        stored = [row.payload for row in (await uow.session.execute(sa.select(OutboxMessage))).scalars()]
    assert len(stored) == 2
    assert '"callback.scheduled"' in stored[0]  # ids only: stored as it is
    assert "+8613800138000" not in stored[1] and "张伟" not in json.dumps(stored[1], ensure_ascii=False)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        assert await OutboxRelay(db=database, producer=producer, service="scheduler").publish_once() == 2
    finally:
        await producer.stop()
    async with database.uow() as uow:
        assert await uow.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)) == 0

    received = await _read(kafka_bootstrap, settings.topic("callback.lifecycle.v1"), count=2)
    assert [e["type"] for e in received] == ["callback.scheduled", "callback.due"]
    assert received[1]["data"]["phone"] == "+8613800138000"  # decrypted for the dialer, as the contract allows


async def test_rows_queued_in_a_rolled_back_savepoint_or_transaction_are_not_written(database: Database) -> None:
    def scheduled(loan: str) -> CallbackScheduled:
        return CallbackScheduled(
            loan_id=loan, **REF, state="scheduled", due_at=NOW, notice_at=NOW, deadline=NOW + timedelta(days=5),
            verification_items=["identity"],
        )  # fmt: skip

    async with database.uow() as uow:
        enqueue(uow, scheduled("L-before"), key="L-before")
        with pytest.raises(Crash):
            async with uow.session.begin_nested():
                enqueue(uow, scheduled("L-undone"), key="L-undone")
                raise Crash
        async with uow.session.begin_nested():
            enqueue(uow, scheduled("L-kept"), key="L-kept")
        enqueue(uow, scheduled("L-after"), key="L-after")
        await uow.commit()
    async with database.uow() as uow:
        enqueue(uow, scheduled("L-never"), key="L-never")  # the block ends without a commit
    async with database.uow() as uow:
        enqueue(uow, scheduled("L-rolled-back"), key="L-rolled-back")
        await uow.rollback()
        enqueue(uow, scheduled("L-next"), key="L-next")
        await uow.commit()
    async with database.uow() as uow:
        keys = (await uow.session.execute(sa.select(OutboxMessage.key).order_by(OutboxMessage.id))).scalars().all()
    assert keys == ["L-before", "L-kept", "L-after", "L-next"]


class Crash(Exception):
    """The process dies after the broker acknowledged, before the sent rows are deleted."""


async def test_a_crash_between_publish_and_delete_sends_again_with_the_same_id(
    database: Database, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loan = f"L-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, huifang_topic_prefix=database.topic_prefix, huifang_topic_partitions=1
    )
    await create_topics(settings)
    scheduled = CallbackScheduled(
        loan_id=loan, **REF, state="scheduled", due_at=NOW, notice_at=NOW, deadline=NOW + timedelta(days=5),
        verification_items=["identity"],
    )  # fmt: skip
    async with database.uow() as uow:
        event_id = enqueue(uow, scheduled, key=loan)
        await uow.commit()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        relay = OutboxRelay(db=database, producer=producer, service="scheduler")
        mark_sent = relay._mark_sent
        crashes = [Crash()]

        async def crash_once(uow: UnitOfWork, ids: list[int]) -> None:
            if crashes:
                raise crashes.pop()
            await mark_sent(uow, ids)

        # This relay only: the services of other tests run their relays in this process too.
        monkeypatch.setattr(relay, "_mark_sent", crash_once)
        with pytest.raises(Crash):
            await relay.publish_once()
        assert await relay.publish_once() == 1  # the next pass (or replica) sends the row again
        async with database.uow() as uow:
            assert await uow.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)) == 0

        topic = settings.topic("callback.lifecycle.v1")
        received = await _read(kafka_bootstrap, topic, count=2)
        assert [(e["id"], e["type"]) for e in received] == [(event_id, "callback.scheduled")] * 2  # at least once

        # A consumer's dedupe row absorbs the second copy: one effect.
        effects: list[str] = []

        async def handler(*, uow: UnitOfWork, event: Event[CallbackScheduled]) -> None:
            effects.append(event.id)

        runner = ConsumerRunner(
            service="relay-test", settings=settings, db=database, producer=producer,
            topics=["callback.lifecycle.v1"], handlers={CallbackScheduled: handler},
        )  # fmt: skip
        labels = {"service": "relay-test", "topic": topic, "type": "callback.scheduled", "result": "duplicate"}
        task = asyncio.create_task(runner.run())
        try:
            await wait_for(
                lambda: REGISTRY.get_sample_value("huifang_events_consumed_total", labels) or len(effects) > 1
                or task.done(),
                what="the consumer to read the second copy",
            )  # fmt: skip
        finally:
            runner.request_stop()
            await task
        assert effects == [event_id]
        assert REGISTRY.get_sample_value("huifang_events_consumed_total", labels) == 1
    finally:
        await producer.stop()


async def _read(bootstrap: str, topic: str, *, count: int) -> list[dict[str, object]]:
    """The first `count` events on a topic, read from the start without a consumer group."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    received: list[dict[str, object]] = []

    async def enough() -> bool:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            received.extend(json.loads(r.value) for r in records)
        return len(received) >= count

    try:
        await wait_for(enough, what=f"{count} events on {topic}")
    finally:
        await consumer.stop()
    return received


async def test_one_relay_per_service_publishes_at_a_time(database: Database, kafka_bootstrap: str) -> None:
    """Two replicas' relays never interleave their sends (a loan's events keep their order): the
    second finds nothing while the first holds the pass's lock. SQLite runs one replica only."""
    loan = f"L-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, huifang_topic_prefix=database.topic_prefix)
    await create_topics(settings)
    async with database.uow() as uow:
        scheduled = CallbackScheduled(loan_id=loan, **REF, state="scheduled", due_at=NOW, notice_at=NOW,
                                      deadline=NOW + timedelta(days=5), verification_items=["identity"])  # fmt: skip
        enqueue(uow, scheduled, key=loan)
        await uow.commit()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        relay = OutboxRelay(db=database, producer=producer, service="scheduler")
        if database.dialect == "postgresql":
            async with database.uow() as other:  # the other replica, mid-pass
                key = {"k": f"outbox:{database.schema}"}
                assert await other.session.scalar(sa.text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), key)
                assert await relay.publish_once() == 0
        assert await relay.publish_once() == 1  # the lock is free again: the row goes
    finally:
        await producer.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """The relay's kind of producer: acks from all replicas, idempotent."""
    started = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await started.start()
    yield started
    await started.stop()


async def _backlog(database: Database, kafka_bootstrap: str, count: int) -> tuple[Settings, list[str]]:
    """`count` events of one loan in the outbox (one partition), committed in this order; returns the
    settings of their topics and the events' callback ids."""
    loan = f"L-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, huifang_topic_prefix=database.topic_prefix, huifang_topic_partitions=1
    )
    await create_topics(settings)
    ids = [f"CB-{i}" for i in range(count)]
    async with database.uow() as uow:
        for callback_id in ids:
            enqueue(uow, CallbackScheduled(loan_id=loan, **{**REF, "callback_id": callback_id}, state="scheduled",
                                           due_at=NOW, notice_at=NOW, deadline=NOW + timedelta(days=5),
                                           verification_items=["identity"]), key=loan)  # fmt: skip
        await uow.commit()
    return settings, ids


async def _left(database: Database) -> int:
    async with database.uow() as uow:
        return int(await uow.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)) or 0)


class OneBatchInFlight(OutboxRelay):
    """Checks that each batch is handed to the producer only once the one before is acknowledged."""

    batches = 0
    last: tuple[asyncio.Future[Any], ...] = ()

    async def _dispatch(self, rows: Sequence[sa.Row[Any]]) -> tuple[list[asyncio.Future[Any]], list[Any]]:
        assert all(future.done() for future in self.last), "a batch went out before the last was acknowledged"
        self.batches += 1
        futures, spans = await super()._dispatch(rows)
        self.last = tuple(futures)
        return futures, spans


async def test_a_backlog_of_several_batches_goes_out_in_one_pass_in_order(
    database: Database, kafka_bootstrap: str, producer: AIOKafkaProducer
) -> None:
    """The next batch is read while the broker acknowledges the last, and sent only after it."""
    settings, ids = await _backlog(database, kafka_bootstrap, 10)
    relay = OneBatchInFlight(db=database, producer=producer, service="scheduler", batch=3)
    assert await relay.publish_once() == 10
    assert relay.batches == 4
    assert await _left(database) == 0
    received = await _read(kafka_bootstrap, settings.topic("callback.lifecycle.v1"), count=10)
    assert [e["data"]["callback_id"] for e in received] == ids


class RefusedOnce(OutboxRelay):
    """The broker refuses the first row of the second batch this relay hands it, once."""

    dispatched = 0

    async def _dispatch(self, rows: Sequence[sa.Row[Any]]) -> tuple[list[asyncio.Future[Any]], list[Any]]:
        self.dispatched += 1
        if self.dispatched != 2:
            return await super()._dispatch(rows)
        refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        refused.set_exception(KafkaTimeoutError())
        futures, spans = await super()._dispatch(rows[1:])
        return [refused, *futures], spans


async def test_a_refused_send_ends_the_pass_and_the_next_pass_starts_from_it(
    database: Database, kafka_bootstrap: str, producer: AIOKafkaProducer
) -> None:
    settings, ids = await _backlog(database, kafka_bootstrap, 10)
    relay = RefusedOnce(db=database, producer=producer, service="scheduler", batch=3)
    assert await relay.publish_once() == 5  # the first batch, and the second but its refused row
    assert await _left(database) == 5  # the refused row and the batches after it: not sent this pass
    assert await relay.publish_once() == 5
    assert await _left(database) == 0
    received = await _read(kafka_bootstrap, settings.topic("callback.lifecycle.v1"), count=10)
    # The refused row goes first in the next pass, before every row that had not gone yet; the rows
    # after it in its own batch had gone already, so it arrives behind them.
    assert [e["data"]["callback_id"] for e in received] == [*ids[:3], *ids[4:6], ids[3], *ids[6:]]


class BrokenSecondBatch(OutboxRelay):
    """Handing the second batch of a pass to the producer fails before any of it is sent."""

    dispatched = 0

    async def _dispatch(self, rows: Sequence[sa.Row[Any]]) -> tuple[list[asyncio.Future[Any]], list[Any]]:
        self.dispatched += 1
        if self.dispatched == 2:
            raise KafkaTimeoutError()
        return await super()._dispatch(rows)


async def test_a_failure_after_the_first_batch_keeps_what_was_acknowledged(
    database: Database, kafka_bootstrap: str, producer: AIOKafkaProducer
) -> None:
    settings, ids = await _backlog(database, kafka_bootstrap, 10)
    relay = BrokenSecondBatch(db=database, producer=producer, service="scheduler", batch=3)
    assert await relay.publish_once() == 3  # the first batch is marked sent, not sent again
    assert await _left(database) == 7
    assert await relay.publish_once() == 7
    received = await _read(kafka_bootstrap, settings.topic("callback.lifecycle.v1"), count=10)
    assert [e["data"]["callback_id"] for e in received] == ids  # once each, in order


async def test_the_outbox_keeps_its_unsent_index_but_no_unique_event_id(database: Database) -> None:
    """Migrated: no UNIQUE (event_id), whose index made every relay delete on SQLite touch a random page,
    and the rebuilt table (SQLite) still has the partial index the relay reads by."""

    def shape(conn: sa.Connection) -> tuple[list[Any], list[Any]]:
        inspector = sa.inspect(conn)
        return inspector.get_unique_constraints("outbox"), inspector.get_indexes("outbox")

    async with database.engine.connect() as conn:
        uniques, indexes = await conn.run_sync(shape)
    assert uniques == []
    assert [(i["name"], i["column_names"], bool(i["unique"])) for i in indexes] == [("ix_outbox_unsent", ["id"], False)]
    where = indexes[0]["dialect_options"][f"{database.dialect}_where"]
    assert "sent_at is null" in str(where).lower()  # still partial after SQLite's rebuild
