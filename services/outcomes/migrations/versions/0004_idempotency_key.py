"""Outcomes: the shared Idempotency-Key table, scoped by caller, replaces the old idempotency_key.

Every old row is dropped, done ones too: the old table did not record whose key it was, so no row
can be given the new scope, and its hash covered the body alone. An attempt retried with the same
key across the upgrade is recorded afresh; one that closed the callback gets 409 instead.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.idempotency import create_idempotency_table

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.drop_table("idempotency_key")
    create_idempotency_table(op)


def downgrade() -> None:
    op.drop_table("idempotency_key")
    op.create_table(
        "idempotency_key",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="done"),
    )
