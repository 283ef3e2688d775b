"""Events in, adapted to the service layer: one handler per event class."""

from __future__ import annotations

from services.notifier import notifications
from services.notifier.outbound import Outbound, keep_contacts
from shared.db import UnitOfWork
from shared.events import (
    CallbackExpired,
    CallbackNoticeRequested,
    CallbackRefused,
    CallbackScheduled,
    Event,
    LoanStageChanged,
)
from shared.kafka import EventHandlers
from shared.policy import Policy


async def on_loan_stage(*, uow: UnitOfWork, event: Event[LoanStageChanged], out: Outbound) -> None:
    """Keep the latest officer and party contacts of the loan, encrypted; officer emails that waited go out."""
    await keep_contacts(uow=uow, event=event.data, out=out)


async def on_refused(*, uow: UnitOfWork, event: Event[CallbackRefused], policy: Policy, out: Outbound) -> None:
    """Notify the loan officer; escalate when a policy rule matches."""
    await notifications.refusal(uow=uow, event=event.data, event_id=event.id, policy=policy, out=out)


async def on_notice(*, uow: UnitOfWork, event: Event[CallbackNoticeRequested], policy: Policy, out: Outbound) -> None:
    """Send the party the advance notice."""
    await notifications.notice(uow=uow, event=event.data, event_id=event.id, policy=policy, out=out)


async def on_expired(*, uow: UnitOfWork, event: Event[CallbackExpired], policy: Policy, out: Outbound) -> None:
    """Tell the officer; the party gets the questionnaire when the attempts ran out."""
    await notifications.expired(uow=uow, event=event.data, event_id=event.id, policy=policy, out=out)


async def on_scheduled(*, uow: UnitOfWork, event: Event[CallbackScheduled], policy: Policy, out: Outbound) -> None:
    """Keep the callback's experiment arms; a callback without contact consent goes to the questionnaire at once."""
    await notifications.scheduled(uow=uow, event=event.data, event_id=event.id, policy=policy, out=out)


HANDLERS: EventHandlers = {
    LoanStageChanged: on_loan_stage,
    CallbackRefused: on_refused,
    CallbackNoticeRequested: on_notice,
    CallbackExpired: on_expired,
    CallbackScheduled: on_scheduled,
}
