"""The dashboard's copy of the notifier's escalations."""

from __future__ import annotations

from datetime import datetime

from services.outcomes.models import EscalationView
from shared.db import UnitOfWork, utcnow
from shared.events import EscalationAcknowledged, EscalationEvent, EscalationRaised, EscalationResolved

ESCALATION_STATE = {EscalationRaised: "open", EscalationAcknowledged: "acknowledged", EscalationResolved: "resolved"}
STATE_RANK = {"open": 0, "acknowledged": 1, "resolved": 2}


async def track_escalation(*, uow: UnitOfWork, event: EscalationEvent, at: datetime) -> EscalationView:
    """Keep the dashboard's copy of an escalation: raised (again at level 2), acknowledged, resolved."""
    state = ESCALATION_STATE[type(event)]
    view = await uow.session.get(EscalationView, event.escalation_id)
    if view is None:
        view = EscalationView(
            escalation_id=event.escalation_id,
            loan_id=event.loan_id,
            callback_id=event.callback_id,
            level=event.level,
            rule=event.rule,
            assignee=event.assignee,
            state=state,
            raised_at=at,
        )
    # A state never goes back (a level-2 raise after an acknowledgement keeps it acknowledged).
    if STATE_RANK[state] >= STATE_RANK[view.state]:
        view.state = state
    if event.level >= view.level:
        view.level, view.assignee = event.level, event.assignee
    view.updated_at = utcnow()
    uow.session.add(view)
    return view
