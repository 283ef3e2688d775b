"""Notifier tables: loan contacts, notifications to deliver, escalations."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import BigIntPK, UTCDateTime, utcnow

Channel = Literal["webhook", "email", "sms"]
NotificationStatus = Literal["pending", "sent", "failed"]
EscalationState = Literal["open", "acknowledged", "resolved"]


class LoanContact(SQLModel, table=True):
    """Who to reach about a loan, kept from its latest `loan.stage.changed`."""

    __tablename__ = "loan_contact"

    loan_id: str = Field(primary_key=True, max_length=128)
    branch_id: str = Field(max_length=128)
    officer_id: str = Field(max_length=128)
    contacts_enc: str = Field(sa_type=sa.Text)  # officer and parties: encrypted
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class NoticeArm(SQLModel, table=True):
    """A callback's arm in one experiment, from `callback.scheduled` (CONTRACT.md 2.4): picks its notice's variant."""

    __tablename__ = "notice_arm"

    callback_id: str = Field(primary_key=True, max_length=64)
    experiment: str = Field(primary_key=True, max_length=64)
    arm: str = Field(max_length=64)


class OfficerWait(SQLModel, table=True):
    """An officer notification made before the officer's email was known: its email goes out when it is."""

    __tablename__ = "officer_wait"

    source_event_id: str = Field(primary_key=True, max_length=255)  # one officer notification per event
    loan_id: str = Field(index=True, max_length=128)
    kind: str = Field(max_length=32)  # see messages.KINDS
    payload: str = Field(sa_type=sa.Text)  # JSON, ids only: the webhook's payload
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Notification(SQLModel, table=True):
    __tablename__ = "notification"
    # A redelivered event must not notify the same recipient twice on the same channel.
    __table_args__ = (sa.UniqueConstraint("source_event_id", "recipient", "channel", name="uq_notification_source"),)

    seq: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    notification_id: str = Field(unique=True, max_length=64)
    source_event_id: str = Field(max_length=255)
    loan_id: str = Field(index=True, max_length=128)
    kind: str = Field(max_length=32)  # see messages.KINDS
    recipient: str = Field(max_length=255)  # a role or an id, never an address
    channel: Channel = Field(sa_type=sa.String(16))
    payload: str = Field(sa_type=sa.Text)  # JSON, ids only
    status: NotificationStatus = Field(default="pending", sa_type=sa.String(16))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Email and SMS only: the address and the rendered message (names inside), encrypted.
    # Empty until the recipient's contact is known (it may arrive after the event that asks for it).
    address_enc: str | None = Field(default=None, sa_type=sa.Text)
    message_enc: str | None = Field(default=None, sa_type=sa.Text)
    # The W3C trace context of the event that asked for this notification: delivery continues it.
    traceparent: str | None = Field(default=None, max_length=64)
    tracestate: str | None = Field(default=None, max_length=512)


class Escalation(SQLModel, table=True):
    __tablename__ = "escalation"

    seq: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    escalation_id: str = Field(unique=True, max_length=64)
    loan_id: str = Field(index=True, max_length=128)
    callback_id: str | None = Field(default=None, max_length=64)
    level: int = 1
    rule: str = Field(max_length=64)
    assignee: str = Field(max_length=128)
    state: EscalationState = Field(default="open", sa_type=sa.String(16), index=True)
    raised_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    acked_by: str | None = Field(default=None, max_length=128)
    ack_note: str | None = Field(default=None, sa_type=sa.Text)  # encrypted
    acked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_by: str | None = Field(default=None, max_length=128)
    resolve_note: str | None = Field(default=None, sa_type=sa.Text)  # encrypted
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The durable level-2 timer: set while level 1 is open and unacknowledged, cleared when it fires.
    ack_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    escalated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# Encrypted columns, for `huifang rekey`.
SEALED: dict[type[SQLModel], tuple[str, ...]] = {
    LoanContact: ("contacts_enc",),
    Notification: ("address_enc", "message_enc"),
    Escalation: ("ack_note", "resolve_note"),
}
