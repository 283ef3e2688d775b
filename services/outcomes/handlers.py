"""Events in, adapted to the service layer: one handler per event class."""

from __future__ import annotations

from services.outcomes import escalations, verification
from shared.db import UnitOfWork, utcnow
from shared.events import (
    CallbackCancelled,
    CallbackDue,
    CallbackExpired,
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


async def on_escalation(*, uow: UnitOfWork, event: Event[EscalationEvent]) -> None:
    """Keep the dashboard's copy of an escalation."""
    await escalations.track_escalation(uow=uow, event=event.data, at=event.envelope.time or utcnow())


# callback.notice.requested is not here: it carries contact details that outcomes has no use for.
HANDLERS: EventHandlers = {
    CallbackScheduled: on_lifecycle,
    CallbackDue: on_lifecycle,
    CallbackRescheduled: on_lifecycle,
    CallbackCancelled: on_lifecycle,
    CallbackExpired: on_lifecycle,
    EscalationRaised: on_escalation,
    EscalationAcknowledged: on_escalation,
    EscalationResolved: on_escalation,
}
