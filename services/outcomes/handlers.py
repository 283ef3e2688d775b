"""Events in, adapted to the service layer: one handler per event class."""

from __future__ import annotations

from services.outcomes import escalations, stats, verification
from services.outcomes.party import page
from shared.crypto import Cipher
from shared.db import UnitOfWork, utcnow
from shared.events import (
    CallbackCancelled,
    CallbackDue,
    CallbackExpired,
    CallbackNoticeRequested,
    CallbackRef,
    CallbackRescheduled,
    CallbackScheduled,
    EscalationAcknowledged,
    EscalationEvent,
    EscalationRaised,
    EscalationResolved,
    Event,
)
from shared.kafka import EventHandlers


async def on_lifecycle(*, uow: UnitOfWork, event: Event[CallbackRef]) -> None:
    """Mirror the scheduler's callback; a closing event may complete the loan's verification."""
    await verification.track_callback(uow=uow, event=event.data)


async def on_scheduled(*, uow: UnitOfWork, event: Event[CallbackScheduled]) -> None:
    """Mirror the new callback and keep its experiment arms for the statistics."""
    await verification.track_callback(uow=uow, event=event.data)
    await stats.keep_arms(uow=uow, callback_id=event.data.callback_id, arms=event.data.arms)


async def on_notice(*, uow: UnitOfWork, event: Event[CallbackNoticeRequested], cipher: Cipher) -> None:
    """Keep what the party's own page needs (caller code, masked name, slots), encrypted."""
    await page.keep_page(uow=uow, event=event.data, cipher=cipher)


async def on_due(*, uow: UnitOfWork, event: Event[CallbackDue], cipher: Cipher) -> None:
    """Mirror the scheduler's callback, and refresh the party's page from the due call."""
    await verification.track_callback(uow=uow, event=event.data)
    await page.keep_page(uow=uow, event=event.data, cipher=cipher)


async def on_escalation(*, uow: UnitOfWork, event: Event[EscalationEvent]) -> None:
    """Keep the dashboard's copy of an escalation."""
    await escalations.track_escalation(uow=uow, event=event.data, at=event.envelope.time or utcnow())


# The personal events feed the party's page; of their contact details only the masked name is kept.
HANDLERS: EventHandlers = {
    CallbackScheduled: on_scheduled,
    CallbackNoticeRequested: on_notice,
    CallbackDue: on_due,
    CallbackRescheduled: on_lifecycle,
    CallbackCancelled: on_lifecycle,
    CallbackExpired: on_lifecycle,
    EscalationRaised: on_escalation,
    EscalationAcknowledged: on_escalation,
    EscalationResolved: on_escalation,
}
