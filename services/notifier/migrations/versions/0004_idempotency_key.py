"""Notifier: the shared Idempotency-Key table replaces escalation_request.

The old rows are dropped: they held no response to replay, and a key in them was not scoped by its
caller, so an ack or resolve retried across the upgrade runs again and gets 409 (no longer open).

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.idempotency import create_idempotency_table

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.drop_table("escalation_request")
    create_idempotency_table(op)


def downgrade() -> None:
    op.drop_table("idempotency_key")
    op.create_table(
        "escalation_request",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("escalation_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
