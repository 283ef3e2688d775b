"""Outcomes tables: its own view of callbacks and escalations, every attempt, each loan's verification."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import BigIntPK, UTCDateTime, utcnow
from shared.events import AttemptChannel, CallbackState, Disposition, ReasonCode, Role, Stage, VerificationStatus

PartyActionName = Literal["confirm", "reschedule", "decline", "not_me"]


class CallbackView(SQLModel, table=True):
    """What outcomes knows of a callback, built from callback.lifecycle.v1."""

    __tablename__ = "callback_view"

    callback_id: str = Field(primary_key=True, max_length=64)
    loan_id: str = Field(index=True, max_length=128)
    stage: Stage = Field(sa_type=sa.String(32))
    branch_id: str = Field(max_length=128)
    party_id: str = Field(max_length=128)
    role: Role = Field(sa_type=sa.String(32))
    state: CallbackState = Field(sa_type=sa.String(32))
    attempt: int = 1
    verification_items: str = Field(default="[]", sa_type=sa.Text)  # JSON list
    due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    deadline: datetime | None = Field(default=None, sa_type=UTCDateTime)
    final_disposition: str | None = Field(default=None, max_length=32)
    superseded: bool = False  # an earlier round of the stage's verification, already reported
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    # Set by the attempt that closed the callback, for the refusal statistics.
    reason_code: ReasonCode | None = Field(default=None, sa_type=sa.String(32))
    agent_id: str | None = Field(default=None, max_length=128)
    channel: AttemptChannel | None = Field(default=None, sa_type=sa.String(16))


class CallbackArm(SQLModel, table=True):
    """A callback's arm in one experiment, from `callback.scheduled` (CONTRACT.md 2.4)."""

    __tablename__ = "callback_arm"

    callback_id: str = Field(primary_key=True, max_length=64)
    experiment: str = Field(primary_key=True, max_length=64, index=True)
    arm: str = Field(max_length=64)


class Attempt(SQLModel, table=True):
    __tablename__ = "attempt"

    attempt_id: str = Field(primary_key=True, max_length=64)
    callback_id: str = Field(index=True, max_length=64)
    loan_id: str = Field(index=True, max_length=128)
    stage: Stage = Field(sa_type=sa.String(32))
    branch_id: str = Field(max_length=128)
    role: Role = Field(sa_type=sa.String(32))
    attempt: int
    disposition: Disposition = Field(sa_type=sa.String(32))
    reason_code: ReasonCode | None = Field(default=None, sa_type=sa.String(32))
    agent_id: str | None = Field(default=None, max_length=128)  # None on the party's own page
    recorded_by: str | None = Field(default=None, max_length=64)  # the principal of the key that recorded it
    channel: AttemptChannel = Field(default="phone", sa_type=sa.String(16))
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_s: int | None = None
    notes_enc: str | None = Field(default=None, sa_type=sa.Text)  # encrypted, never emitted
    reschedule_to: datetime | None = Field(default=None, sa_type=UTCDateTime)
    verification: str = Field(default="{}", sa_type=sa.Text)  # JSON object item -> bool
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RevokedSession(SQLModel, table=True):
    """A dashboard session ended by logging out; kept until it would have expired anyway."""

    __tablename__ = "revoked_session"

    session_id: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class LoanVerification(SQLModel, table=True):
    __tablename__ = "loan_verification"

    loan_id: str = Field(primary_key=True, max_length=128)
    stage: Stage = Field(primary_key=True, sa_type=sa.String(32))
    status: VerificationStatus = Field(sa_type=sa.String(32))
    parties: str = Field(sa_type=sa.Text)  # JSON list of PartyResult
    completed_at: datetime = Field(sa_type=UTCDateTime)


class EscalationView(SQLModel, table=True):
    """What outcomes knows of an escalation, built from notification.v1, for the dashboard."""

    __tablename__ = "escalation_view"

    escalation_id: str = Field(primary_key=True, max_length=64)
    loan_id: str = Field(index=True, max_length=128)
    callback_id: str | None = Field(default=None, max_length=64)
    level: int
    rule: str = Field(max_length=128)
    assignee: str = Field(max_length=128)
    state: str = Field(index=True, max_length=16)  # open, acknowledged, resolved
    raised_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PartyPage(SQLModel, table=True):
    """What the party's own page shows beyond the callback view, from the personal lifecycle events."""

    __tablename__ = "party_page"

    callback_id: str = Field(primary_key=True, max_length=64)
    language: str = Field(max_length=16)
    timezone: str = Field(max_length=64)
    masked_name_enc: str = Field(sa_type=sa.Text)  # encrypted, though masked
    caller_code_enc: str | None = Field(default=None, sa_type=sa.Text)  # encrypted
    slots: str = Field(default="[]", sa_type=sa.Text)  # JSON list of RFC 3339 times the page may offer
    linked: bool = False  # the scheduler issued a page link for this callback
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PartyAction(SQLModel, table=True):
    """One action the party took on their page; each action takes effect once per callback."""

    __tablename__ = "party_action"
    __table_args__ = (sa.UniqueConstraint("callback_id", "action", name="uq_party_action"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    callback_id: str = Field(max_length=64, index=True)
    action: PartyActionName = Field(sa_type=sa.String(16))
    items: str = Field(default="[]", sa_type=sa.Text)  # JSON list of the ticked verification items
    slot: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reason_code: ReasonCode | None = Field(default=None, sa_type=sa.String(32))
    attempt_id: str | None = Field(default=None, max_length=64)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PartyPost(SQLModel, table=True):
    """One form post to a party's page, for the per-token rate limit (kept in the database: replicas share it)."""

    __tablename__ = "party_post"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    callback_id: str = Field(max_length=64, index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


# Encrypted columns, for `huifang rekey`.
SEALED: dict[type[SQLModel], tuple[str, ...]] = {
    Attempt: ("notes_enc",),
    PartyPage: ("masked_name_enc", "caller_code_enc"),
}
