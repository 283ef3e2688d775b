"""Outcomes: a loan may go through a stage's verification again; earlier rounds' callbacks are superseded.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("callback_view") as batch:
        batch.add_column(sa.Column("superseded", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("callback_view") as batch:
        batch.drop_column("superseded")
