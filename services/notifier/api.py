"""Notifier HTTP API (CONTRACT.md section 3): notifications, escalations, acknowledgement."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlmodel import col, select

from services.notifier.escalation import escalation_event
from services.notifier.models import Escalation, Notification
from shared import idempotency
from shared.crypto import Cipher
from shared.db import Database, UnitOfWork, utcnow
from shared.events import EscalationAcknowledged, EscalationResolved
from shared.idempotency import IdempotencyKey
from shared.outbox import enqueue
from shared.web import Principal, SupervisorAuth, problem

router = APIRouter(prefix="/v1", tags=["notifications"])

EscalationState = Literal["open", "acknowledged", "resolved"]
NotificationStatus = Literal["pending", "sent", "failed"]


class NotificationOut(BaseModel):
    notification_id: str
    source_event_id: str
    loan_id: str
    kind: str
    recipient: str
    channel: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


class EscalationOut(BaseModel):
    escalation_id: str
    loan_id: str
    callback_id: str | None
    level: int
    rule: str
    assignee: str
    state: str
    raised_at: datetime
    acked_by: str | None
    ack_note: str | None
    acked_at: datetime | None
    resolved_by: str | None
    resolve_note: str | None
    resolved_at: datetime | None
    ack_due_at: datetime | None  # when it goes to level 2 unless acknowledged
    escalated_at: datetime | None


class EscalationPage(BaseModel):
    items: list[EscalationOut]
    next_cursor: str | None


class NoteIn(BaseModel):
    note: str = Field(default="", max_length=4000)


def _db(request: Request) -> Database:
    db: Database = request.app.state.runtime.db
    return db


def _cipher(request: Request) -> Cipher:
    cipher: Cipher = request.app.state.runtime.cipher
    return cipher


def _notification_out(n: Notification) -> NotificationOut:
    # Address and message stay encrypted: the log shows ids, status and errors, never personal data.
    exclude = {"seq", "payload", "lease_until", "address_enc", "message_enc"}
    return NotificationOut(**n.model_dump(exclude=exclude), payload=json.loads(n.payload))


def _escalation_out(e: Escalation, cipher: Cipher) -> EscalationOut:
    # Notes are shown to supervisors over the API but stored encrypted and never put in events.
    return EscalationOut(
        **e.model_dump(exclude={"seq", "ack_note", "resolve_note"}),
        ack_note=cipher.decrypt(e.ack_note) if e.ack_note else None,
        resolve_note=cipher.decrypt(e.resolve_note) if e.resolve_note else None,
    )


def _by(who: Principal) -> str:
    return f"{who.role}:{who.key_id}"


@router.get("/notifications", response_model=NotificationPage)
async def list_notifications(
    request: Request,
    _: SupervisorAuth,
    loan_id: str | None = None,
    status: NotificationStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d+$")] = None,
) -> NotificationPage:
    """The delivery log, oldest first; pass `next_cursor` back as `cursor` for the next page."""
    query = select(Notification).order_by(col(Notification.seq)).limit(limit + 1)
    if loan_id:
        query = query.where(Notification.loan_id == loan_id)
    if status:
        query = query.where(Notification.status == status)
    if cursor:
        query = query.where(col(Notification.seq) > int(cursor))
    # Build the response inside the unit of work: its rollback on exit expires the loaded rows.
    async with _db(request).uow() as uow:
        rows = list((await uow.session.execute(query)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return NotificationPage(
            items=[_notification_out(n) for n in rows], next_cursor=str(rows[-1].seq) if more else None
        )


@router.get("/escalations", response_model=EscalationPage, tags=["escalations"])
async def list_escalations(
    request: Request,
    _: SupervisorAuth,
    state: EscalationState | None = None,
    loan_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d+$")] = None,
) -> EscalationPage:
    """Escalations, oldest first, optionally of one state or loan."""
    query = select(Escalation).order_by(col(Escalation.seq)).limit(limit + 1)
    if state:
        query = query.where(Escalation.state == state)
    if loan_id:
        query = query.where(Escalation.loan_id == loan_id)
    if cursor:
        query = query.where(col(Escalation.seq) > int(cursor))
    cipher = _cipher(request)
    async with _db(request).uow() as uow:
        rows = list((await uow.session.execute(query)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return EscalationPage(
            items=[_escalation_out(e, cipher) for e in rows], next_cursor=str(rows[-1].seq) if more else None
        )


@router.post("/escalations/{escalation_id}/ack", response_model=EscalationOut, tags=["escalations"])
async def ack_escalation(
    request: Request, escalation_id: str, body: NoteIn, who: SupervisorAuth, idempotency_key: IdempotencyKey = None
) -> Any:
    """A supervisor takes ownership of an open escalation (this stops its level-2 timer)."""
    return await _once(request, escalation_id, body, who, idempotency_key, action="ack")


@router.post("/escalations/{escalation_id}/resolve", response_model=EscalationOut, tags=["escalations"])
async def resolve_escalation(
    request: Request, escalation_id: str, body: NoteIn, who: SupervisorAuth, idempotency_key: IdempotencyKey = None
) -> Any:
    """A supervisor closes an escalation for good, acknowledged or not."""
    return await _once(request, escalation_id, body, who, idempotency_key, action="resolve")


async def _once(
    request: Request, escalation_id: str, body: NoteIn, who: Principal, key: str | None, *, action: str
) -> JSONResponse:
    """Run `_change` once per Idempotency-Key."""

    async def change(uow: UnitOfWork) -> EscalationOut:
        return await _change(uow, _cipher(request), escalation_id, body, who, action=action)

    keyed = idempotency.keyed(
        key, who=who, operation=f"notifier.{action}", params={"escalation_id": escalation_id}, body=body
    )
    return await idempotency.once(db=_db(request), keyed=keyed, status_code=200, run=change)


async def _change(
    uow: UnitOfWork, cipher: Cipher, escalation_id: str, body: NoteIn, who: Principal, *, action: str
) -> EscalationOut:
    """Acknowledge or resolve the escalation in the unit of work; returns it as the API shows it."""
    esc = await _find_for_update(uow.session, escalation_id)
    note = cipher.encrypt(body.note) if body.note else None
    if action == "ack":
        if esc.state != "open":
            raise problem(409, f"escalation {escalation_id} is {esc.state}, not open")
        esc.state, esc.acked_by, esc.acked_at, esc.ack_due_at, esc.ack_note = (
            "acknowledged",
            _by(who),
            utcnow(),
            None,
            note,
        )
        event: EscalationAcknowledged | EscalationResolved = escalation_event(
            EscalationAcknowledged, esc, by=esc.acked_by
        )
    else:
        if esc.state == "resolved":
            raise problem(409, f"escalation {escalation_id} is already resolved")
        esc.state, esc.resolved_by, esc.resolved_at, esc.ack_due_at, esc.resolve_note = (
            "resolved",
            _by(who),
            utcnow(),
            None,
            note,
        )
        event = escalation_event(EscalationResolved, esc, by=esc.resolved_by)
    uow.session.add(esc)
    enqueue(uow, event, key=esc.loan_id)
    return _escalation_out(esc, cipher)


async def _find_for_update(session: Any, escalation_id: str) -> Escalation:
    # Row lock on PostgreSQL so two supervisors cannot both acknowledge; SQLite serialises writers anyway.
    result = await session.execute(
        select(Escalation).where(Escalation.escalation_id == escalation_id).with_for_update()
    )
    esc: Escalation | None = result.scalar_one_or_none()
    if esc is None:
        raise problem(404, f"escalation {escalation_id} not found")
    return esc
