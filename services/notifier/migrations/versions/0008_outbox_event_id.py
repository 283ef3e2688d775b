"""Notifier: the outbox without its UNIQUE (event_id) (why: shared.outbox.drop_event_id_unique).

Revision ID: 0008
"""

from alembic import op

from shared.outbox import drop_event_id_unique, restore_event_id_unique

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    drop_event_id_unique(op)


def downgrade() -> None:
    restore_event_id_unique(op)
