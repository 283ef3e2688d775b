"""Notifier HTTP API (CONTRACT.md section 3): notifications, escalations, acknowledgement."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlmodel import col, select

from services.notifier.escalation import acknowledge, resolve
from services.notifier.models import Escalation, EscalationState, Notification, NotificationStatus
from shared import idempotency
from shared.api import CipherDep, Cursor, DatabaseDep, Limit, Page, PathId, QueryId, paginate
from shared.crypto import Cipher
from shared.db import Database, UnitOfWork
from shared.idempotency import IdempotencyKey
from shared.web import Principal, SupervisorAuth

router = APIRouter(prefix="/v1", tags=["notifications"])



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


class NoteIn(BaseModel):
    note: str = Field(default="", max_length=4000)


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


@router.get("/notifications", response_model=Page[NotificationOut])
async def list_notifications(
    db: DatabaseDep,
    _: SupervisorAuth,
    loan_id: QueryId = None,
    status: NotificationStatus | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[NotificationOut]:
    """The delivery log, oldest first; pass `next_cursor` back as `cursor` for the next page."""
    query = select(Notification)
    if loan_id:
        query = query.where(Notification.loan_id == loan_id)
    if status:
        query = query.where(Notification.status == status)
    async with db.uow() as uow:
        return await paginate(uow, query, seq=col(Notification.seq), limit=limit, cursor=cursor, out=_notification_out)


@router.get("/escalations", response_model=Page[EscalationOut], tags=["escalations"])
async def list_escalations(
    db: DatabaseDep,
    cipher: CipherDep,
    _: SupervisorAuth,
    state: EscalationState | None = None,
    loan_id: QueryId = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[EscalationOut]:
    """Escalations, oldest first, optionally of one state or loan."""
    query = select(Escalation)
    if state:
        query = query.where(Escalation.state == state)
    if loan_id:
        query = query.where(Escalation.loan_id == loan_id)
    async with db.uow() as uow:
        return await paginate(
            uow, query, seq=col(Escalation.seq), limit=limit, cursor=cursor, out=lambda e: _escalation_out(e, cipher)
        )


@router.post("/escalations/{escalation_id}/ack", response_model=EscalationOut, tags=["escalations"])
async def ack_escalation(
    db: DatabaseDep,
    cipher: CipherDep,
    escalation_id: PathId,
    body: NoteIn,
    who: SupervisorAuth,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """A supervisor takes ownership of an open escalation (this stops its level-2 timer)."""
    return await _act(db, cipher, who, idempotency_key, escalation_id, body, action="ack")


@router.post("/escalations/{escalation_id}/resolve", response_model=EscalationOut, tags=["escalations"])
async def resolve_escalation(
    db: DatabaseDep,
    cipher: CipherDep,
    escalation_id: PathId,
    body: NoteIn,
    who: SupervisorAuth,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """A supervisor closes an escalation for good, acknowledged or not."""
    return await _act(db, cipher, who, idempotency_key, escalation_id, body, action="resolve")


async def _act(
    db: Database, cipher: Cipher, who: Principal, key: str | None, escalation_id: str, body: NoteIn,
    *, action: Literal["ack", "resolve"],
) -> JSONResponse:  # fmt: skip
    """Acknowledge or resolve once per Idempotency-Key."""
    change = acknowledge if action == "ack" else resolve

    async def run(uow: UnitOfWork) -> EscalationOut:
        esc = await change(uow=uow, escalation_id=escalation_id, by=_by(who), note=_seal(cipher, body.note))
        return _escalation_out(esc, cipher)

    keyed = idempotency.keyed(
        key, who=who, operation=f"notifier.{action}", params={"escalation_id": escalation_id}, body=body
    )
    return await idempotency.once(db=db, keyed=keyed, status_code=200, run=run)


def _by(who: Principal) -> str:
    return f"{who.role}:{who.name or who.key_id}"


def _seal(cipher: Cipher, note: str) -> str | None:
    # Notes are free text a supervisor typed: stored encrypted, never put in events.
    return cipher.encrypt(note) if note else None
