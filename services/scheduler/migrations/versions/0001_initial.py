"""Scheduler: callbacks, timers, outbox, processed events.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from shared.db import BigIntPK, UTCDateTime
from shared.kafka import create_processed_event_table
from shared.outbox import create_outbox_table

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_outbox_table(op)
    create_processed_event_table(op)
    op.create_table(
        "callback",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("callback_id", sa.String(64), nullable=False, unique=True),
        sa.Column("loan_id", sa.String(128), nullable=False, index=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("branch_id", sa.String(128), nullable=False),
        sa.Column("party_id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False, index=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("calls_made", sa.Integer(), nullable=False),
        sa.Column("contact_enc", sa.Text(), nullable=False),
        sa.Column("phone_index", sa.String(64), nullable=False, index=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("contact_consent", sa.Boolean(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("deadline", UTCDateTime(), nullable=False),
        sa.Column("notice_at", UTCDateTime(), nullable=False),
        sa.Column("flags", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "timer",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("callback_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("fire_at", UTCDateTime(), nullable=False),
        sa.Column("fired_at", UTCDateTime(), nullable=True),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
    )
    op.create_index(
        "ix_timer_pending",
        "timer",
        ["fire_at"],
        postgresql_where=sa.text("fired_at IS NULL"),
        sqlite_where=sa.text("fired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("timer")
    op.drop_table("callback")
    op.drop_table("processed_event")
    op.drop_table("outbox")
