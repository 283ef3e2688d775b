"""Claiming due rows so that several replicas never take the same one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from shared.db import UnitOfWork


async def claim(
    uow: UnitOfWork,
    table: sa.Table,
    *,
    where: Sequence[sa.ColumnElement[bool]],
    order_by: sa.ColumnElement[Any],
    limit: int,
    values: dict[str, Any],
    joined: tuple[sa.Table, sa.ColumnElement[bool]] | None = None,
) -> list[sa.Row[Any]]:
    """Mark up to `limit` rows matching `where` with `values` and return them.

    PostgreSQL: `FOR UPDATE SKIP LOCKED` lets replicas claim disjoint rows at once.
    SQLite has no SKIP LOCKED; there the transaction holds the write lock (BEGIN IMMEDIATE),
    so `UPDATE … RETURNING` is atomic on its own.
    `joined` (a table and the join condition) also locks each row's partner row, skipping rows whose
    partner another transaction holds: the claimer then never waits on a lock, so it cannot deadlock.
    The rows come back in storage order, not `order_by` (RETURNING keeps no order): sort them if it matters.
    """
    pk = next(iter(table.primary_key.columns))
    chosen = sa.select(pk).where(*where).order_by(order_by).limit(limit)
    if joined is not None:
        chosen = chosen.join(*joined)
    if uow.dialect == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True, of=[table, joined[0]] if joined else None)
    statement = sa.update(table).where(pk.in_(chosen.scalar_subquery())).values(**values).returning(*table.c)
    return list((await uow.session.execute(statement)).all())
