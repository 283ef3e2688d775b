"""Escalations: level 1 from a refusal, level 2 by a durable timer when level 1 is not acknowledged."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import col, select

from services.notifier.models import Escalation, LoanContact
from services.notifier.outbound import NAMESPACE, queue_notification
from shared.claims import claim
from shared.db import Database, UnitOfWork, utcnow, woken
from shared.errors import Rejected
from shared.events import (
    CallbackRefused,
    EscalationAcknowledged,
    EscalationEvent,
    EscalationRaised,
    EscalationResolved,
)
from shared.metrics import ESCALATIONS_OPEN, TIMER_LATENESS, TIMERS_FIRED, Every
from shared.outbox import enqueue
from shared.policy import Policy
from shared.tracing import span, timer_attributes

E = TypeVar("E", bound=EscalationEvent)
COUNT_EVERY_SECONDS = 5.0
# The level-2 loop's wake-up: a new level-1 escalation may be due before the one it sleeps for.
ESCALATIONS = "escalations"


def escalation_rules(policy: Policy, event: CallbackRefused) -> list[str]:
    """Every rule that makes this refusal an escalation, most specific first."""
    rules = []
    if event.reason_code in policy.escalation.escalate_reasons:
        rules.append(f"reason:{event.reason_code}")
    if event.refusals_for_loan == policy.escalation.escalate_after_refusals_per_loan:
        rules.append("refusals_per_loan")
    return rules


async def active_escalation(*, uow: UnitOfWork, loan_id: str, rule: str) -> Escalation | None:
    """The loan's unresolved escalation for this rule, if any."""
    # Acknowledged counts as active: someone is already on it. Another rule (say suspected_fraud
    # after a privacy concern) is news, so it raises its own escalation.
    result = await uow.session.execute(
        select(Escalation)
        .where(Escalation.loan_id == loan_id, Escalation.rule == rule, Escalation.state != "resolved")
        .limit(1)
    )
    return result.scalar_one_or_none()


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


async def acknowledge(*, uow: UnitOfWork, escalation_id: str, by: str, note: str | None) -> Escalation:
    """Someone takes ownership of an open escalation: its level-2 timer stops."""
    esc = await _locked(uow=uow, escalation_id=escalation_id)
    if esc.state != "open":
        raise Rejected(409, f"escalation {escalation_id} is {esc.state}, not open")
    esc.state, esc.acked_by, esc.acked_at, esc.ack_due_at, esc.ack_note = "acknowledged", by, utcnow(), None, note
    uow.session.add(esc)
    enqueue(uow, escalation_event(EscalationAcknowledged, esc, by=by), key=esc.loan_id)
    return esc


async def resolve(*, uow: UnitOfWork, escalation_id: str, by: str, note: str | None) -> Escalation:
    """Someone closes an escalation for good, acknowledged or not."""
    esc = await _locked(uow=uow, escalation_id=escalation_id)
    if esc.state == "resolved":
        raise Rejected(409, f"escalation {escalation_id} is already resolved")
    esc.state, esc.resolved_by, esc.resolved_at, esc.ack_due_at, esc.resolve_note = "resolved", by, utcnow(), None, note
    uow.session.add(esc)
    enqueue(uow, escalation_event(EscalationResolved, esc, by=by), key=esc.loan_id)
    return esc


async def _locked(*, uow: UnitOfWork, escalation_id: str) -> Escalation:
    # Row lock on PostgreSQL so two supervisors cannot both acknowledge; SQLite serialises writers anyway.
    result = await uow.session.execute(
        select(Escalation).where(col(Escalation.escalation_id) == escalation_id).with_for_update()
    )
    esc = result.scalar_one_or_none()
    if esc is None:
        raise Rejected(404, f"escalation {escalation_id} not found")
    return esc


async def announce(
    *, uow: UnitOfWork, esc: Escalation, source_event_id: str, officer_id: str | None, **extra: Any
) -> None:
    """Emit `escalation.raised` at the current level and tell its assignee by webhook (ids only)."""
    enqueue(uow, escalation_event(EscalationRaised, esc), key=esc.loan_id)
    payload = {
        "type": "escalation.raised",
        "loan_id": esc.loan_id,
        "callback_id": esc.callback_id,
        "escalation_id": esc.escalation_id,
        "level": esc.level,
        "rule": esc.rule,
        "assignee": esc.assignee,
        "officer_id": officer_id,
        **extra,
    }
    await queue_notification(
        uow=uow,
        source_event_id=source_event_id,
        loan_id=esc.loan_id,
        kind="escalation",
        recipient=esc.assignee,
        channel="webhook",
        payload=payload,
    )


async def raise_level1(
    *, uow: UnitOfWork, event: CallbackRefused, event_id: str, policy: Policy, officer_id: str | None, now: datetime
) -> Escalation | None:
    """Raise a level-1 escalation for the first matching rule not already active; arms its level-2 timer."""
    # One refusal raises at most one escalation, but an active one for its reason does not hide
    # the N-th-refusal rule (two privacy refusals: the second still counts).
    rule = None
    for candidate in escalation_rules(policy, event):
        if await active_escalation(uow=uow, loan_id=event.loan_id, rule=candidate) is None:
            rule = candidate
            break
    if rule is None:
        return None
    esc = Escalation(
        escalation_id=str(uuid.uuid5(NAMESPACE, f"escalation|{event_id}")),
        loan_id=event.loan_id,
        callback_id=event.callback_id,
        level=1,
        rule=rule,
        assignee=policy.escalation.level1,
        state="open",
        raised_at=now,
        ack_due_at=now + policy.escalation.ack_timeout,
    )
    uow.session.add(esc)
    await uow.session.flush()
    uow.wake(ESCALATIONS)
    await announce(
        uow=uow,
        esc=esc,
        source_event_id=event_id,
        officer_id=officer_id,
        party_id=event.party_id,
        role=event.role,
        stage=event.stage,
        branch_id=event.branch_id,
        reason_code=event.reason_code,
        refusals_for_loan=event.refusals_for_loan,
    )
    return esc


async def raise_level2(*, uow: UnitOfWork, esc: Escalation, policy: Policy, now: datetime) -> None:
    """Hand an unacknowledged level-1 escalation to the level-2 assignee."""
    previous = esc.assignee
    contact = await uow.session.get(LoanContact, esc.loan_id)
    esc.level, esc.assignee, esc.escalated_at, esc.ack_due_at = 2, policy.escalation.level2, now, None
    uow.session.add(esc)
    await announce(
        uow=uow,
        esc=esc,
        source_event_id=f"escalation:{esc.escalation_id}:level2",
        officer_id=contact.officer_id if contact else None,
        previous_assignee=previous,
        raised_at=esc.raised_at.isoformat(),
    )


class EscalationLoop:
    """Fires level-2 timers that have come due; rows are claimed, so replicas never fire one twice."""

    def __init__(self, *, db: Database, policy: Policy, poll_seconds: float, batch: int = 100) -> None:
        self.db = db
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._count_check = Every(COUNT_EVERY_SECONDS)

    async def run(self) -> None:
        signal = self.db.signal(ESCALATIONS)
        while True:
            signal.clear()  # before the pass: an escalation raised during it wakes the next one
            fired = await self.fire_due()
            await self.count_open()
            if fired < self.batch:
                await woken(signal, await self.until_next_due())

    async def until_next_due(self) -> float:
        """Seconds until the earliest level-2 deadline, at most `poll_seconds` (the fallback poll)."""
        table = Escalation.__table__  # type: ignore[attr-defined]
        async with self.db.uow() as uow:
            due: datetime | None = await uow.session.scalar(
                sa.select(sa.func.min(table.c.ack_due_at)).where(
                    table.c.ack_due_at.is_not(None), table.c.state == "open", table.c.level == 1
                )
            )
        if due is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, (due - utcnow()).total_seconds()))

    async def count_open(self) -> None:
        """Open escalations per level, for the alert on level 2; at most every few seconds."""
        if not self._count_check.due():
            return
        table = Escalation.__table__  # type: ignore[attr-defined]
        async with self.db.uow() as uow:
            rows = await uow.session.execute(
                sa.select(table.c.level, sa.func.count()).where(table.c.state == "open").group_by(table.c.level)
            )
            counts = {int(level): int(n) for level, n in rows}
        for level in (1, 2):
            ESCALATIONS_OPEN.labels(str(level)).set(counts.get(level, 0))

    async def fire_due(self) -> int:
        """Raise to level 2 every open level-1 escalation past its acknowledgement deadline."""
        now = utcnow()
        table = Escalation.__table__  # type: ignore[attr-defined]
        async with self.db.uow() as uow:
            # Claim and escalate in one transaction: a crash before commit leaves the timer armed.
            rows = await claim(
                uow,
                table,
                where=[table.c.ack_due_at <= now, table.c.state == "open", table.c.level == 1],
                order_by=table.c.ack_due_at,
                limit=self.batch,
                values={"ack_due_at": None},
            )
            for row in rows:
                esc = (await uow.session.execute(select(Escalation).where(col(Escalation.seq) == row.seq))).scalar_one()
                due = esc.raised_at + self.policy.escalation.ack_timeout
                with span("timer escalation", attributes=timer_attributes("escalation", esc.escalation_id)):
                    await raise_level2(uow=uow, esc=esc, policy=self.policy, now=now)
                TIMERS_FIRED.labels("notifier", "escalation").inc()
                TIMER_LATENESS.labels("notifier", "escalation").observe(max(0.0, (now - due).total_seconds()))
            await uow.commit()
        return len(rows)
