"""Scheduler tables: callbacks and their durable timers."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import BigIntPK, UTCDateTime, utcnow


class Callback(SQLModel, table=True):
    __tablename__ = "callback"

    seq: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    callback_id: str = Field(unique=True, max_length=64)
    loan_id: str = Field(index=True, max_length=128)
    stage: str = Field(max_length=32)
    branch_id: str = Field(max_length=128)
    party_id: str = Field(max_length=128)
    role: str = Field(max_length=32)
    state: str = Field(max_length=32, index=True)
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
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Timer(SQLModel, table=True):
    __tablename__ = "timer"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    callback_id: str = Field(max_length=64, index=True)
    kind: str = Field(max_length=16)  # notice | due | deadline
    fire_at: datetime = Field(sa_type=UTCDateTime)
    fired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancelled: bool = False
