"""Events in: loan stages keep contacts; refusals notify the officer and may raise an escalation."""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from sqlmodel import col, select

from services.notifier.models import Escalation, LoanContact, Notification
from shared.crypto import Cipher
from shared.db import UnitOfWork, utcnow
from shared.events import CallbackRefused, EscalationEvent, EscalationRaised, Event, LoanStageChanged
from shared.kafka import Handler
from shared.policy import Policy

CHANNEL = "webhook"
E = TypeVar("E", bound=EscalationEvent)
# Fixed namespace so a notification's id follows from (event, recipient, channel) on every replica.
_NS = uuid.UUID("6b2f1c4e-9a53-4d1e-8f0a-1c2d3e4f5a6b")


async def on_loan_stage(*, uow: UnitOfWork, event: LoanStageChanged, cipher: Cipher) -> LoanContact:
    """Keep the latest officer and party contacts of a loan, encrypted."""
    fields = {"party_id", "role", "name", "phone", "email", "language", "timezone"}
    contacts = {
        "officer": event.officer.model_dump(mode="json"),
        "parties": [p.model_dump(mode="json", include=fields) for p in event.parties],
    }
    row = await uow.session.get(LoanContact, event.loan_id)
    if row is None:
        row = LoanContact(
            loan_id=event.loan_id, branch_id=event.branch_id, officer_id=event.officer.id, contacts_enc=""
        )
    row.branch_id = event.branch_id
    row.officer_id = event.officer.id
    row.contacts_enc = cipher.encrypt_json(contacts)
    row.updated_at = utcnow()
    uow.session.add(row)
    # Flush so a second event for the loan in the same batch finds this row.
    await uow.session.flush()
    return row


async def queue_notification(
    *, uow: UnitOfWork, source_event_id: str, loan_id: str, kind: str, recipient: str, payload: dict[str, Any]
) -> Notification | None:
    """Insert a pending webhook notification unless this event already made one for this recipient."""
    existing = await uow.session.execute(
        select(Notification).where(
            Notification.source_event_id == source_event_id,
            Notification.recipient == recipient,
            Notification.channel == CHANNEL,
        )
    )
    if existing.scalar_one_or_none() is not None:
        return None
    note = Notification(
        notification_id=str(uuid.uuid5(_NS, f"{source_event_id}|{recipient}|{CHANNEL}")),
        source_event_id=source_event_id,
        loan_id=loan_id,
        kind=kind,
        recipient=recipient,
        channel=CHANNEL,
        payload=json.dumps(payload, separators=(",", ":")),
        status="pending",
        next_attempt_at=utcnow(),
    )
    uow.session.add(note)
    await uow.session.flush()
    return note


def escalation_rule(policy: Policy, event: CallbackRefused) -> str | None:
    """Which rule, if any, makes this refusal an escalation."""
    if event.reason_code in policy.escalation.escalate_reasons:
        return f"reason:{event.reason_code}"
    if event.refusals_for_loan == policy.escalation.escalate_after_refusals_per_loan:
        return "refusals_per_loan"
    return None


async def active_escalation(*, uow: UnitOfWork, loan_id: str) -> Escalation | None:
    # Acknowledged counts as active: someone is already on the loan, a second escalation is noise.
    result = await uow.session.execute(
        select(Escalation)
        .where(Escalation.loan_id == loan_id, col(Escalation.level).in_((1, 2)), Escalation.state != "resolved")
        .limit(1)
    )
    return result.scalar_one_or_none()


async def on_refusal(*, uow: UnitOfWork, event: CallbackRefused, event_id: str, policy: Policy) -> Escalation | None:
    """Notify the loan officer; raise a level-1 escalation when a policy rule matches."""
    contact = await uow.session.get(LoanContact, event.loan_id)
    officer_id = contact.officer_id if contact else None
    base = {
        "loan_id": event.loan_id,
        "callback_id": event.callback_id,
        "party_id": event.party_id,
        "role": event.role,
        "stage": event.stage,
        "branch_id": event.branch_id,
        "reason_code": event.reason_code,
        "refusals_for_loan": event.refusals_for_loan,
        "occurred_at": event.occurred_at.isoformat(),
    }
    if policy.escalation.notify_officer_on_refusal:
        # Without a known officer the webhook receiver routes by loan_id; never drop the notice.
        await queue_notification(
            uow=uow,
            source_event_id=event_id,
            loan_id=event.loan_id,
            kind="refusal",
            recipient=f"officer:{officer_id}" if officer_id else "officer",
            payload={"type": "callback.refused", **base, "officer_id": officer_id},
        )
    rule = escalation_rule(policy, event)
    if rule is None or await active_escalation(uow=uow, loan_id=event.loan_id) is not None:
        return None
    esc = Escalation(
        escalation_id=str(uuid.uuid5(_NS, f"escalation|{event_id}")),
        loan_id=event.loan_id,
        callback_id=event.callback_id,
        level=1,
        rule=rule,
        assignee=policy.escalation.level1,
        state="open",
        raised_at=utcnow(),
    )
    uow.session.add(esc)
    await uow.session.flush()
    uow.emit(escalation_event(EscalationRaised, esc), key=esc.loan_id)
    await queue_notification(
        uow=uow,
        source_event_id=event_id,
        loan_id=event.loan_id,
        kind="escalation",
        recipient=esc.assignee,
        payload={
            "type": "escalation.raised",
            **base,
            "escalation_id": esc.escalation_id,
            "level": esc.level,
            "rule": esc.rule,
            "assignee": esc.assignee,
            "officer_id": officer_id,
        },
    )
    return esc


def escalation_event(model: type[E], esc: Escalation, *, by: str | None = None) -> E:
    """An escalation.* event for this escalation (ids only, never notes)."""
    return model(
        escalation_id=esc.escalation_id,
        level=esc.level,
        rule=esc.rule,
        loan_id=esc.loan_id,
        assignee=esc.assignee,
        callback_id=esc.callback_id,
        by=by,
    )


def handlers(policy: Policy, cipher: Cipher) -> dict[str, Handler]:
    async def loan_stage(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, LoanStageChanged)
        await on_loan_stage(uow=uow, event=event.data, cipher=cipher)

    async def refused(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, CallbackRefused)
        await on_refusal(uow=uow, event=event.data, event_id=event.id, policy=policy)

    return {"loan.stage.changed": loan_stage, "callback.refused": refused}
