"""Test helpers: an in-process Huifang (three services on real ports), a topic tap, waiting."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from pytest_httpserver import HTTPServer

from cli.devstack import free_port
from shared.crypto import Cipher
from shared.db import Database
from shared.events import DLQ_SUFFIX, EVENT_TYPES, TOPICS, Envelope, encode
from shared.kafka import create_topics
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"agent": "agent-key-1", "supervisor": "supervisor-key-1", "admin": "admin-key-1"}
# Who each test key acts as (HUIFANG_API_KEYS entries are role:principal:key).
PRINCIPALS = {"agent": "agent-1", "supervisor": "supervisor-1", "admin": "admin-1"}


@asynccontextmanager
async def no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    """For an app built by `create_app` alone, without a service's start-up and shutdown."""
    yield


def api_keys() -> str:
    """HUIFANG_API_KEYS of the test keys."""
    return ",".join(f"{role}:{PRINCIPALS[role]}:{key}" for role, key in KEYS.items())


WEBHOOK_SECRET = "whsec-test-1"


async def wait_for(predicate: Callable[[], Any], within: float = 30.0, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail with `what` after timeout."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


@contextmanager
def service_logs() -> Iterator[list[str]]:
    """Every structured log line the in-process services write meanwhile, rendered as JSON."""
    import structlog

    lines: list[str] = []

    def tee(_logger: Any, _name: str, event: Any) -> Any:
        lines.append(json.dumps(event, ensure_ascii=False, default=str))
        return event

    # Cached loggers share this list, so the tee sees every service (see shared/logs.py).
    processors = structlog.get_config()["processors"]
    processors.insert(0, tee)
    try:
        yield lines
    finally:
        processors.remove(tee)


@dataclass
class Tapped:
    topic: str
    key: str | None
    value: bytes
    headers: dict[str, str]

    @property
    def event(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.value)
        return result


@dataclass
class Tap:
    """Reads every topic of one system from the start, without a consumer group."""

    settings: Settings
    records: list[Tapped] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        names = [self.settings.topic(t) for t in TOPICS] + [self.settings.topic(t) + DLQ_SUFFIX for t in TOPICS]
        parts = []
        from aiokafka import TopicPartition

        for name in names:
            for p in consumer.partitions_for_topic(name) or await _partitions(consumer, name):
                parts.append(TopicPartition(name, p))
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)

        async def run() -> None:
            try:
                while True:
                    batch = await consumer.getmany(timeout_ms=200)
                    for recs in batch.values():
                        for r in recs:
                            self.records.append(
                                Tapped(
                                    r.topic.removeprefix(self.settings.huifang_topic_prefix),
                                    r.key.decode() if r.key else None,
                                    r.value,
                                    {k: v.decode() for k, v in (r.headers or ())},
                                )
                            )
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def events(self, type_: str, loan_id: str | None = None) -> list[dict[str, Any]]:
        out = []
        for rec in self.records:
            if rec.topic.endswith(DLQ_SUFFIX):
                continue
            try:
                ev = rec.event
            except ValueError:
                continue  # poison published by a test
            if not isinstance(ev, dict):
                continue
            if ev.get("type") == type_ and (loan_id is None or ev.get("data", {}).get("loan_id") == loan_id):
                out.append(ev)
        return out

    async def wait_events(self, type_: str, loan_id: str, count: int = 1, within: float = 30.0) -> list[dict[str, Any]]:
        await wait_for(lambda: len(self.events(type_, loan_id)) >= count, within, f"{count}× {type_} for {loan_id}")
        return self.events(type_, loan_id)

    def dead_letters(self, topic: str) -> list[Tapped]:
        return [r for r in self.records if r.topic == topic + DLQ_SUFFIX]


async def _partitions(consumer: AIOKafkaConsumer, name: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(name) or set()


class Huifang:
    """Scheduler, outcomes and notifier running in this process on real ports, real Kafka, one database."""

    def __init__(
        self,
        *,
        kind: str,
        bootstrap: str,
        database_url: str | None,
        workdir: Path,
        webhook: HTTPServer,
        policy: Path | None = None,
    ) -> None:
        token = uuid.uuid4().hex[:8]
        self.kind = kind
        self.webhook = webhook
        self.settings = Settings(
            kafka_bootstrap_servers=bootstrap,
            database_url=database_url,
            huifang_data_dir=workdir,
            huifang_topic_prefix=f"t{token}.",
            huifang_db_schema_prefix=f"t{token}_",
            huifang_api_keys=api_keys(),  # type: ignore[arg-type]
            huifang_policy_file=policy or ROOT / "tests" / "policy-test.toml",
            huifang_env="test",
            huifang_notify_webhook_url=webhook.url_for("/hooks/huifang"),
            huifang_sms_webhook_url=webhook.url_for("/hooks/sms"),
            huifang_webhook_secret=WEBHOOK_SECRET,  # type: ignore[arg-type]
            huifang_timer_poll_seconds=0.2,
            huifang_topic_partitions=3,
        )
        self.servers: dict[str, tuple[uvicorn.Server, asyncio.Task[None], int]] = {}
        self.tap = Tap(self.settings)
        self.producer: AIOKafkaProducer | None = None

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.servers[service][2]}"

    async def start(self) -> None:
        await create_topics(self.settings)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all")
        await self.producer.start()
        await self.tap.start()
        for service in ("scheduler", "outcomes", "notifier"):
            await self.start_service(service)

    async def start_service(self, service: str, settings: Settings | None = None) -> None:
        from services.notifier.app import create_app as notifier_app
        from services.outcomes.app import create_app as outcomes_app
        from services.scheduler.app import create_app as scheduler_app

        factory = {"scheduler": scheduler_app, "outcomes": outcomes_app, "notifier": notifier_app}[service]
        app: FastAPI = factory(settings or self.settings)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        server.capture_signals = _no_signals  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve())
        await wait_for(lambda: server.started or task.done(), 60.0, f"{service} to start")
        if task.done():
            task.result()
            raise RuntimeError(f"{service} did not start")
        self.servers[service] = (server, task, port)

    async def stop_service(self, service: str) -> None:
        server, task, _ = self.servers.pop(service)
        server.should_exit = True
        await task

    async def stop(self) -> None:
        for service in list(self.servers):
            await self.stop_service(service)
        await self.tap.stop()
        if self.producer:
            await self.producer.stop()

    async def publish(self, topic: str, value: bytes, key: str | None = None) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.settings.topic(topic), value=value, key=key.encode() if key else None)

    async def publish_event(self, type_: str, data: dict[str, Any], *, key: str, event_id: str | None = None) -> str:
        event_id = event_id or str(uuid.uuid4())
        envelope = Envelope(specversion="1.0", id=event_id, source="/los/test", type=type_, subject=key, data=data)
        await self.publish(EVENT_TYPES[type_].topic, encode(envelope), key)
        return event_id

    def client(self, service: str, role: str | None = "agent") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {KEYS[role]}"} if role else {}
        return httpx.AsyncClient(base_url=self.url(service), headers=headers, timeout=10)

    def webhook_deliveries(self, loan_id: str | None = None) -> list[tuple[dict[str, str], dict[str, Any], bytes]]:
        """(headers, parsed body, raw body) of each webhook POST received, for one loan or all."""
        out = []
        for request, _ in list(self.webhook.log):
            if request.path != "/hooks/huifang":
                continue
            raw = request.get_data()
            body = json.loads(raw)
            if loan_id is None or body.get("loan_id") == loan_id:
                out.append((dict(request.headers), body, raw))
        return out

    async def consumed(self, service: str, topic: str, result: str = "handled") -> float:
        """How many events of this system's `topic` the service's consumer counted with `result`."""
        async with httpx.AsyncClient(base_url=self.url(service)) as client:
            text = (await client.get("/metrics")).text
        wanted = (f'service="{service}"', f'topic="{self.settings.topic(topic)}"', f'result="{result}"')
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("huifang_events_consumed_total{") and all(w in line for w in wanted)
        )

    def sms_sent(self, phone: str) -> list[dict[str, Any]]:
        """The SMS gateway requests received for one phone number."""
        bodies = [json.loads(r.get_data()) for r, _ in list(self.webhook.log) if r.path == "/hooks/sms"]
        return [b for b in bodies if b.get("to") == phone]


@asynccontextmanager
async def service_database(
    url: str, service: str, *, cipher: Cipher, topic_prefix: str = ""
) -> AsyncIterator[Database]:
    """One service's migrated database on its own fresh schema (PostgreSQL) or file (SQLite)."""
    db = Database(
        url,
        schema=f"t{uuid.uuid4().hex[:8]}_{service}",
        source=f"/huifang/{service}",
        topic_prefix=topic_prefix,
        cipher=cipher,
    )
    await db.migrate(ROOT / "services" / service / "migrations")
    try:
        yield db
    finally:
        await db.dispose()


def _no_signals() -> Any:
    import contextlib

    return contextlib.nullcontext()


def loan_event(
    loan_id: str,
    *,
    stage: str = "final_check",
    roles: tuple[str, ...] = ("borrower", "guarantor"),
    consent: bool = True,
) -> dict[str, Any]:
    names = ["张伟", "王芳", "李强"]
    return {
        "loan_id": loan_id,
        "stage": stage,
        "previous_stage": "initial_review_passed",
        "branch_id": "BR-SH-001",
        "product": "first_home_mortgage",
        "amount": "1250000.00",
        "currency": "CNY",
        "officer": {"id": "EMP-778", "name": "李娜", "email": "li.na@bank.example", "phone": "+8613900139000"},
        "parties": [
            {
                "party_id": f"P-{i + 1}-{loan_id}",  # a person of their own per loan: daily caps match people
                "role": role,
                "name": names[i % 3],
                "phone": _phone(loan_id, i),
                "timezone": "Asia/Shanghai",
                "language": "zh-CN",
                "contact_consent": consent,
            }
            for i, role in enumerate(roles)
        ],
    }


def _phone(loan_id: str, index: int) -> str:
    """A mobile number of this loan's party: distinct across loans, so per-person caps do not join them."""
    import hashlib

    digits = int(hashlib.sha256(f"{loan_id}/{index}".encode()).hexdigest(), 16) % 10**8
    return f"+86138{digits:08d}"
