"""Outcomes: each callback's experiment arms, for the refusal rates per arm (CONTRACT.md 2.4).

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "callback_arm",
        sa.Column("callback_id", sa.String(64), primary_key=True),
        sa.Column("experiment", sa.String(64), primary_key=True, index=True),
        sa.Column("arm", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("callback_arm")
