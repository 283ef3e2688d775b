"""Outcomes: who recorded each attempt (the principal of its key), and dashboard sessions revoked by logout.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("attempt") as batch:
        batch.add_column(sa.Column("recorded_by", sa.String(64), nullable=True))
    op.create_table(
        "revoked_session",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_revoked_session_expires_at", "revoked_session", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revoked_session_expires_at", table_name="revoked_session")
    op.drop_table("revoked_session")
    with op.batch_alter_table("attempt") as batch:
        batch.drop_column("recorded_by")
