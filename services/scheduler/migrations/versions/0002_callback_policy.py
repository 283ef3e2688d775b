"""Scheduler: the whole callback policy — preferred windows, timelines, calls per person, cancel idempotency.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from shared.db import BigIntPK, UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("callback") as batch:
        batch.add_column(sa.Column("window_start", sa.String(5), nullable=True))
        batch.add_column(sa.Column("window_end", sa.String(5), nullable=True))
    op.create_index("ix_callback_party_id", "callback", ["party_id"])
    op.create_table(
        "callback_event",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("callback_id", sa.String(64), nullable=False, index=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_table(
        "person_call",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("attempt_id", sa.String(64), nullable=False, unique=True),
        sa.Column("callback_id", sa.String(64), nullable=False),
        sa.Column("party_id", sa.String(128), nullable=False, index=True),
        sa.Column("phone_index", sa.String(64), nullable=False, index=True),
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("called_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "cancel_request",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("callback_id", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cancel_request")
    op.drop_table("person_call")
    op.drop_table("callback_event")
    op.drop_index("ix_callback_party_id", "callback")
    with op.batch_alter_table("callback") as batch:
        batch.drop_column("window_end")
        batch.drop_column("window_start")
