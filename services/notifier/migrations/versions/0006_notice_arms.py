"""Notifier: each callback's experiment arms, from `callback.scheduled`, so that its notice uses the arm's
message variant (CONTRACT.md 2.4: the arm travels on `callback.scheduled` only).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "notice_arm",
        sa.Column("callback_id", sa.String(64), primary_key=True),
        sa.Column("experiment", sa.String(64), primary_key=True),
        sa.Column("arm", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("notice_arm")
