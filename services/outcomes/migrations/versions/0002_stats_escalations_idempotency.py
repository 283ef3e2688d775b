"""Outcomes: who closed a callback and why (statistics), escalations for the dashboard, in-flight keys.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("callback_view") as batch:
        batch.add_column(sa.Column("reason_code", sa.String(32), nullable=True))
        batch.add_column(sa.Column("agent_id", sa.String(128), nullable=True))
        batch.create_index("ix_callback_view_closed_at", ["closed_at"])
    # Callbacks closed before this revision: take agent and reason from their closing attempt.
    op.execute(
        """
        UPDATE callback_view SET
          agent_id = (SELECT a.agent_id FROM attempt a WHERE a.callback_id = callback_view.callback_id
                      AND a.disposition = callback_view.final_disposition ORDER BY a.recorded_at DESC LIMIT 1),
          reason_code = (SELECT a.reason_code FROM attempt a WHERE a.callback_id = callback_view.callback_id
                         AND a.disposition = callback_view.final_disposition ORDER BY a.recorded_at DESC LIMIT 1)
        WHERE final_disposition IN ('completed', 'refused', 'wrong_number')
        """
    )
    with op.batch_alter_table("idempotency_key") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="done"))
    op.create_table(
        "escalation_view",
        sa.Column("escalation_id", sa.String(64), primary_key=True),
        sa.Column("loan_id", sa.String(128), nullable=False, index=True),
        sa.Column("callback_id", sa.String(64), nullable=True),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("assignee", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("raised_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("escalation_view")
    with op.batch_alter_table("idempotency_key") as batch:
        batch.drop_column("state")
    with op.batch_alter_table("callback_view") as batch:
        batch.drop_index("ix_callback_view_closed_at")
        batch.drop_column("agent_id")
        batch.drop_column("reason_code")
