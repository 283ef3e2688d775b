"""Ingest: `final_check` loans (three parties each) → committed callbacks, the scheduler against a raw loop.

Both sides read the same events from loan.stage.changed on the same broker into the same database.
The scheduler runs as `huifang run scheduler` with the repo's policy.toml. The baseline is the
simplest correct loop doing the same writes set-based: aiokafka getmany, then per poll one
multi-row INSERT each of dedupe rows, loan stages, callbacks (contact encrypted), timers (due,
deadline), timeline lines and outbox rows (the callback.scheduled envelope and the sealed
callback.notice.requested one with its caller code and page link), one commit, then the offsets.
It plans no calendar (the planner is pure CPU; its cost is the scheduler's to keep small), so its
notices offer no slots.
The parties live in a zone where it is calling time now (`timer_policy`), so the scheduler sends each
party's advance notice at once, in the ingest transaction, as it would by day: the figure no longer
depends on the hour the bench runs (with Asia/Shanghai it did: after 21:00 there the notices wait
for morning, each as a timer).
Rate: callbacks committed, counted by the same 50 ms poll on both sides, from the consumer's partition
assignment to the last commit seen (all done, or 60 s after the assignment to bound a slow side).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from bench.common import (
    LINK_SECRET,
    LOGS,
    ROOT,
    Figure,
    Stack,
    alternate,
    drop,
    median,
    scalar,
    service,
    timer_policy,
    wait_until,
)
from shared import labels
from shared.crypto import Cipher
from shared.db import ENCRYPTED_PREFIX, Database
from shared.events import (
    CONTENT_TYPE,
    LOAN_STAGE,
    CallbackNoticeRequested,
    CallbackScheduled,
    LoanStageChanged,
    encode,
    new_envelope,
)
from shared.kafka import client_options, create_topics, make_producer
from shared.links import caller_code, page_url, sign
from tests.support import loan_event

ROLES = ("borrower", "co_borrower", "guarantor")
HEADERS = [("content-type", CONTENT_TYPE.encode())]


async def produce_loans(st: Stack, prefix: str, n: int) -> None:
    """N loan.stage.changed events into `final_check`, three parties each, as the LOS would send them."""
    settings, zone = st.settings(prefix), timer_policy(st)  # before the service starts: it may swap the policy
    await create_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        for start in range(0, n, 1000):
            futures = []
            for i in range(start, min(n, start + 1000)):
                loan_id = f"L-{prefix}{i:06d}"
                event = loan_event(loan_id, roles=ROLES)
                for party in event["parties"]:
                    party["timezone"] = zone
                data = LoanStageChanged.model_validate(event)
                value = encode(new_envelope(data, source="/los", subject=loan_id))
                futures.append(await producer.send(settings.topic(LOAN_STAGE), value=value, key=loan_id.encode(),
                                                   headers=HEADERS))  # fmt: skip
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed_rate(db: Database, target: int, within: float, assigned: Callable[[], datetime | None]) -> float:
    """Callbacks/s from the consumer's partition assignment to the last commit seen, when `target` are
    committed or `within` seconds after the assignment (a commit holds a whole poll of up to 200 loans,
    so the rate is taken at the last commit seen, not at the deadline)."""
    last, last_at = 0, datetime.now(UTC)
    began: datetime | None = None

    async def finished() -> bool:
        nonlocal last, last_at, began
        count = int(await scalar(db, "SELECT count(*) FROM callback") or 0)
        now = datetime.now(UTC)
        if count != last:
            last, last_at = count, now
        began = began or assigned()
        return last >= target or (began is not None and (now - began).total_seconds() > within)

    await wait_until(finished, every=0.05, what=f"{target} callbacks")
    if began is None or last == 0:
        raise RuntimeError(f"no callback committed within {within:.0f}s of the assignment")
    return last / (last_at - began).total_seconds()


def assigned_in_log(path: Path) -> Callable[[], datetime | None]:
    """When the service's log says its consumer was first given partitions."""

    def read() -> datetime | None:
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            if '"consumer.assigned"' in line and (entry := json.loads(line)).get("partitions"):
                return datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
        return None

    return read


async def huifang_side(st: Stack, kind: str, loans: int, within: float) -> float:
    prefix = st.prefix()
    await produce_loans(st, prefix, loans)
    db = st.database(kind, prefix, "scheduler")
    try:
        async with service(st, kind, prefix, "scheduler"):
            assigned = assigned_in_log(LOGS / f"{prefix}scheduler.log")
            rate = await committed_rate(db, loans * len(ROLES), within, assigned)
        print(f"  ingest huifang: {rate / len(ROLES):.0f} loans/s", flush=True)
        return rate / len(ROLES)
    finally:
        await drop(db)


Rows = dict[str, list[dict[str, object]]]  # table name → its rows


def no_rows() -> Rows:
    return {"callback": [], "timer": [], "callback_event": [], "outbox": []}


def plan_rows(cipher: Cipher, event: dict[str, object], now: datetime, prefix: str) -> Rows:
    """The rows one loan event makes, in memory: the same tables and encryption as the scheduler."""
    data = LoanStageChanged.model_validate(event["data"])
    rows = no_rows()
    for party in data.parties:
        cid, code = str(uuid.uuid4()), caller_code()
        due, notice, deadline = now + timedelta(days=1), now, now + timedelta(days=5)
        rows["callback"].append({
            "callback_id": cid, "loan_id": data.loan_id, "stage": data.stage, "branch_id": data.branch_id,
            "party_id": party.party_id, "role": party.role, "state": "scheduled", "attempt": 1, "calls_made": 0,
            "contact_enc": cipher.encrypt_json({"name": party.name, "phone": party.phone, "email": party.email}),
            "caller_code_enc": cipher.encrypt(code), "phone_index": cipher.phone_index(party.phone),
            "timezone": party.timezone, "language": party.language, "contact_consent": party.contact_consent,
            "due_at": due, "deadline": deadline, "notice_at": notice, "flags": "", "arms": "{}",
            "created_at": now, "updated_at": now,
        })  # fmt: skip
        rows["timer"] += [{"callback_id": cid, "kind": k, "fire_at": t, "fired_at": None, "cancelled": False}
                          for k, t in (("due", due), ("deadline", deadline))]  # fmt: skip
        ref: dict[str, Any] = {
            "loan_id": data.loan_id, "callback_id": cid, "party_id": party.party_id, "role": party.role,
            "stage": data.stage, "branch_id": data.branch_id, "attempt": 1, "state": "scheduled",
        }  # fmt: skip
        scheduled = CallbackScheduled(
            **ref, due_at=due, deadline=deadline, notice_at=notice,
            verification_items=list(labels.VERIFICATION_ITEMS),
        )  # fmt: skip
        token = sign(secret=LINK_SECRET, callback_id=cid, expires_at=deadline)
        noticed = CallbackNoticeRequested(
            **ref, caller_code=code, self_service_url=page_url(public_url="http://127.0.0.1", token=token),
            deadline=deadline, timezone=party.timezone, channel="sms", due_at=due,
            purpose=labels.purpose(stage=data.stage, language=party.language),
            topics=labels.topics(items=labels.VERIFICATION_ITEMS, language=party.language),
            language=party.language, name=party.name, phone=party.phone, email=party.email,
        )  # fmt: skip
        for made, sealed in ((scheduled, False), (noticed, True)):
            envelope = encode(new_envelope(made, source="/huifang/scheduler", subject=data.loan_id)).decode()
            rows["callback_event"].append({"callback_id": cid, "type": made.event_type, "at": now,
                                           "detail": json.dumps({"attempt": 1})})  # fmt: skip
            rows["outbox"].append({
                "event_id": json.loads(envelope)["id"], "topic": prefix + made.topic, "key": data.loan_id,
                "payload": ENCRYPTED_PREFIX + cipher.encrypt(envelope) if sealed else envelope,
                "created_at": now, "sent_at": None,
            })  # fmt: skip
    return rows


def inserts(db: Database) -> dict[str, sa.Insert]:
    """Multi-row INSERTs on the scheduler's own tables (reflected from its migrations)."""
    from services.scheduler.models import Callback, CallbackEvent, LoanStage, Timer
    from shared.kafka import ProcessedEvent
    from shared.outbox import OutboxMessage

    models = (Callback, Timer, CallbackEvent, LoanStage, ProcessedEvent, OutboxMessage)
    tables = {m.__tablename__: m.__table__ for m in models}  # type: ignore[union-attr]
    return {name: sa.insert(table) for name, table in tables.items()}


class Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    """Notes when the raw consumer was first given partitions."""

    def __init__(self) -> None:
        self.at: datetime | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned and self.at is None:
            self.at = datetime.now(UTC)


async def raw_loop(st: Stack, db: Database, prefix: str, loans: int, listener: Assigned) -> None:
    settings = st.settings(prefix)
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=f"{prefix}raw", enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed", max_poll_records=200,
    )  # fmt: skip
    consumer.subscribe([settings.topic(LOAN_STAGE)], listener=listener)
    await consumer.start()
    cipher = st.cipher
    insert = inserts(db)
    done = 0
    try:
        while done < loans:
            batches = await consumer.getmany(timeout_ms=500, max_records=200)
            if not batches:
                continue
            now = datetime.now(UTC)
            rows = no_rows()
            dedupe, stages = [], []
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    dedupe.append({"consumer": "scheduler", "event_id": event["id"], "processed_at": now})
                    stages.append({"loan_id": event["data"]["loan_id"], "stage": event["data"]["stage"],
                                   "changed_at": now})  # fmt: skip
                    for table, made in plan_rows(cipher, event, now, prefix).items():
                        rows[table] += made
            async with db.engine.begin() as conn:
                await conn.execute(insert["processed_event"], dedupe)
                await conn.execute(insert["loan_stage"], stages)
                for table, values in rows.items():
                    await conn.execute(insert[table], values)
            await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
            done += len(dedupe)
    finally:
        await consumer.stop()


async def baseline_side(st: Stack, kind: str, loans: int, within: float) -> float:
    prefix = st.prefix()
    await produce_loans(st, prefix, loans)
    db = st.database(kind, prefix, "scheduler")
    await db.migrate(ROOT / "services" / "scheduler" / "migrations")
    try:
        listener = Assigned()
        loop = asyncio.create_task(raw_loop(st, db, prefix, loans, listener))
        rate = await committed_rate(db, loans * len(ROLES), within, lambda: listener.at)
        await loop
        print(f"  ingest baseline: {rate / len(ROLES):.0f} loans/s", flush=True)
        return rate / len(ROLES)
    finally:
        await drop(db)


async def measure(st: Stack, *, kind: str = "postgresql", loans: int = 4000, within: float = 60.0) -> list[Figure]:
    runs = await alternate(f"ingest ({kind})", baseline=lambda: baseline_side(st, kind, loans, within),
                           huifang=lambda: huifang_side(st, kind, loans, within))  # fmt: skip
    return [Figure(f"ingest: final_check loans (3 parties) → callbacks ({kind})", median(runs["huifang"]), "loans/s",
                   baseline=median(runs["baseline"]), goal="ratio ≥ 0.5")]  # fmt: skip
