"""Scheduler: keep a supervisor's cancel reason, encrypted, instead of emitting it.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("callback") as batch:
        batch.add_column(sa.Column("cancel_note_enc", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("callback") as batch:
        batch.drop_column("cancel_note_enc")
