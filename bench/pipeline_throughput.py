"""Pipeline throughput: Huifang's consumer runner and outbox relay against raw aiokafka and raw SQL.

For SQLite and PostgreSQL, on the same broker and database in the same run:

- consume: `ConsumerRunner` (parse and validate the CloudEvent, dedupe row, one transaction per
  partition batch, offset commit after the database commit) with a handler that adds one row per
  event, against a raw `getmany` loop that inserts the same rows with one executemany per poll
  and commits the offsets after it. Timed from partition assignment to the last offset commit.
- publish: `UnitOfWork.emit` in transactions of `--emit-batch` events with `OutboxRelay.run`
  beside it (outbox write, commit, relay send with acks=all and idempotence, delete), against a
  raw idempotent `AIOKafkaProducer` sending the same events (envelope built and encoded in both)
  in chunks of the relay's batch, each gathered. Timed from the first emit to the commit of the
  relay's last delete (raw: the last broker ack).
- latency: the same two paths at a fixed rate (`--latency-rate`), p50/p99 from the commit of the
  emitting transaction (raw: from `send`) to the broker's ack.

Throughput runs `--rounds` times per side, alternating which side goes first, on a fresh table
set each time; the best round of each side counts. Everything is warmed up first on other topics.

A broker (cli.devstack.KafkaBroker) and a throwaway PostgreSQL are started unless
KAFKA_BOOTSTRAP_SERVERS_TEST / TEST_DATABASE_URL are set. The report goes to bench/results/.

    make bench-pipeline          # or: .venv/bin/python bench/pipeline_throughput.py --events 5000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import Field, SQLModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.devstack import KafkaBroker, Postgres, free_port, kafka_libs  # noqa: E402
from shared.db import Database, UnitOfWork  # noqa: E402
from shared.events import (  # noqa: E402
    CALLBACK_LIFECYCLE,
    CONTENT_TYPE,
    LOAN_STAGE,
    CallbackScheduled,
    Event,
    LoanStageChanged,
    encode,
    new_envelope,
)
from shared.kafka import (  # noqa: E402
    ConsumerRunner,
    client_options,
    create_processed_event_table,
    create_topics,
    make_producer,
)
from shared.logs import configure_logging  # noqa: E402
from shared.outbox import OutboxRelay, create_outbox_table, enqueue  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.support import loan_event  # noqa: E402

RESULTS = ROOT / "bench" / "results"
HEADERS = [("content-type", CONTENT_TYPE.encode())]
INSERT = sa.text("INSERT INTO bench_event (event_id, loan_id, stage) VALUES (:event_id, :loan_id, :stage)")
WAIT = 180.0  # seconds any one measured run may take before the bench gives up


class BenchEvent(SQLModel, table=True):
    """The trivial handler's one row per event."""

    __tablename__ = "bench_event"

    event_id: str = Field(primary_key=True, max_length=64)
    loan_id: str = Field(max_length=64)
    stage: str = Field(max_length=32)


async def record_stage(*, uow: UnitOfWork, event: Event[LoanStageChanged]) -> None:
    """Add one row for the event to the unit of work."""
    uow.session.add(BenchEvent(event_id=event.id, loan_id=event.data.loan_id, stage=event.data.stage))


@dataclass
class Context:
    settings: Settings  # timed topics
    warm: Settings  # warm-up topics
    args: argparse.Namespace
    workdir: Path
    inputs: int  # events waiting on the timed loan.stage topic
    callbacks: list[CallbackScheduled]


# --- databases ---------------------------------------------------------------------------------


async def fresh_db(kind: str, url: str | None, ctx: Context, settings: Settings) -> Database:
    """An empty outbox, processed_event and bench_event, in a new SQLite file or PostgreSQL schema."""
    tag = uuid.uuid4().hex[:8]
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{ctx.workdir / f'bench-{tag}.db'}"
    assert url
    db = Database(url, schema=f"bench_{tag}", source="/bench", topic_prefix=settings.huifang_topic_prefix)
    async with db.engine.begin() as conn:
        if kind == "postgresql":
            await conn.execute(sa.text(f'CREATE SCHEMA "{db.schema}"'))
            await conn.execute(sa.text(f'SET LOCAL search_path TO "{db.schema}"'))
        await conn.run_sync(_create_tables)
    return db


def _create_tables(sync_conn: sa.Connection) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    ops = Operations(MigrationContext.configure(sync_conn))
    create_outbox_table(ops)  # the services' own DDL
    create_processed_event_table(ops)
    BenchEvent.__table__.create(sync_conn)  # type: ignore[attr-defined]


async def drop_db(db: Database) -> None:
    if db.dialect == "postgresql":
        async with db.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{db.schema}" CASCADE'))
    await db.dispose()


async def count(db: Database, table: str) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one())


# --- inputs ------------------------------------------------------------------------------------


def loan_payloads(n: int, tag: str) -> Iterator[tuple[bytes, bytes]]:
    """Realistic loan.stage.changed events (two parties each), as the LOS would publish them."""
    for i in range(n):
        loan_id = f"L-{tag}-{i:06d}"
        data = LoanStageChanged.model_validate(loan_event(loan_id))
        yield loan_id.encode(), encode(new_envelope(data, source="/los", subject=loan_id))


def callbacks(n: int) -> list[CallbackScheduled]:
    now = datetime.now(UTC)
    return [
        CallbackScheduled(
            loan_id=f"L-P{i:06d}",  # unique per event: broker acks are matched by key
            callback_id=str(uuid.uuid4()),
            party_id=f"P-1-L-P{i:06d}",
            role="borrower",
            stage="final_check",
            branch_id="BR-SH-001",
            attempt=1,
            state="scheduled",
            due_at=now + timedelta(days=1),
            deadline=now + timedelta(days=5),
            notice_at=now + timedelta(hours=1),
            verification_items=["identity", "loan_amount", "property_address", "repayment_source"],
        )
        for i in range(n)
    ]


async def produce(settings: Settings, topic: str, payloads: Iterator[tuple[bytes, bytes]]) -> int:
    producer = make_producer(settings)
    await producer.start()
    sent = 0
    try:
        for chunk in chunks(list(payloads), 1000):
            futures = [await producer.send(topic, value=v, key=k, headers=HEADERS) for k, v in chunk]
            await asyncio.gather(*futures)
            sent += len(chunk)
    finally:
        await producer.stop()
    return sent


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- consume -----------------------------------------------------------------------------------


class TimedRunner(ConsumerRunner):
    """The production runner, noting when its partitions were assigned and when it has done `target`."""

    def __init__(self, *, target: int, **kwargs: Any) -> None:
        self.assigned_at: float | None = None
        super().__init__(**kwargs)
        self.target = target
        self.done = 0
        self.finished_at = 0.0
        self.finished = asyncio.Event()

    @property  # type: ignore[override]
    def assigned(self) -> set[TopicPartition]:
        return self._assigned

    @assigned.setter
    def assigned(self, value: set[TopicPartition]) -> None:
        self._assigned = value
        if value and self.assigned_at is None:
            self.assigned_at = time.perf_counter()

    async def _process(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        await super()._process(consumer, tp, records)
        self.done += len(records)
        if self.done >= self.target and not self.finished.is_set():
            self.finished_at = time.perf_counter()
            self.finished.set()


async def consume_huifang(settings: Settings, db: Database, n: int) -> float:
    """Events per second through ConsumerRunner."""
    producer = make_producer(settings)  # for dead letters only; none are expected
    await producer.start()
    runner = TimedRunner(
        target=n,
        service=f"bench-{uuid.uuid4().hex[:8]}",
        settings=settings,
        db=db,
        producer=producer,
        topics=[LOAN_STAGE],
        handlers={LoanStageChanged: record_stage},
    )
    task = asyncio.create_task(runner.run())
    try:
        waiter = asyncio.create_task(runner.finished.wait())
        await asyncio.wait({task, waiter}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if not runner.finished.is_set():
            waiter.cancel()
            if task.done():
                task.result()  # the runner's own error
            raise TimeoutError(f"ConsumerRunner did {runner.done}/{n} events in {WAIT:.0f}s")
        runner.request_stop()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
    assert runner.assigned_at is not None
    rows, dedupe = await count(db, "bench_event"), await count(db, "processed_event")
    if rows != n or dedupe != n:
        raise RuntimeError(f"ConsumerRunner left {rows} rows and {dedupe} dedupe rows for {n} events")
    return n / (runner.finished_at - runner.assigned_at)


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.at: float | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned and self.at is None:
            self.at = time.perf_counter()


async def consume_raw(settings: Settings, db: Database, n: int) -> float:
    """Events per second through the simplest correct loop: getmany, executemany, commit, commit offsets."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=f"{settings.huifang_topic_prefix}raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.huifang_consumer_batch,
    )
    listener = _Assigned()
    consumer.subscribe([settings.topic(LOAN_STAGE)], listener=listener)
    await consumer.start()
    done = 0
    deadline = time.monotonic() + WAIT
    try:
        while done < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer did {done}/{n} events in {WAIT:.0f}s")
            batches = await consumer.getmany(timeout_ms=500, max_records=settings.huifang_consumer_batch)
            if not batches:
                continue
            rows = []
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    data = event["data"]
                    rows.append({"event_id": event["id"], "loan_id": data["loan_id"], "stage": data["stage"]})
            async with db.engine.begin() as conn:
                await conn.execute(INSERT, rows)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
            done += len(rows)
        finished = time.perf_counter()
    finally:
        await consumer.stop()
    assert listener.at is not None
    rows_in = await count(db, "bench_event")
    if rows_in != n:
        raise RuntimeError(f"raw consumer left {rows_in} rows for {n} events")
    return n / (finished - listener.at)


# --- publish -----------------------------------------------------------------------------------


class AckClock:
    """Stands in for the producer: passes every send on and notes when the broker acked each key."""

    def __init__(self, producer: AIOKafkaProducer, expected: int) -> None:
        self.producer = producer
        self.expected = expected
        self.sent_at: dict[bytes, float] = {}
        self.acked: dict[bytes, float] = {}
        self.failed = 0
        self.all_acked = asyncio.Event()

    async def send(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> asyncio.Future[Any]:
        self.sent_at.setdefault(key, time.perf_counter())
        future = await self.producer.send(topic, value=value, key=key, headers=headers)
        future.add_done_callback(functools.partial(self._done, key))
        return future

    def _done(self, key: bytes, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
            return
        self.acked[key] = time.perf_counter()
        if len(self.acked) >= self.expected:
            self.all_acked.set()

    async def wait(self) -> None:
        try:
            await asyncio.wait_for(self.all_acked.wait(), WAIT)
        except TimeoutError:
            raise TimeoutError(f"{len(self.acked)}/{self.expected} acked ({self.failed} failed)") from None


class TimedRelay(OutboxRelay):
    """The production relay, noting when the pass that deleted the last of `expected` rows committed."""

    def __init__(self, *, expected: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expected = expected
        self.total = 0
        self.done_at = 0.0
        self.done = asyncio.Event()

    async def publish_once(self) -> int:
        sent = await super().publish_once()
        self.total += sent
        if self.total >= self.expected and not self.done.is_set():
            self.done_at = time.perf_counter()
            self.done.set()
        return sent


def _due(start: float, index: int, rate: float | None) -> float:
    return start + index / rate if rate else 0.0


async def publish_huifang(
    settings: Settings, db: Database, items: Sequence[CallbackScheduled], *, batch: int, rate: float | None
) -> tuple[float, list[float]]:
    """Events per second and per-event latencies (emit commit to ack) through the outbox and its relay."""
    producer = make_producer(settings)
    await producer.start()
    clock = AckClock(producer, len(items))
    relay = TimedRelay(expected=len(items), db=db, producer=clock, service="bench")  # type: ignore[arg-type]
    committed: dict[bytes, float] = {}
    relay_task = asyncio.create_task(relay.run())
    try:
        started = time.perf_counter()
        for index, chunk in enumerate(chunks(items, batch)):
            if rate:
                await asyncio.sleep(max(0.0, _due(started, index * batch, rate) - time.perf_counter()))
            async with db.uow() as uow:
                for data in chunk:
                    enqueue(uow, data, key=data.loan_id)
                await uow.commit()
            now = time.perf_counter()
            for data in chunk:
                committed[data.loan_id.encode()] = now
        await clock.wait()
        await asyncio.wait_for(relay.done.wait(), WAIT)
    finally:
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
        await producer.stop()
    if (left := await count(db, "outbox")) != 0:
        raise RuntimeError(f"{left} outbox rows left after every event was acked")
    return len(items) / (relay.done_at - started), [clock.acked[k] - committed[k] for k in committed]


async def publish_raw(
    settings: Settings, items: Sequence[CallbackScheduled], *, batch: int, rate: float | None
) -> tuple[float, list[float]]:
    """The same events straight to Kafka: send a chunk, gather its acks; latency is send to ack."""
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    await producer.start()
    clock = AckClock(producer, len(items))
    topic = settings.topic(CALLBACK_LIFECYCLE)
    try:
        started = time.perf_counter()
        for index, chunk in enumerate(chunks(items, batch)):
            if rate:
                await asyncio.sleep(max(0.0, _due(started, index * batch, rate) - time.perf_counter()))
            futures = [
                await clock.send(
                    topic,
                    value=encode(new_envelope(data, source="/bench", subject=data.loan_id)),
                    key=data.loan_id.encode(),
                    headers=HEADERS,
                )
                for data in chunk
            ]
            await asyncio.gather(*futures)
        await clock.wait()
    finally:
        await producer.stop()
    last = max(clock.acked.values())
    return len(items) / (last - started), [clock.acked[k] - clock.sent_at[k] for k in clock.acked]


# --- the run -----------------------------------------------------------------------------------


def latency_ms(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49] * 1000, 2), "p99": round(cuts[98] * 1000, 2), "max": round(max(values) * 1000, 2)}


def compare(huifang: float, baseline: float) -> dict[str, float]:
    return {"huifang": round(huifang), "baseline": round(baseline), "ratio": round(huifang / baseline, 3)}


async def measure(kind: str, url: str | None, ctx: Context) -> dict[str, Any]:
    args = ctx.args
    out: dict[str, Any] = {}

    async def on_fresh(settings: Settings, fn: Any, *extra: Any, **kw: Any) -> Any:
        db = await fresh_db(kind, url, ctx, settings)
        try:
            return await fn(settings, db, *extra, **kw)
        finally:
            await drop_db(db)

    # Warm-up on the warm-up topics: imports, statement caches, connections, broker page cache.
    warm_items = ctx.callbacks[: args.warmup]
    await on_fresh(ctx.warm, consume_raw, args.warmup)
    await on_fresh(ctx.warm, consume_huifang, args.warmup)
    await publish_raw(ctx.warm, warm_items, batch=args.relay_batch, rate=None)
    await on_fresh(ctx.warm, publish_huifang, warm_items, batch=args.emit_batch, rate=None)

    # Rounds alternate which side goes first; each side's best round counts (noise only slows a run down).
    s = ctx.settings
    consume: dict[str, list[float]] = {"huifang": [], "baseline": []}
    publish: dict[str, list[tuple[float, list[float]]]] = {"huifang": [], "baseline": []}
    for round_ in range(args.rounds):
        order = ("baseline", "huifang") if round_ % 2 == 0 else ("huifang", "baseline")
        for side in order:
            fn = consume_raw if side == "baseline" else consume_huifang
            consume[side].append(await on_fresh(s, fn, ctx.inputs))
        for side in order:
            if side == "baseline":
                publish[side].append(await publish_raw(s, ctx.callbacks, batch=args.relay_batch, rate=None))
            else:
                run = await on_fresh(s, publish_huifang, ctx.callbacks, batch=args.emit_batch, rate=None)
                publish[side].append(run)
    out["consume_events_per_s"] = compare(max(consume["huifang"]), max(consume["baseline"]))
    out["consume_events_per_s"]["rounds"] = {k: [round(v) for v in vs] for k, vs in consume.items()}
    print(f"  {kind} consume  {out['consume_events_per_s']}", flush=True)
    best = {side: max(runs, key=lambda run: run[0]) for side, runs in publish.items()}
    out["publish_events_per_s"] = compare(best["huifang"][0], best["baseline"][0])
    out["publish_events_per_s"]["rounds"] = {k: [round(eps) for eps, _ in vs] for k, vs in publish.items()}
    out["publish_saturated_latency_ms"] = {side: latency_ms(run[1]) for side, run in best.items()}
    print(f"  {kind} publish  {out['publish_events_per_s']}", flush=True)

    few = ctx.callbacks[: args.latency_events]
    _, raw_lat = await publish_raw(s, few, batch=args.latency_batch, rate=args.latency_rate)
    _, hf_lat = await on_fresh(s, publish_huifang, few, batch=args.latency_batch, rate=args.latency_rate)
    out["publish_paced_latency_ms"] = {"huifang": latency_ms(hf_lat), "baseline": latency_ms(raw_lat)}
    out["publish_paced_latency_ms"]["ratio_p50"] = round(
        out["publish_paced_latency_ms"]["huifang"]["p50"] / out["publish_paced_latency_ms"]["baseline"]["p50"], 2
    )
    print(f"  {kind} latency  {out['publish_paced_latency_ms']}", flush=True)
    return out


async def server_versions(pg_url: str) -> dict[str, str]:
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            pg = str((await conn.execute(sa.text("SHOW server_version"))).scalar_one())
    finally:
        await engine.dispose()
    jars = sorted(kafka_libs(ROOT / ".local").glob("kafka_2.13-*.jar"))
    return {
        "postgresql": pg,
        "sqlite": sqlite3.sqlite_version,
        "kafka": jars[0].stem.split("-", 1)[1] if jars else "unknown",
    }


async def run(args: argparse.Namespace, bootstrap: str, pg_url: str, workdir: Path) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    settings = Settings(
        kafka_bootstrap_servers=bootstrap, huifang_topic_prefix=prefix, huifang_consumer_batch=args.consumer_batch
    )
    warm = settings.model_copy(update={"huifang_topic_prefix": prefix + "warm-"})
    await create_topics(settings, [LOAN_STAGE, CALLBACK_LIFECYCLE])
    await create_topics(warm, [LOAN_STAGE, CALLBACK_LIFECYCLE])
    started = time.perf_counter()
    await produce(warm, warm.topic(LOAN_STAGE), loan_payloads(args.warmup, "W"))
    inputs = await produce(settings, settings.topic(LOAN_STAGE), loan_payloads(args.events, "T"))
    print(f"produced {inputs} loan.stage.changed events in {time.perf_counter() - started:.1f}s", flush=True)
    ctx = Context(settings, warm, args, workdir, inputs, callbacks(args.events))

    results = {}
    for kind, url in (("sqlite", None), ("postgresql", pg_url)):
        print(f"{kind}:", flush=True)
        results[kind] = await measure(kind, url, ctx)
    packages = ("aiokafka", "sqlalchemy", "asyncpg", "aiosqlite", "pydantic")
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {**{p: version(p) for p in packages}, **await server_versions(pg_url)},
        "parameters": {
            "events": args.events,
            "warmup_events": args.warmup,
            "partitions": settings.huifang_topic_partitions,
            "consumer_batch": args.consumer_batch,
            "emit_batch": args.emit_batch,
            "relay_batch": args.relay_batch,
            "latency_events": args.latency_events,
            "latency_rate_per_s": args.latency_rate,
            "latency_batch": args.latency_batch,
            "rounds": args.rounds,
            "consume_event": "loan.stage.changed (two parties)",
            "publish_event": "callback.scheduled",
            "external_kafka": bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS_TEST")),
            "external_postgres": bool(os.environ.get("TEST_DATABASE_URL")),
        },
        "definitions": {
            "ratio": "huifang / baseline events per second (1.0 = as fast as the raw loop), best round of each",
            "consume": "from partition assignment to the offset commit of the last event",
            "publish": "from the first emit (raw: first send) to the commit of the relay's last delete "
            "(raw: the last broker ack); the relay runs beside the emitting loop",
            "latency": "emit transaction commit (raw: send call) to broker ack",
            "baseline_consume": "aiokafka getmany, json.loads, one executemany + commit per poll, offsets after",
            "baseline_publish": "AIOKafkaProducer(acks=all, idempotence, defaults otherwise), envelope built "
            "and encoded per event, chunks of relay_batch gathered",
        },
        "results": results,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'':12}{'huifang ev/s':>14}{'baseline ev/s':>15}{'ratio':>8}")
    for kind, res in report["results"].items():
        for what in ("consume", "publish"):
            row = res[f"{what}_events_per_s"]
            print(f"{kind[:6] + ' ' + what:12}{row['huifang']:>14}{row['baseline']:>15}{row['ratio']:>8.2f}")
    print(f"\n{'latency ms':22}{'huifang p50/p99':>18}{'baseline p50/p99':>19}")
    for kind, res in report["results"].items():
        for what in ("saturated", "paced"):
            lat = res[f"publish_{what}_latency_ms"]
            h, b = lat["huifang"], lat["baseline"]
            print(f"{kind[:6] + ' ' + what:22}{h['p50']:>9}/{h['p99']:<8}{b['p50']:>10}/{b['p99']:<8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per measured run")
    parser.add_argument("--warmup", type=int, default=1_000, help="events per warm-up run")
    parser.add_argument("--consumer-batch", type=int, default=200, help="HUIFANG_CONSUMER_BATCH (max records/poll)")
    parser.add_argument("--emit-batch", type=int, default=100, help="events emitted per transaction")
    parser.add_argument("--relay-batch", type=int, default=500, help="the relay's batch (raw: chunk gathered)")
    parser.add_argument("--latency-events", type=int, default=3_000, help="events in the paced latency runs")
    parser.add_argument("--latency-rate", type=float, default=1_000.0, help="events per second when paced")
    parser.add_argument("--latency-batch", type=int, default=10, help="events per transaction when paced")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per side; the best counts")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args()
    if args.warmup > args.events or args.latency_events > args.events:
        parser.error("--warmup and --latency-events may not exceed --events")
    configure_logging("WARNING")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retries while new topics get leaders

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="huifang-bench-pipeline-"))
    pgdata = ROOT / ".local" / f"bench-pg-{uuid.uuid4().hex[:8]}"  # the embedded server's user must reach it
    broker: KafkaBroker | None = None
    server: Postgres | None = None
    began = time.perf_counter()
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS_TEST")
        if not bootstrap:
            broker = KafkaBroker(workdir / "kafka", port=free_port(), controller_port=free_port(), heap="768m")
            broker.start()
            bootstrap = broker.bootstrap
        pg_url = os.environ.get("TEST_DATABASE_URL")
        if not pg_url:
            server = Postgres(pgdata)
            pg_url = server.start()
        print(f"kafka {bootstrap}, postgresql ready after {time.perf_counter() - began:.1f}s", flush=True)
        report = asyncio.run(asyncio.wait_for(run(args, bootstrap, pg_url, workdir), args.timeout))
    except KeyboardInterrupt:
        print("interrupted: stopping the broker and PostgreSQL", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(pgdata, ignore_errors=True)
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["wall_seconds"] = round(time.perf_counter() - began, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "pipeline_throughput.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_table(report)
    print(f"\nreport: {path.relative_to(ROOT)} ({report['wall_seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
