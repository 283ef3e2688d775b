"""Producer factory, topic creation, and the consumer runner: the one place that knows about
offsets, batches, rebalances and the dead-letter topic."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import SpanKind
from sqlmodel import Field, SQLModel

from shared import faults
from shared.db import Database, UnitOfWork, UTCDateTime, is_transient, utcnow
from shared.events import (
    DLQ_SUFFIX,
    EVENT_MODELS,
    TOPICS,
    Event,
    EventData,
    InvalidEvent,
    parse_event,
    validation_reason,
)
from shared.metrics import CONSUMER_BATCH_SECONDS, CONSUMER_LAG, CONSUMER_UP, DLQ_MESSAGES, EVENTS_CONSUMED, Every
from shared.settings import Settings
from shared.tracing import continued

log = structlog.get_logger(__name__)

TOPIC_ALREADY_EXISTS = 36
D = TypeVar("D", bound=EventData, contravariant=True)


class Handler(Protocol[D]):
    """Adapts one event type to the service layer: `async def on_x(*, uow, event: Event[X], ...deps)`."""

    def __call__(self, *, uow: UnitOfWork, event: Event[D]) -> Awaitable[None]: ...


# Handlers by event class; the consumer runner checks an event's type once, when it parses it.
Handlers = Mapping[type[EventData], Handler[Any]]
# A service's table before its dependencies are bound: handlers may ask for more than uow and event.
EventHandlers = dict[type[EventData], Callable[..., Awaitable[None]]]


H = TypeVar("H", bound=Callable[..., Awaitable[None]])
LOADER = "batch_loader"


def batch_loader(load: Callable[..., Awaitable[Callable[[], Awaitable[None]] | None]]) -> Callable[[H], H]:
    """Give a handler a loader. For each run of consecutive events of its type in a batch, the runner
    calls `load(uow=, events=)` once with their data, then the handler per event, all in the batch's
    transaction: the loader fetches with one query per table what the handler would query per event.
    A loader may return an awaitable callable: the runner awaits it after the handlers, before the commit
    (to write in bulk what the handlers left for it)."""

    def mark(handler: H) -> H:
        setattr(handler, LOADER, load)
        return handler

    return mark


def _inject(model: type[EventData], fn: Callable[..., Awaitable[None]], dependencies: Mapping[str, object]) -> Any:
    wanted = [p for p in inspect.signature(fn).parameters if p not in ("uow", "event", "events")]
    missing = [p for p in wanted if p not in dependencies]
    if missing:
        raise TypeError(f"handler {fn.__name__} for {model.event_type} needs {', '.join(missing)}")
    return partial(fn, **{p: dependencies[p] for p in wanted})


def bind(handlers: EventHandlers, **dependencies: object) -> dict[type[EventData], Handler[Any]]:
    """Give each handler (and its loader) the dependencies its signature names beyond `uow` and `event`
    (cosmicpython's `inject_dependencies`); a dependency nobody supplied stops the service at start, naming it."""
    bound: dict[type[EventData], Handler[Any]] = {}
    for model, handler in handlers.items():
        bound[model] = _inject(model, handler, dependencies)
        load = getattr(handler, LOADER, None)
        if load is not None:
            setattr(bound[model], LOADER, _inject(model, load, dependencies))
    return bound


def _run_from(todo: Sequence[tuple[ConsumerRecord, Event[EventData]]], start: int) -> list[Any]:
    """The data of the consecutive events of one type from `start` on."""
    kind = type(todo[start][1].data)
    run = []
    for _, event in todo[start:]:
        if type(event.data) is not kind:
            break
        run.append(event.data)
    return run


class ProcessedEvent(SQLModel, table=True):
    """Dedupe record: one row per (consumer, event id) handled."""

    __tablename__ = "processed_event"

    consumer: str = Field(primary_key=True, max_length=100)
    event_id: str = Field(primary_key=True, max_length=255)
    processed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def create_processed_event_table(op: object) -> None:
    """Used by each service's first migration."""
    op.create_table(  # type: ignore[attr-defined]
        "processed_event",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options common to producers, consumers and the admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        # SCRAM unless told otherwise: the password never crosses the wire (PLAIN sends it).
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "SCRAM-SHA-512"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return options


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer that does not lose or duplicate what the broker acknowledged."""
    return AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=30_000,
        max_batch_size=1_048_576,
    )


async def create_topics(settings: Settings, names: Sequence[str] = TOPICS) -> list[str]:
    """Create the contract's topics and their dead-letter topics; returns those newly made."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        wanted = [settings.topic(n) for n in names] + [settings.topic(n) + DLQ_SUFFIX for n in names]
        new = [NewTopic(name, settings.huifang_topic_partitions, settings.huifang_topic_replication) for name in wanted]
        response = await admin.create_topics(new, timeout_ms=30_000)
        created = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != TOPIC_ALREADY_EXISTS:
                raise KafkaError(f"cannot create topic {name}: error {code} {rest[0] if rest else ''}")
        return created
    finally:
        await admin.close()


def safe_reason(exc: BaseException) -> str:
    """An error's type, plus field-level detail for validation errors: never input values or SQL params."""
    from pydantic import ValidationError

    if isinstance(exc, InvalidEvent):
        return str(exc)
    if isinstance(exc, ValidationError):
        return f"{type(exc).__name__}: {validation_reason(exc)}"[:500]
    return type(exc).__name__


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The rebalance runs in aiokafka's coordinator task: wait for the batch in hand to commit.
        async with self.runner.batch_lock:
            log.info("consumer.revoked", service=self.runner.service, partitions=len(revoked))
            for tp in revoked:
                # The new owner reports this partition's lag now; a stale series here would double it.
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(self.runner.service, tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.runner.assigned = set(assigned)
        log.info("consumer.assigned", service=self.runner.service, partitions=len(assigned))


YIELD_EVERY = 20  # events handled between two turns of the event loop


class ConsumerRunner:
    """Consumes topics in batches: one transaction per batch, dedupe on event id, offsets after commit."""

    def __init__(
        self,
        *,
        service: str,
        settings: Settings,
        db: Database,
        producer: AIOKafkaProducer,
        topics: Sequence[str],
        handlers: Handlers,
    ) -> None:
        self.service = service
        self.settings = settings
        self.db = db
        self.producer = producer
        self.topics = list(topics)
        self.handlers = handlers
        self.consumer_name = service
        self.assigned: set[TopicPartition] = set()
        self.running = False
        self.last_error: str | None = None
        self._stopping = asyncio.Event()
        self.batch_lock = asyncio.Lock()
        self._lag_check = Every(1.0)
        # Every type of a subscribed topic is accepted (those without a handler are only marked seen);
        # any other type is dead-lettered as unknown.
        self._accepted = {
            settings.topic(t): frozenset(m.event_type for m in EVENT_MODELS if m.topic == t) for t in self.topics
        }

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=self.settings.group_id(self.service),
            client_id=f"huifang-{self.service}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.settings.huifang_consumer_batch,
            # Static membership: a replica that restarts within the session takes its partitions back
            # without a rebalance; a dead one is replaced after the (shorter) session timeout.
            group_instance_id=self.settings.instance_id(self.service),
            session_timeout_ms=self.settings.huifang_session_timeout_ms,
            heartbeat_interval_ms=max(1_000, self.settings.huifang_session_timeout_ms // 10),
            max_poll_interval_ms=self.settings.huifang_max_poll_interval_ms,
        )
        consumer.subscribe([self.settings.topic(t) for t in self.topics], listener=_Listener(self))
        await consumer.start()
        self.running = True
        CONSUMER_UP.labels(self.service).set(1)
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=self.settings.huifang_consumer_batch)
                if batches:
                    try:
                        async with self.batch_lock:
                            # Revoked while we waited for the lock: the new owner reads those.
                            held = {tp: records for tp, records in batches.items() if tp in consumer.assignment()}
                            if held:
                                await self._process(consumer, held)
                        backoff = 0.5
                        self.last_error = None
                    except Exception as exc:
                        if not is_transient(exc):
                            raise
                        # Database or broker unreachable: rewind the poll's partitions, pause once, and poll again.
                        self.last_error = f"{type(exc).__name__}: retrying"
                        log.warning("consumer.transient_error", service=self.service, error=type(exc).__name__)
                        for tp, records in batches.items():
                            if tp in consumer.assignment():
                                consumer.seek(tp, records[0].offset)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
                await self._record_lag(consumer)
        finally:
            self.running = False
            CONSUMER_UP.labels(self.service).set(0)
            await consumer.stop()

    async def _record_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per assigned partition, at most once a second: the last stable offset minus our position."""
        if not self._lag_check.due():
            return
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)  # read_committed: the end this consumer can see
            if end is None:
                continue  # no fetch answer for it yet
            position = await consumer.position(tp)
            CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(max(0, end - position))

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, and leave the loop (SIGTERM drains)."""
        self._stopping.set()

    async def _process(self, consumer: AIOKafkaConsumer, held: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """A poll's records of all its partitions in one transaction (each partition's in order: a key's
        events stay in order), then every partition's offset."""
        started = time.perf_counter()
        good: list[tuple[ConsumerRecord, Event[EventData]]] = []
        poison: list[tuple[ConsumerRecord, str]] = []
        for record in (record for records in held.values() for record in records):
            try:
                good.append((record, parse_event(record.value, self._accepted.get(record.topic))))
            except InvalidEvent as exc:
                poison.append((record, str(exc)))
        if good:
            try:
                await self._apply_batch(good)
            except Exception as exc:
                if is_transient(exc):
                    raise
                # One message is bad: redo them one by one so only that one goes to the DLQ.
                for record, event in good:
                    try:
                        await self._apply_batch([(record, event)])
                    except Exception as single:
                        if is_transient(single):
                            raise
                        log.error(
                            "consumer.handler_failed",
                            service=self.service,
                            event_id=event.id,
                            type=event.type,
                            error=type(single).__name__,
                        )
                        poison.append((record, f"handler failed: {safe_reason(single)}"))
        # Dead letters go out only once the good records are safely committed, so a transient
        # failure (and its redelivery) does not dead-letter the same record twice.
        for record, reason in sorted(poison, key=lambda item: (item[0].topic, item[0].partition, item[0].offset)):
            await self._dead_letter(record, reason)
        faults.point("consumer.committed")  # test only: the batch is in the database, its offsets not yet
        try:
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in held.items()})
        except (CommitFailedError, IllegalStateError):
            # A partition moved during the batch; the new owner redelivers and dedupe absorbs it.
            log.warning("consumer.commit_failed", service=self.service, partitions=len(held))
        CONSUMER_BATCH_SECONDS.labels(self.service).observe(time.perf_counter() - started)

    async def _apply_batch(self, batch: list[tuple[ConsumerRecord, Event[EventData]]]) -> None:
        results: list[tuple[str, str, str]] = []
        done: list[str] = []
        async with self.db.uow() as uow:
            seen = await self._already_processed(uow, [e.id for _, e in batch])
            todo = []
            finishing: list[Callable[[], Awaitable[None]]] = []  # what loaders hand back, awaited before commit
            for record, event in batch:
                if event.id in seen:
                    results.append((record.topic, event.type, "duplicate"))
                    continue
                seen.add(event.id)
                todo.append((record, event))
            for index, (record, event) in enumerate(todo):
                if index and index % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a batch is CPU-bound: let the process's other loops' replies in
                handler = self.handlers.get(type(event.data))
                load = getattr(handler, LOADER, None)
                if load is not None and (index == 0 or type(todo[index - 1][1].data) is not type(event.data)):
                    finish = await load(uow=uow, events=_run_from(todo, index))
                    if finish is not None:
                        finishing.append(finish)
                if handler is not None:
                    # The handler's span continues the producer's trace; what it enqueues carries it on.
                    with continued(
                        f"process {record.topic}",
                        carrier=event.envelope.model_extra,
                        kind=SpanKind.CONSUMER,
                        attributes=partial(self._span_attributes, record, event),
                    ):
                        await handler(uow=uow, event=event)
                done.append(event.id)
                results.append((record.topic, event.type, "handled" if handler else "ignored"))
            for finish in finishing:
                await finish()
            if done:
                # One multi-row insert for the batch's dedupe rows, in the same transaction as the effects.
                table = ProcessedEvent.__table__  # type: ignore[attr-defined]
                now = utcnow()
                await uow.session.execute(
                    sa.insert(table),
                    [{"consumer": self.consumer_name, "event_id": i, "processed_at": now} for i in done],
                )
            await uow.commit()
        for topic, etype, result in results:
            EVENTS_CONSUMED.labels(self.service, topic, etype, result).inc()

    def _span_attributes(self, record: ConsumerRecord, event: Event[EventData]) -> dict[str, str | int]:
        # Ids and types only: the data may hold personal details.
        return {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": self.settings.group_id(self.service),
            "messaging.message.id": event.id,
            "cloudevents.event_type": event.type,
            "huifang.service": self.service,
        }

    async def _already_processed(self, uow: UnitOfWork, ids: list[str]) -> set[str]:
        table = ProcessedEvent.__table__  # type: ignore[attr-defined]
        rows = await uow.session.execute(
            sa.select(table.c.event_id).where(table.c.consumer == self.consumer_name, table.c.event_id.in_(ids))
        )
        return {r[0] for r in rows}

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        headers = [
            *(record.headers or ()),
            ("dlq.error", reason.encode()),
            ("dlq.consumer", self.service.encode()),
            ("dlq.topic", record.topic.encode()),
            ("dlq.partition", str(record.partition).encode()),
            ("dlq.offset", str(record.offset).encode()),
        ]
        await self.producer.send_and_wait(
            record.topic + DLQ_SUFFIX, value=record.value, key=record.key, headers=headers
        )
        DLQ_MESSAGES.labels(self.service, record.topic).inc()
        log.warning(
            "consumer.dead_lettered",
            service=self.service,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason[:200],
        )
