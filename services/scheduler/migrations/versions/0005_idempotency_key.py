"""Scheduler: the shared Idempotency-Key table replaces cancel_request.

The old rows are dropped: they held no response to replay, and a key in them was not scoped by its
caller, so a cancel retried across the upgrade runs again and gets 409 (already cancelled).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.idempotency import create_idempotency_table

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.drop_table("cancel_request")
    create_idempotency_table(op)


def downgrade() -> None:
    op.drop_table("idempotency_key")
    op.create_table(
        "cancel_request",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("callback_id", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
