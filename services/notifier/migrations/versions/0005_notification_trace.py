"""Notifier: each notification keeps the W3C trace context of the event that asked for it.

The delivery loop continues that trace when it sends, so one trace runs from the HTTP request
that recorded a refusal to the webhook POST (and the receiver gets its `traceparent`).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("notification") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))
        batch.add_column(sa.Column("tracestate", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notification") as batch:
        batch.drop_column("tracestate")
        batch.drop_column("traceparent")
