"""Notifier: loan contacts, notifications, escalations, outbox, processed events.

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
        "loan_contact",
        sa.Column("loan_id", sa.String(128), primary_key=True),
        sa.Column("branch_id", sa.String(128), nullable=False),
        sa.Column("officer_id", sa.String(128), nullable=False),
        sa.Column("contacts_enc", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "notification",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("notification_id", sa.String(64), nullable=False, unique=True),
        sa.Column("source_event_id", sa.String(255), nullable=False),
        sa.Column("loan_id", sa.String(128), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(255), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("source_event_id", "recipient", "channel", name="uq_notification_source"),
    )
    # The delivery loop only ever scans pending rows by due time.
    op.create_index(
        "ix_notification_pending",
        "notification",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "escalation",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("escalation_id", sa.String(64), nullable=False, unique=True),
        sa.Column("loan_id", sa.String(128), nullable=False, index=True),
        sa.Column("callback_id", sa.String(64), nullable=True),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("assignee", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("raised_at", UTCDateTime(), nullable=False),
        sa.Column("acked_by", sa.String(128), nullable=True),
        sa.Column("ack_note", sa.Text(), nullable=True),
        sa.Column("acked_at", UTCDateTime(), nullable=True),
        sa.Column("resolved_by", sa.String(128), nullable=True),
        sa.Column("resolve_note", sa.Text(), nullable=True),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("escalation")
    op.drop_index("ix_notification_pending", table_name="notification")
    op.drop_table("notification")
    op.drop_table("loan_contact")
    op.drop_table("processed_event")
    op.drop_table("outbox")
