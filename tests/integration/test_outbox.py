"""The outbox keeps personal data encrypted while it waits, and keeps nothing once Kafka has it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.crypto import Cipher, generate_key
from shared.db import Database
from shared.events import CallbackDue, CallbackScheduled
from shared.kafka import create_topics
from shared.outbox import OutboxMessage, OutboxRelay, enqueue
from shared.settings import Settings
from tests.support import service_database

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

    consumer = AIOKafkaConsumer(
        settings.topic("callback.lifecycle.v1"),
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: list[dict[str, object]] = []
        while len(received) < 2:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                received += [json.loads(r.value) for r in records]
    finally:
        await consumer.stop()
    assert [e["type"] for e in received] == ["callback.scheduled", "callback.due"]
    assert received[1]["data"]["phone"] == "+8613800138000"  # decrypted for the dialer, as the contract allows
