"""Outcomes: callback view, attempts, loan verification, idempotency keys, outbox, processed events.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.kafka import create_processed_event_table
from shared.outbox import create_outbox_table

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_outbox_table(op)
    create_processed_event_table(op)
    op.create_table(
        "callback_view",
        sa.Column("callback_id", sa.String(64), primary_key=True),
        sa.Column("loan_id", sa.String(128), nullable=False, index=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("branch_id", sa.String(128), nullable=False),
        sa.Column("party_id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("verification_items", sa.Text(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=True),
        sa.Column("deadline", UTCDateTime(), nullable=True),
        sa.Column("final_disposition", sa.String(32), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "attempt",
        sa.Column("attempt_id", sa.String(64), primary_key=True),
        sa.Column("callback_id", sa.String(64), nullable=False, index=True),
        sa.Column("loan_id", sa.String(128), nullable=False, index=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("branch_id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("disposition", sa.String(32), nullable=False),
        sa.Column("reason_code", sa.String(32), nullable=True),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("duration_s", sa.Integer(), nullable=True),
        sa.Column("notes_enc", sa.Text(), nullable=True),
        sa.Column("reschedule_to", UTCDateTime(), nullable=True),
        sa.Column("verification", sa.Text(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False, index=True),
    )
    op.create_table(
        "loan_verification",
        sa.Column("loan_id", sa.String(128), primary_key=True),
        sa.Column("stage", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("parties", sa.Text(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "idempotency_key",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("idempotency_key", "loan_verification", "attempt", "callback_view", "processed_event", "outbox"):
        op.drop_table(table)
