"""Events in, adapted to the callback rules: one handler per event class."""

from __future__ import annotations

from services.scheduler import callbacks
from services.scheduler.notices import Notices
from shared.crypto import Cipher
from shared.db import UnitOfWork
from shared.events import CallbackOutcomeRecorded, Event, LoanStageChanged
from shared.kafka import EventHandlers, batch_loader
from shared.policy import Policy


# A poll's loans are loaded together (stages, callbacks, the people's calls), then handled one by one.
@batch_loader(callbacks.load_loans)
async def on_loan_stage(
    *, uow: UnitOfWork, event: Event[LoanStageChanged], policy: Policy, cipher: Cipher, notices: Notices
) -> None:
    """A loan moved: open callbacks for a calling stage (notices due now go with them), cancel them for
    rejected/withdrawn."""
    await callbacks.loan_moved(uow=uow, event=event.data, policy=policy, cipher=cipher, notices=notices)


async def on_outcome(*, uow: UnitOfWork, event: Event[CallbackOutcomeRecorded], policy: Policy) -> None:
    """An attempt was recorded: close, retry later, move to the party's time, or expire."""
    await callbacks.apply_outcome(uow=uow, event=event.data, policy=policy)


HANDLERS: EventHandlers = {LoanStageChanged: on_loan_stage, CallbackOutcomeRecorded: on_outcome}
