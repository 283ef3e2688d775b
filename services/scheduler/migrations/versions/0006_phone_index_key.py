"""Scheduler: the phone index is rebuilt with HUIFANG_INDEX_KEY, over the phone in E.164.

Before, the index was keyed from the oldest encryption key and only stripped, so rotating keys
changed it and `+86 138 0013 8000` missed `+8613800138000`. Each callback's index is recomputed
from its decrypted contact; a person's past calls take the index of their callback. A contact no
configured key can read keeps its index (it could not be matched before either).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import context, op

from shared.crypto import Cipher

revision = "0006"
down_revision = "0005"
BATCH = 500


def upgrade() -> None:
    callback = sa.table("callback", sa.column("seq"), sa.column("contact_enc"), sa.column("phone_index"))
    person_call = sa.table("person_call", sa.column("callback_id"), sa.column("phone_index"))
    conn = op.get_bind()
    cipher: Cipher | None = context.config.attributes.get("cipher")
    last = -1
    while rows := conn.execute(
        sa.select(callback.c.seq, callback.c.contact_enc)
        .where(callback.c.seq > last)
        .order_by(callback.c.seq)
        .limit(BATCH)
    ).all():
        if cipher is None:
            raise RuntimeError("the phone index back-fill needs the service's keys (HUIFANG_INDEX_KEY)")
        for seq, contact_enc in rows:
            try:
                phone = cipher.decrypt_json(contact_enc)["phone"]
            except (ValueError, KeyError, TypeError):
                continue
            conn.execute(sa.update(callback).where(callback.c.seq == seq).values(phone_index=cipher.phone_index(phone)))
        last = rows[-1][0]
    full = sa.table("callback", sa.column("callback_id"), sa.column("phone_index"))
    conn.execute(
        sa.update(person_call).values(
            phone_index=sa.select(full.c.phone_index)
            .where(full.c.callback_id == person_call.c.callback_id)
            .scalar_subquery()
        ).where(sa.exists().where(full.c.callback_id == person_call.c.callback_id))
    )


def downgrade() -> None:
    """The old index cannot be rebuilt without the old derivation; it stays as the new one."""
