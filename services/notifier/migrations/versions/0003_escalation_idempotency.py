"""Notifier: Idempotency-Key on escalation ack and resolve.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "escalation_request",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("escalation_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("escalation_request")
