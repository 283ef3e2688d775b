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
from shared.idempotency import IdempotencyRecord
from shared.outbox import OutboxMessage
from shared.runtime import cipher_for
from shared.settings import Settings

BATCH = 200
# Columns holding plain JSON or, marked by ENCRYPTED_PREFIX, an encrypted value.
PREFIXED: dict[type[SQLModel], tuple[str, ...]] = {OutboxMessage: ("payload",), IdempotencyRecord: ("response",)}


@dataclass
class Tally:
    """What one run did, per service."""

    rotated: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)


def sealed_columns(service: str) -> dict[type[SQLModel], tuple[str, ...]]:
    """The service's encrypted columns (its models' SEALED), the outbox's payload and stored responses."""
    models = import_module(f"services.{service}.models")
    sealed: dict[type[SQLModel], tuple[str, ...]] = dict(models.SEALED)
    sealed.update(PREFIXED)
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
    keys = list(table.primary_key.columns)
    value = table.c[column]
    last: tuple[object, ...] | None = None
    while True:
        query = sa.select(*keys, value).where(value.is_not(None)).order_by(*keys).limit(BATCH)
        if last is not None:
            query = query.where(sa.tuple_(*keys) > sa.tuple_(*(sa.literal(v) for v in last)))
        async with db.uow() as uow:
            rows = (await uow.session.execute(query)).all()
        if not rows:
            return
        for *row_key, old in rows:
            where = sa.and_(*(k == v for k, v in zip(keys, row_key, strict=True)), value == old)
            rotated = await _rekey_value(db=db, cipher=cipher, table=table, column=column, where=where, old=old)
            if rotated is not None:
                counts = tally.rotated if rotated else tally.unreadable
                counts[service] = counts.get(service, 0) + 1
        last = tuple(rows[-1][:-1])


async def _rekey_value(
    *, db: Database, cipher: Cipher, table: sa.Table, column: str, where: sa.ColumnElement[bool], old: str
) -> bool | None:
    """True when rotated, False when no key reads it, None when there was nothing to do."""
    prefix = ENCRYPTED_PREFIX if table.name in {model.__tablename__ for model in PREFIXED} else ""
    if prefix and not old.startswith(prefix):
        return None  # plain JSON without personal data (an id-only event, say): stored as is
    token = old.removeprefix(prefix)
    if cipher.is_current(token):
        return None
    try:
        new = prefix + cipher.rotate(token)
    except ValueError:
        return False
    async with db.uow() as uow:
        # Compare and set: a value the service rewrote or deleted meanwhile is left to the service.
        result = await uow.session.execute(sa.update(table).where(where).values({column: new}))
        await uow.commit()
    return bool(result.rowcount) or None  # type: ignore[attr-defined]
