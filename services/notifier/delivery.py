"""The delivery loop: claims due notifications, delivers them outside any transaction, records results."""

from __future__ import annotations

import asyncio
import heapq
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
import sqlalchemy as sa
import structlog
from opentelemetry.trace import SpanKind
from sqlmodel import col, select

from services.notifier.channels.email import SmtpTls, build_message, send_email
from services.notifier.channels.sms import send_sms
from services.notifier.channels.webhook import DeliveryResult, deliver
from services.notifier.contacts import open_contacts
from services.notifier.messages import compose
from services.notifier.models import LoanContact, Notification
from services.notifier.outbound import DELIVERY, seal
from shared.claims import claim
from shared.crypto import Cipher
from shared.db import Database, UnitOfWork, utcnow, woken
from shared.events import NotificationFailed, NotificationSent
from shared.metrics import NOTIFICATIONS
from shared.outbox import enqueue
from shared.tracing import continued, mark_failed

log = structlog.get_logger(__name__)

LEASE = timedelta(seconds=60)
CONTACT_UNKNOWN = "recipient's contact not known yet"


@dataclass(frozen=True)
class Retry:
    """Bounded tries with exponential backoff; jitter so retries from many rows do not arrive together."""

    max_attempts: int = 8
    base_seconds: float = 2.0
    cap_seconds: float = 900.0

    def backoff(self, attempts: int) -> timedelta:
        """The pause before the next try after `attempts` failed ones."""
        pause = min(self.base_seconds * 2.0 ** (attempts - 1), self.cap_seconds)
        return timedelta(seconds=pause * random.uniform(0.5, 1.5))


@dataclass(frozen=True)
class Channels:
    """Where each channel delivers; a channel whose address is None is not configured."""

    client: httpx.AsyncClient
    webhook_url: str | None
    secret: str
    sms_url: str | None
    smtp_host: str | None
    smtp_port: int
    smtp_from: str
    timeout: float
    smtp_tls: SmtpTls = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = None

    def configured(self, channel: str) -> bool:
        """Whether this deployment can send on `channel` at all."""
        return bool({"webhook": self.webhook_url, "sms": self.sms_url, "email": self.smtp_host}.get(channel))


@dataclass(frozen=True)
class Claimed:
    seq: int
    notification_id: str
    loan_id: str
    kind: str
    recipient: str
    channel: str
    payload: str
    address_enc: str | None
    message_enc: str | None
    lease_until: datetime | None = None  # our claim; a row whose lease changed was taken by another replica
    traceparent: str | None = None
    tracestate: str | None = None


def delivery_attributes(item: Claimed) -> dict[str, str | int]:
    """A delivery span's attributes: ids, channel and kind; never the address or the message."""
    return {
        "huifang.notification_id": item.notification_id,
        "huifang.notification.kind": item.kind,
        "huifang.notification.channel": item.channel,
        "huifang.loan_id": item.loan_id,
    }


class DeliveryLoop:
    """Delivers pending notifications at least once; receivers dedupe on `X-Huifang-Id` or Message-ID."""

    def __init__(
        self, *, db: Database, cipher: Cipher, channels: Channels, retry: Retry, poll_seconds: float, batch: int = 50
    ) -> None:
        self.db = db
        self.cipher = cipher
        self.channels = channels
        self.retry = retry
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._retries: list[datetime] = []  # when the retries this loop scheduled come due (a heap)

    async def run(self) -> None:
        signal = self.db.signal(DELIVERY)
        while True:
            # Cleared before the pass, not after: a notification committed during the pass keeps it
            # set, so it goes out at once. Polling stays, for what other replicas scheduled.
            signal.clear()
            handled = await self.deliver_due()
            if handled < self.batch:
                await woken(signal, self._pause())

    def _pause(self) -> float:
        """Seconds until the next poll, or until a retry this loop scheduled comes due if that is sooner."""
        now = utcnow()
        if self._retries and self._retries[0] <= now:
            while self._retries and self._retries[0] <= now:
                heapq.heappop(self._retries)
            return 0.0  # due now: the next pass claims them
        if not self._retries:
            return self.poll_seconds
        return min(self.poll_seconds, (self._retries[0] - now).total_seconds())

    async def deliver_due(self) -> int:
        """Claim, deliver and record one batch; returns how many notifications were handled."""
        claimed = await self._claim()
        if not claimed:
            return 0
        claimed = await self._compose_missing(claimed)
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
            # Commit the lease before any network call: no transaction stays open across it.
            await uow.commit()
        return [Claimed(**{f: getattr(r, f) for f in Claimed.__dataclass_fields__}) for r in rows]

    async def _compose_missing(self, claimed: list[Claimed]) -> list[Claimed]:
        """Address emails and SMS queued before the recipient's contact arrived, now that it may have."""
        waiting = [c for c in claimed if c.channel != "webhook" and c.address_enc is None]
        if not waiting:
            return claimed
        done: dict[int, tuple[str, str]] = {}
        async with self.db.uow() as uow:
            rows = await uow.session.execute(
                select(LoanContact).where(col(LoanContact.loan_id).in_({c.loan_id for c in waiting}))
            )
            contacts = {r.loan_id: open_contacts(self.cipher, r.contacts_enc) for r in rows.scalars()}
            for item in waiting:
                composed = compose(
                    kind=item.kind,
                    channel=item.channel,
                    recipient=item.recipient,
                    payload=json.loads(item.payload),
                    contacts=contacts.get(item.loan_id, {}),
                )
                if composed is not None:
                    done[item.seq] = seal(self.cipher, composed)
                    await uow.session.execute(
                        sa.update(Notification)
                        .where(col(Notification.seq) == item.seq)
                        .values(address_enc=done[item.seq][0], message_enc=done[item.seq][1])
                    )
            await uow.commit()
        return [
            Claimed(**{**c.__dict__, "address_enc": done[c.seq][0], "message_enc": done[c.seq][1]})
            if c.seq in done
            else c
            for c in claimed
        ]

    async def _deliver(self, item: Claimed) -> DeliveryResult | None:
        if not self.channels.configured(item.channel):
            return None
        try:
            # Bounded well inside the lease, so no other replica can claim the row while we send it
            # (asyncio.timeout: unlike wait_for on 3.11 it never swallows the loop's cancellation).
            async with asyncio.timeout(LEASE.total_seconds() / 2):
                # Continues the trace of the event that asked for it; webhooks and SMS carry `traceparent`.
                with continued(
                    f"deliver {item.channel}",
                    carrier={"traceparent": item.traceparent, "tracestate": item.tracestate},
                    kind=SpanKind.CLIENT,
                    attributes=partial(delivery_attributes, item),
                ):
                    result = await self._send(item)
                    if not result.ok:
                        mark_failed(result.error or result.outcome)
                    return result
        except TimeoutError:
            return DeliveryResult("retryable", error="timed out")
        except Exception as exc:
            # One odd row must not take the loop down; the exception text may hold personal data.
            log.error("notifier.delivery_error", notification_id=item.notification_id, error=type(exc).__name__)
            return DeliveryResult("retryable", error=f"unexpected: {type(exc).__name__}")

    async def _send(self, item: Claimed) -> DeliveryResult:
        ch = self.channels
        if item.channel == "webhook":
            assert ch.webhook_url is not None
            return await deliver(ch.client, ch.webhook_url, ch.secret, item.notification_id, json.loads(item.payload))
        if item.address_enc is None or item.message_enc is None:
            return DeliveryResult("retryable", error=CONTACT_UNKNOWN)
        to = self.cipher.decrypt(item.address_enc)
        message: dict[str, Any] = self.cipher.decrypt_json(item.message_enc)
        if item.channel == "sms":
            assert ch.sms_url is not None
            return await send_sms(
                client=ch.client,
                url=ch.sms_url,
                secret=ch.secret,
                notification_id=item.notification_id,
                to=to,
                text=message["body"],
            )
        assert ch.smtp_host is not None
        email = build_message(
            sender=ch.smtp_from,
            to=to,
            subject=message["subject"],
            body=message["body"],
            notification_id=item.notification_id,
        )
        return await send_email(
            host=ch.smtp_host,
            port=ch.smtp_port,
            message=email,
            timeout_s=ch.timeout,
            tls=ch.smtp_tls,
            username=ch.smtp_username,
            password=ch.smtp_password,
        )

    async def _record(self, uow: UnitOfWork, item: Claimed, result: DeliveryResult | None) -> None:
        query = select(Notification).where(Notification.seq == item.seq).with_for_update()
        note = (await uow.session.execute(query)).scalar_one()
        if note.status != "pending" or (item.lease_until is not None and note.lease_until != item.lease_until):
            return  # recorded already, or our lease ran out and another replica owns the row now
        now = utcnow()
        if result is None:
            self._finish(uow, note, now, error=f"{note.channel} channel not configured")
        elif result.ok:
            note.attempts += 1
            self._finish(uow, note, now, error=None)
        else:
            note.attempts += 1
            if not result.retryable or note.attempts >= self.retry.max_attempts:
                self._finish(uow, note, now, error=result.error or "delivery failed")
            else:
                note.last_error = result.error
                note.next_attempt_at = now + self.retry.backoff(note.attempts)
                note.lease_until = None
                heapq.heappush(self._retries, note.next_attempt_at)
                NOTIFICATIONS.labels(note.channel, "retry").inc()
                log.info(
                    "notifier.retry", notification_id=note.notification_id, attempts=note.attempts, error=result.error
                )
        uow.session.add(note)

    def _finish(self, uow: UnitOfWork, note: Notification, now: datetime, *, error: str | None) -> None:
        note.lease_until = None
        sent = NotificationSent(
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
            enqueue(uow, sent, key=note.loan_id)
            NOTIFICATIONS.labels(note.channel, "sent").inc()
        else:
            note.status, note.last_error = "failed", error[:500]
            enqueue(uow, NotificationFailed(**sent.model_dump(), error=note.last_error), key=note.loan_id)
            NOTIFICATIONS.labels(note.channel, "failed").inc()
            log.warning("notifier.failed", notification_id=note.notification_id, attempts=note.attempts, error=error)
