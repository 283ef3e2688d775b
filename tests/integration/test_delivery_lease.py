"""A replica whose lease ran out does not record over the replica that took the row (both databases)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from services.notifier.channels.webhook import DeliveryResult
from services.notifier.delivery import LEASE, DeliveryLoop
from services.notifier.models import Notification
from shared.crypto import Cipher, generate_key
from shared.db import Database, utcnow
from shared.outbox import OutboxMessage
from tests.support import service_database

CIPHER = Cipher([generate_key()])


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with service_database(database_url, "notifier", cipher=CIPHER) as db:
        yield db


async def test_stale_lease_does_not_overwrite_the_new_owner(database: Database) -> None:
    loan = f"L-{uuid.uuid4().hex[:8]}"
    async with database.uow() as uow:
        uow.session.add(
            Notification(
                notification_id=str(uuid.uuid4()),
                source_event_id="E-1",
                loan_id=loan,
                kind="refusal",
                recipient="officer:EMP-1",
                channel="webhook",
                payload="{}",
            )
        )
        await uow.commit()
    slow = DeliveryLoop(db=database, cipher=CIPHER, channels=None, retry=None, poll_seconds=0.1)  # type: ignore[arg-type]
    [mine] = await slow._claim()
    # The lease runs out and another replica claims the row and starts its own delivery.
    async with database.uow() as uow:
        await uow.session.execute(sa.update(Notification).values(lease_until=utcnow() + LEASE + timedelta(seconds=30)))
        await uow.commit()

    async with database.uow() as uow:
        await slow._record(uow, mine, DeliveryResult("ok"))
        await uow.commit()

    async with database.uow() as uow:
        note = (await uow.session.execute(sa.select(Notification))).scalar_one()
        emitted = (await uow.session.execute(sa.select(OutboxMessage))).scalars().all()
    assert note.status == "pending" and note.attempts == 0  # left to the replica that owns it now
    assert emitted == []  # and no notification.sent from the stale one
