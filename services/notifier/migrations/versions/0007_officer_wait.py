"""Notifier: officer notifications made before the officer's email was known (ids and payload only), so the
officer's email goes out when the loan's stage event brings the address.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "officer_wait",
        sa.Column("source_event_id", sa.String(255), primary_key=True),
        sa.Column("loan_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_officer_wait_loan_id", "officer_wait", ["loan_id"])


def downgrade() -> None:
    op.drop_table("officer_wait")
