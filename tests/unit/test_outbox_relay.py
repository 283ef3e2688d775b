"""The relay loop stops when cancelled, even as new rows are signalled (pure: no broker, no database)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from shared.outbox import OutboxRelay


class IdleRelay(OutboxRelay):
    async def publish_once(self) -> int:
        return 0


async def test_cancel_arriving_with_a_wake_up_still_stops_the_loop() -> None:
    db = SimpleNamespace(outbox_signal=asyncio.Event(), dialect="sqlite", schema="test")
    relay = IdleRelay(db=db, producer=None, service="test")  # type: ignore[arg-type]
    relay.poll_seconds = 30
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.05)  # the loop now waits for the signal
    db.outbox_signal.set()  # a commit lands...
    task.cancel()  # ...just as the service stops
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
