"""Scheduler tables: callbacks, their durable timers and timelines, and calls per person per day."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import BigIntPK, UTCDateTime, utcnow
from shared.events import CallbackState, Role, Stage

TimerKind = Literal["notice", "due", "deadline"]


class Callback(SQLModel, table=True):
    __tablename__ = "callback"

    seq: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    callback_id: str = Field(unique=True, max_length=64)
    loan_id: str = Field(index=True, max_length=128)
    stage: Stage = Field(sa_type=sa.String(32))
    branch_id: str = Field(max_length=128)
    party_id: str = Field(max_length=128, index=True)
    role: Role = Field(sa_type=sa.String(32))
    state: CallbackState = Field(sa_type=sa.String(32), index=True)
    attempt: int = 1
    calls_made: int = 0
    contact_enc: str = Field(sa_type=sa.Text)  # name, phone, email: encrypted
    phone_index: str = Field(max_length=64, index=True)  # keyed hash, to match a person across loans
    timezone: str = Field(max_length=64)
    language: str = Field(max_length=16)
    contact_consent: bool = True
    due_at: datetime = Field(sa_type=UTCDateTime)
    deadline: datetime = Field(sa_type=UTCDateTime)
    notice_at: datetime = Field(sa_type=UTCDateTime)
    flags: str = Field(default="", max_length=255)
    window_start: str | None = Field(default=None, max_length=5)  # the party's preferred window, local
    window_end: str | None = Field(default=None, max_length=5)
    cancel_note_enc: str | None = Field(default=None, sa_type=sa.Text)  # free text: encrypted, never emitted
    caller_code_enc: str | None = Field(default=None, sa_type=sa.Text)  # six digits: encrypted, personal events only
    arms: str = Field(default="{}", sa_type=sa.Text)  # JSON experiment → arm, kept from the first assignment
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Timer(SQLModel, table=True):
    __tablename__ = "timer"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    callback_id: str = Field(max_length=64, index=True)
    kind: TimerKind = Field(sa_type=sa.String(16))
    fire_at: datetime = Field(sa_type=UTCDateTime)
    fired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancelled: bool = False


class CallbackEvent(SQLModel, table=True):
    """One line of a callback's timeline: what happened and when, ids and times only."""

    __tablename__ = "callback_event"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    callback_id: str = Field(max_length=64, index=True)
    type: str = Field(max_length=64)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    detail: str = Field(default="{}", sa_type=sa.Text)  # JSON, never personal data


class PersonCall(SQLModel, table=True):
    """A call made to a person, from `callback.outcome.recorded`, for the per-person daily cap."""

    __tablename__ = "person_call"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    attempt_id: str = Field(unique=True, max_length=64)
    callback_id: str = Field(max_length=64)
    party_id: str = Field(max_length=128, index=True)
    phone_index: str = Field(max_length=64, index=True)
    local_day: date  # the party's local date of the call
    called_at: datetime = Field(sa_type=UTCDateTime)


class LoanStage(SQLModel, table=True):
    """The stage each loan is in, as upstream last told us."""

    __tablename__ = "loan_stage"

    loan_id: str = Field(primary_key=True, max_length=128)
    stage: Stage = Field(sa_type=sa.String(32))
    changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# Encrypted columns, for `huifang rekey`.
SEALED: dict[type[SQLModel], tuple[str, ...]] = {Callback: ("contact_enc", "cancel_note_enc", "caller_code_enc")}
