"""Outbox: a service's relay publishing a backlog against raw acked idempotent produce on the same broker.

The relay under test is the scheduler's own (`huifang run scheduler`, nothing else for it to do):
the bench writes EVENTS `callback.scheduled` rows into its outbox in one transaction, as `enqueue`
writes them, and times from the first row seen gone (sent, acked and deleted) to the last, polling
every 20 ms. The baseline is the producer the relay gets (`make_producer`: acks=all, idempotence,
the same linger and batch size) sending the same encoded envelopes in chunks of the relay's batch
(500), each chunk's acks gathered, from the first send to the last ack. Both on PostgreSQL and SQLite.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from bench.common import Figure, Stack, alternate, drop, median, scalar, service, wait_until
from shared import labels
from shared.db import Database
from shared.events import CONTENT_TYPE, CallbackScheduled, encode, new_envelope
from shared.kafka import create_topics, make_producer
from shared.outbox import OutboxMessage

EVENTS = 20_000
CHUNK = 500
HEADERS = [("content-type", CONTENT_TYPE.encode())]


def envelopes(prefix: str, count: int) -> list[dict[str, object]]:
    """Outbox rows of `callback.scheduled`, each of its own loan (key)."""
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        loan_id = f"L-{prefix}{i:06d}"
        data = CallbackScheduled(
            loan_id=loan_id, callback_id=str(uuid.uuid4()), party_id=f"P-1-{loan_id}", role="borrower",
            stage="final_check", branch_id="BR-SH-001", attempt=1, state="scheduled", due_at=now + timedelta(days=1),
            deadline=now + timedelta(days=5), notice_at=now + timedelta(hours=1),
            verification_items=list(labels.VERIFICATION_ITEMS),
        )  # fmt: skip
        envelope = new_envelope(data, source="/huifang/scheduler", subject=loan_id)
        rows.append({"event_id": envelope.id, "topic": prefix + data.topic, "key": loan_id,
                     "payload": encode(envelope).decode(), "created_at": now, "sent_at": None})  # fmt: skip
    return rows


async def relay_side(st: Stack, kind: str) -> float:
    prefix = st.prefix()
    db = st.database(kind, prefix, "scheduler")
    rows = envelopes(prefix, EVENTS)
    try:
        async with service(st, kind, prefix, "scheduler"):
            async with db.engine.begin() as conn:
                await conn.execute(sa.insert(OutboxMessage.__table__), rows)  # type: ignore[attr-defined]
            left = EVENTS

            async def sent_some() -> bool:
                nonlocal left
                left = int(await scalar(db, "SELECT count(*) FROM outbox"))
                return left < EVENTS

            began, first = await wait_until(sent_some, what="the relay's first pass"), EVENTS - left
            ended = await wait_until(lambda: _empty(db), what="the relay to empty the outbox")
        rate = (EVENTS - first) / (ended - began)
        print(f"  outbox relay ({kind}): {rate:.0f} ev/s", flush=True)
        return rate
    finally:
        await drop(db)


async def _empty(db: Database) -> bool:
    return int(await scalar(db, "SELECT count(*) FROM outbox")) == 0


async def raw_side(st: Stack) -> float:
    prefix = st.prefix()
    settings = st.settings(prefix)
    await create_topics(settings)
    rows = envelopes(prefix, EVENTS)
    producer = make_producer(settings)  # the relay's own: acks=all, idempotence, the same batching
    await producer.start()
    try:
        await send_chunk(producer, envelopes(prefix, CHUNK))  # warm: metadata, leaders, connections
        began = time.perf_counter()
        for start in range(0, EVENTS, CHUNK):
            await send_chunk(producer, rows[start : start + CHUNK])
        rate = EVENTS / (time.perf_counter() - began)
    finally:
        await producer.stop()
    print(f"  outbox raw produce: {rate:.0f} ev/s", flush=True)
    return rate


async def send_chunk(producer: AIOKafkaProducer, rows: list[dict[str, object]]) -> None:
    """Send the rows, then wait for every ack."""
    futures = []
    for r in rows:
        value, key = str(r["payload"]).encode(), str(r["key"]).encode()
        futures.append(await producer.send(str(r["topic"]), value=value, key=key, headers=HEADERS))
    await asyncio.gather(*futures)


async def measure(st: Stack) -> list[Figure]:
    out = []
    for kind in ("postgresql", "sqlite"):

        async def relay(kind: str = kind) -> float:
            return await relay_side(st, kind)

        runs = await alternate(f"outbox ({kind})", raw=lambda: raw_side(st), relay=relay)
        out.append(Figure(f"outbox relay vs raw acked idempotent produce ({kind})", median(runs["relay"]),
                          "events/s", baseline=median(runs["raw"]), goal="ratio ≥ 0.5"))  # fmt: skip
    return out
