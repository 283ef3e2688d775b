"""The delivery loop: claims due notifications, delivers them outside any transaction, records results."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
import structlog
from sqlmodel import select

from services.notifier.channels.webhook import DeliveryResult, deliver
from services.notifier.models import Notification
from shared.claims import claim
from shared.db import Database, UnitOfWork, utcnow
from shared.events import NotificationFailed, NotificationSent
from shared.metrics import NOTIFICATIONS

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 5
LEASE = timedelta(seconds=60)
MAX_BACKOFF_S = 60.0
NOT_CONFIGURED = "webhook channel not configured"


@dataclass(frozen=True)
class Claimed:
    seq: int
    notification_id: str
    payload: str


def backoff(attempts: int) -> timedelta:
    """Exponential, capped, jittered so retries from many rows do not arrive together."""
    return timedelta(seconds=min(2.0**attempts, MAX_BACKOFF_S) * random.uniform(0.5, 1.5))


class DeliveryLoop:
    """Delivers pending webhook notifications at least once; receivers dedupe on `X-Huifang-Id`."""

    def __init__(
        self,
        *,
        db: Database,
        client: httpx.AsyncClient,
        url: str | None,
        secret: str | None,
        poll_seconds: float,
        batch: int = 50,
    ) -> None:
        self.db = db
        self.client = client
        self.url = url
        self.secret = secret
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._warned = False

    async def run(self) -> None:
        if self.url and self.secret is None and not self._warned:
            self._warned = True
            log.warning("notifier.webhook_unsigned", detail="HUIFANG_WEBHOOK_SECRET unset; signing with ''")
        while True:
            handled = await self.deliver_due()
            if handled < self.batch:
                await asyncio.sleep(self.poll_seconds)

    async def deliver_due(self) -> int:
        """Claim, deliver and record one batch; returns how many notifications were handled."""
        claimed = await self._claim()
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._deliver(c) for c in claimed))
        async with self.db.uow() as uow:
            for item, result in zip(claimed, results, strict=True):
                await self._record(uow, item, result)
            await uow.commit()
        return len(claimed)

    async def _claim(self) -> list[Claimed]:
        now = utcnow()
        table = Notification.__table__  # type: ignore[attr-defined]
        async with self.db.uow() as uow:
            rows = await claim(
                uow,
                table,
                where=[
                    table.c.status == "pending",
                    table.c.next_attempt_at <= now,
                    sa.or_(table.c.lease_until.is_(None), table.c.lease_until <= now),
                ],
                order_by=table.c.next_attempt_at,
                limit=self.batch,
                values={"lease_until": now + LEASE},
            )
            # Commit the lease before any HTTP call: no transaction stays open across the network.
            await uow.commit()
        return [Claimed(seq=r.seq, notification_id=r.notification_id, payload=r.payload) for r in rows]

    async def _deliver(self, item: Claimed) -> DeliveryResult | None:
        if not self.url:
            return None
        try:
            return await deliver(
                self.client, self.url, self.secret or "", item.notification_id, json.loads(item.payload)
            )
        except Exception as exc:
            # One odd row must not take the loop down; treat it as a failed attempt.
            log.exception("notifier.delivery_error", notification_id=item.notification_id)
            return DeliveryResult("retryable", error=f"unexpected: {type(exc).__name__}")

    async def _record(self, uow: UnitOfWork, item: Claimed, result: DeliveryResult | None) -> None:
        query = select(Notification).where(Notification.seq == item.seq)
        note = (await uow.session.execute(query)).scalar_one()
        if note.status != "pending":
            return
        now = utcnow()
        if result is None:
            self._finish(uow, note, now, error=NOT_CONFIGURED)
        elif result.ok:
            note.attempts += 1
            self._finish(uow, note, now, error=None)
        else:
            note.attempts += 1
            if not result.retryable or note.attempts >= MAX_ATTEMPTS:
                self._finish(uow, note, now, error=result.error or "delivery failed")
            else:
                note.last_error = result.error
                note.next_attempt_at = now + backoff(note.attempts)
                note.lease_until = None
                NOTIFICATIONS.labels(note.channel, "retry").inc()
                log.info(
                    "notifier.retry", notification_id=note.notification_id, attempts=note.attempts, error=result.error
                )
        uow.session.add(note)

    def _finish(self, uow: UnitOfWork, note: Notification, now: datetime, *, error: str | None) -> None:
        note.lease_until = None
        common = dict(
            notification_id=note.notification_id,
            loan_id=note.loan_id,
            channel=note.channel,
            kind=note.kind,
            recipient=note.recipient,
            source_event_id=note.source_event_id,
            attempts=note.attempts,
        )
        if error is None:
            note.status, note.sent_at, note.last_error = "sent", now, None
            uow.emit(NotificationSent(**common), key=note.loan_id)  # type: ignore[arg-type]
            NOTIFICATIONS.labels(note.channel, "sent").inc()
        else:
            note.status, note.last_error = "failed", error[:500]
            uow.emit(NotificationFailed(**common, error=note.last_error), key=note.loan_id)  # type: ignore[arg-type]
            NOTIFICATIONS.labels(note.channel, "failed").inc()
            log.warning("notifier.failed", notification_id=note.notification_id, attempts=note.attempts, error=error)
