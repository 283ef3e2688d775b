"""Scheduler: each callback's caller code, encrypted (CONTRACT.md 2.3).

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("callback") as batch:
        batch.add_column(sa.Column("caller_code_enc", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("callback") as batch:
        batch.drop_column("caller_code_enc")
