"""Notifier: encrypted address and message per notification; the level-2 escalation timer.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("notification") as batch:
        batch.add_column(sa.Column("address_enc", sa.Text(), nullable=True))
        batch.add_column(sa.Column("message_enc", sa.Text(), nullable=True))
    with op.batch_alter_table("escalation") as batch:
        batch.add_column(sa.Column("ack_due_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("escalated_at", UTCDateTime(), nullable=True))
    # The escalation loop only ever scans armed timers by due time.
    op.create_index(
        "ix_escalation_ack_due",
        "escalation",
        ["ack_due_at"],
        postgresql_where=sa.text("ack_due_at IS NOT NULL"),
        sqlite_where=sa.text("ack_due_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_escalation_ack_due", table_name="escalation")
    with op.batch_alter_table("escalation") as batch:
        batch.drop_column("escalated_at")
        batch.drop_column("ack_due_at")
    with op.batch_alter_table("notification") as batch:
        batch.drop_column("message_enc")
        batch.drop_column("address_enc")
