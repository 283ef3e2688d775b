"""Two scheduler processes on one PostgreSQL, a few thousand callbacks: every one dispatched exactly once.

Run with `make test-load` (marker `load`; `make test` leaves it out).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from cli.devstack import free_port
from shared.crypto import generate_key
from shared.db import Database
from shared.events import Envelope, encode
from shared.kafka import create_topics
from shared.outbox import OutboxMessage
from shared.settings import Settings
from tests.support import Tap, loan_event, wait_for

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[2]
LOANS = 1000  # three parties each: 3000 callbacks; their notices go with the loans, their calls by 3000 due timers
ROLES = ("borrower", "co_borrower", "guarantor")
# The lead leaves room for a loaded machine: a notice that fires after its call is due is dropped
# by design, and this test is about each callback being dispatched once, not about lateness
# (`make bench-timers` measures that).
POLICY = """
[notice]
lead = "PT45S"
quiet_start = "00:00"
quiet_end = "00:00"

[calling_hours]
start = "00:00"
end = "24:00"
holidays = ""
"""


@pytest.fixture
async def replicas(
    kafka_bootstrap: str, postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Settings, list[int]]]:
    """Two `huifang run scheduler` processes sharing one database schema and one consumer group."""
    token = uuid.uuid4().hex[:8]
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=postgres_url,
        huifang_topic_prefix=f"load{token}.",
        huifang_db_schema_prefix=f"load{token}_",
        huifang_policy_file=policy,
        huifang_topic_partitions=6,
    )
    await create_topics(settings)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": postgres_url,
        "HUIFANG_TOPIC_PREFIX": settings.huifang_topic_prefix,
        "HUIFANG_DB_SCHEMA_PREFIX": settings.huifang_db_schema_prefix,
        "HUIFANG_POLICY_FILE": str(policy),
        "HUIFANG_ENCRYPTION_KEY": generate_key(),
        "HUIFANG_API_KEYS": "agent:load-agent",
        "HUIFANG_ENV": "test",
        "HUIFANG_DATA_DIR": str(tmp_path),
        "HUIFANG_TIMER_POLL_SECONDS": "0.2",
    }
    ports = [free_port(), free_port()]
    procs = [
        await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "huifang"),
            "run",
            "scheduler",
            env={**env, "HUIFANG_SCHEDULER_PORT": str(port)},
            cwd=ROOT,
        )
        for port in ports
    ]
    try:
        yield settings, ports
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def timers_fired(port: int) -> float:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("huifang_timers_fired_total{") and 'service="scheduler"' in line
    )


async def ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.timeout(600)
async def test_two_schedulers_dispatch_every_callback_exactly_once(replicas: tuple[Settings, list[int]]) -> None:
    settings, ports = replicas
    for port in ports:
        await wait_for(lambda port=port: ready(port), 120, f"scheduler on {port} to be ready")
    tap = Tap(settings)
    await tap.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=20)
    await producer.start()
    try:
        loans = [f"L-{uuid.uuid4().hex[:12]}" for _ in range(LOANS)]
        for loan in loans:
            envelope = Envelope(
                specversion="1.0", id=str(uuid.uuid4()), source="/los/load", type="loan.stage.changed",
                subject=loan, data=loan_event(loan, roles=ROLES),
            )  # fmt: skip
            await producer.send(settings.topic("loan.stage.v1"), value=encode(envelope), key=loan.encode())
        await producer.flush()
        callbacks = LOANS * len(ROLES)

        def due_ids() -> Counter[str]:
            return Counter(e["data"]["callback_id"] for e in tap.events("callback.due"))

        await wait_for(lambda: len(due_ids()) >= callbacks, 420, f"{callbacks} callbacks to fall due")

        # Everything the schedulers wrote has left the outbox and reached the tap: now count.
        db = Database(postgres_url_of(settings), schema=f"{settings.huifang_db_schema_prefix}scheduler", source="t")
        try:

            async def drained() -> bool:
                async with db.uow() as uow:
                    table = OutboxMessage.__table__  # type: ignore[attr-defined]
                    unsent = await uow.session.scalar(sa.select(sa.func.count()).where(table.c.sent_at.is_(None)))
                    total = await uow.session.scalar(sa.select(sa.func.count()).select_from(table))
                return unsent == 0 and len([r for r in tap.records if r.topic == "callback.lifecycle.v1"]) >= total

            await wait_for(drained, 120, "the outbox to drain to the tap")
        finally:
            await db.dispose()

        dues = tap.events("callback.due")
        counts = due_ids()
        assert len(counts) == callbacks
        assert max(counts.values()) == 1, "a callback was dispatched twice"
        notices = Counter(e["data"]["callback_id"] for e in tap.events("callback.notice.requested"))
        assert len(notices) == callbacks and max(notices.values()) == 1
        early = [e for e in dues if datetime.fromisoformat(e["time"]) < datetime.fromisoformat(e["data"]["due_at"])]
        assert early == [], f"{len(early)} callbacks fell due early"
        fired = [await timers_fired(port) for port in ports]
        # The notices were due at once and left with the loans' own transactions: only the calls took timers.
        assert sum(fired) == callbacks and all(f > 0 for f in fired), f"timers fired per replica: {fired}"
    finally:
        await producer.stop()
        await tap.stop()


def postgres_url_of(settings: Settings) -> str:
    assert settings.database_url
    return settings.database_url
