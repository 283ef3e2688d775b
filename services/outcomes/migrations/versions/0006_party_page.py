"""Outcomes: the party's own page (CONTRACT.md 3.1) and the channel of each attempt.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

from shared.db import BigIntPK, UTCDateTime

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("attempt") as batch:
        batch.add_column(sa.Column("channel", sa.String(16), nullable=False, server_default="phone"))
        batch.alter_column("agent_id", existing_type=sa.String(128), nullable=True)
    with op.batch_alter_table("callback_view") as batch:
        batch.add_column(sa.Column("channel", sa.String(16), nullable=True))
    op.execute("UPDATE callback_view SET channel = 'phone' WHERE final_disposition IS NOT NULL")
    op.create_table(
        "party_page",
        sa.Column("callback_id", sa.String(64), primary_key=True),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("masked_name_enc", sa.Text(), nullable=False),
        sa.Column("caller_code_enc", sa.Text(), nullable=True),
        sa.Column("slots", sa.Text(), nullable=False),
        sa.Column("linked", sa.Boolean(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "party_action",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("callback_id", sa.String(64), nullable=False, index=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("slot", UTCDateTime(), nullable=True),
        sa.Column("reason_code", sa.String(32), nullable=True),
        sa.Column("attempt_id", sa.String(64), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("callback_id", "action", name="uq_party_action"),
    )
    op.create_table(
        "party_post",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("callback_id", sa.String(64), nullable=False, index=True),
        sa.Column("at", UTCDateTime(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("party_post")
    op.drop_table("party_action")
    op.drop_table("party_page")
    with op.batch_alter_table("callback_view") as batch:
        batch.drop_column("channel")
    with op.batch_alter_table("attempt") as batch:
        batch.drop_column("channel")
        batch.alter_column("agent_id", existing_type=sa.String(128), nullable=False)
