"""What every service runs: database, producer, outbox relay, consumer, background loops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer

from shared import faults
from shared.crypto import Cipher, cipher_from_settings
from shared.db import Database, resolve_url
from shared.kafka import ConsumerRunner, Handlers, make_producer
from shared.links import link_secret
from shared.outbox import OutboxRelay
from shared.settings import Settings

log = structlog.get_logger(__name__)


def cipher_for(settings: Settings) -> Cipher:
    """The encryption keys (newest first) and the index key; development makes them under the data dir."""
    return cipher_from_settings(
        settings.huifang_encryption_key.get_secret_value() if settings.huifang_encryption_key else None,
        settings.huifang_data_dir,
        allow_generate=settings.huifang_env != "production",
        index_key=settings.huifang_index_key.get_secret_value() if settings.huifang_index_key else None,
    )


class Runtime:
    """The parts of one service, started and stopped together by its lifespan."""

    def __init__(self, *, service: str, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.cipher: Cipher = cipher_for(settings)
        self.link_secret: bytes = link_secret(
            settings.huifang_link_secret.get_secret_value() if settings.huifang_link_secret else None,
            settings.huifang_data_dir,
            allow_generate=settings.huifang_env != "production",
        )
        self.db = Database(
            resolve_url(settings.database_url, settings.huifang_data_dir, service),
            schema=f"{settings.huifang_db_schema_prefix}{service}",
            source=f"/huifang/{service}",
            topic_prefix=settings.huifang_topic_prefix,
            cipher=self.cipher,
        )
        self.producer: AIOKafkaProducer = make_producer(settings)
        self.consumer: ConsumerRunner | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, str] = {}
        self._stopped = False

    @classmethod
    @asynccontextmanager
    async def running(cls, app: Any, *, service: str, settings: Settings) -> AsyncIterator[Runtime]:
        """A runtime for the app's lifespan, stopped however the lifespan ends (a failed start too)."""
        runtime = cls(service=service, settings=settings)
        app.state.runtime = runtime
        try:
            yield runtime
        finally:
            await runtime.stop()

    async def start(self, *, migrations: Path, topics: Sequence[str], handlers: Handlers) -> None:
        faults.arm(self.settings.huifang_fault_points)
        await self.db.migrate(migrations)
        await self.producer.start()
        self.consumer = ConsumerRunner(
            service=self.service,
            settings=self.settings,
            db=self.db,
            producer=self.producer,
            topics=topics,
            handlers=handlers,
        )
        self.spawn("outbox", OutboxRelay(db=self.db, producer=self.producer, service=self.service).run)
        self.spawn("consumer", self.consumer.run)

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop for the life of the service, restarting it with a pause if it crashes."""

        async def supervise() -> None:
            pause = 1.0
            while True:
                try:
                    await loop()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failures[name] = f"{name} crashed: {type(exc).__name__}"
                    # Type and place only: exception messages can carry personal data or SQL parameters.
                    frame = exc.__traceback__
                    while frame is not None and frame.tb_next is not None:
                        frame = frame.tb_next
                    where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
                    log.error("loop.crashed", service=self.service, loop=name, error=type(exc).__name__, where=where)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 30.0)
                    self._failures.pop(name, None)

        self._tasks[name] = asyncio.create_task(supervise(), name=f"{self.service}.{name}")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        consumer_task = self._tasks.get("consumer")
        if self.consumer is not None and consumer_task is not None:
            self.consumer.request_stop()
            # Let the batch in hand commit; a stuck one is cancelled and redelivered later.
            await asyncio.wait([consumer_task], timeout=self.settings.huifang_drain_seconds)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        await self.producer.stop()
        await self.db.dispose()

    def readiness(self) -> list[Callable[[], Awaitable[str | None]]]:
        async def database() -> str | None:
            try:
                await self.db.ping()
            except Exception as exc:
                return f"database unreachable: {type(exc).__name__}"
            return None

        async def kafka() -> str | None:
            try:
                await asyncio.wait_for(self.producer.client.fetch_all_metadata(), timeout=2.5)
            except Exception as exc:
                return f"kafka unreachable: {type(exc).__name__}"
            return None

        async def loops() -> str | None:
            problems = list(self._failures.values())
            problems += [f"{name} stopped" for name, task in self._tasks.items() if task.done()]
            if self.consumer is not None and self.consumer.last_error:
                problems.append(f"consumer: {self.consumer.last_error}")
            if self.consumer is not None and not self.consumer.running and "consumer" not in self._failures:
                problems.append("consumer not running")
            return "; ".join(problems) or None

        return [database, kafka, loops]
