"""`huifang rekey`: re-encrypt every stored personal field with the newest HUIFANG_ENCRYPTION_KEY entry.

Safe beside running services and safe to repeat: rows are read in batches by primary key and each
value is rewritten in its own short transaction, only if it is not already under the newest key and
only if nobody changed it meanwhile (compare and set). A second run finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module

import sqlalchemy as sa
from sqlmodel import SQLModel

from shared.crypto import Cipher
from shared.db import ENCRYPTED_PREFIX, Database, resolve_url
from shared.outbox import OutboxMessage
from shared.runtime import cipher_for
from shared.settings import Settings

BATCH = 200


@dataclass
class Tally:
    """What one run did, per service."""

    rotated: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)


def sealed_columns(service: str) -> dict[type[SQLModel], tuple[str, ...]]:
    """The service's encrypted columns (its models' SEALED) and the outbox's payload."""
    models = import_module(f"services.{service}.models")
    sealed: dict[type[SQLModel], tuple[str, ...]] = dict(models.SEALED)
    sealed[OutboxMessage] = ("payload",)
    return sealed


async def rekey_all(*, settings: Settings, services: list[str]) -> Tally:
    """Rekey each named service's database with the configured keys, newest first."""
    cipher = cipher_for(settings)
    tally = Tally()
    for service in services:
        db = Database(
            resolve_url(settings.database_url, settings.huifang_data_dir, service),
            schema=f"{settings.huifang_db_schema_prefix}{service}",
            source=f"/huifang/{service}",
            cipher=cipher,
        )
        try:
            await rekey_service(service=service, db=db, cipher=cipher, tally=tally)
        finally:
            await db.dispose()
    return tally


async def rekey_service(*, service: str, db: Database, cipher: Cipher, tally: Tally) -> None:
    """Rotate every encrypted value of one service's database to the newest key."""
    for model, columns in sealed_columns(service).items():
        table: sa.Table = model.__table__  # type: ignore[attr-defined]
        for column in columns:
            await _rekey_column(db=db, cipher=cipher, table=table, column=column, service=service, tally=tally)


async def _rekey_column(
    *, db: Database, cipher: Cipher, table: sa.Table, column: str, service: str, tally: Tally
) -> None:
    (key,) = table.primary_key.columns
    value = table.c[column]
    last: object = None
    while True:
        query = sa.select(key, value).where(value.is_not(None)).order_by(key).limit(BATCH)
        if last is not None:
            query = query.where(key > last)
        async with db.uow() as uow:
            rows = (await uow.session.execute(query)).all()
        if not rows:
            return
        for row_key, old in rows:
            await _rekey_value(
                db=db, cipher=cipher, table=table, column=column, row_key=row_key, old=old, service=service, tally=tally
            )
        last = rows[-1][0]


async def _rekey_value(
    *,
    db: Database,
    cipher: Cipher,
    table: sa.Table,
    column: str,
    row_key: object,
    old: str,
    service: str,
    tally: Tally,
) -> None:
    prefix = ENCRYPTED_PREFIX if table.name == OutboxMessage.__tablename__ else ""
    if prefix and not old.startswith(prefix):
        return  # an outbox row of an event without personal data: stored as is
    token = old.removeprefix(prefix)
    if cipher.is_current(token):
        return
    try:
        new = prefix + cipher.rotate(token)
    except ValueError:
        tally.unreadable[service] = tally.unreadable.get(service, 0) + 1
        return
    (key,) = table.primary_key.columns
    async with db.uow() as uow:
        # Compare and set: a value the service rewrote meanwhile is already under the newest key.
        result = await uow.session.execute(
            sa.update(table).where(key == row_key, table.c[column] == old).values({column: new})
        )
        await uow.commit()
    if result.rowcount:  # type: ignore[attr-defined]
        tally.rotated[service] = tally.rotated.get(service, 0) + 1
