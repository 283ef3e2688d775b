"""Refusal statistics: counts of closed callbacks per group, aggregated by the database on both dialects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from services.outcomes.models import CallbackArm, CallbackView
from services.outcomes.statistics import p_value, wilson
from shared.db import UnitOfWork, insert_new

GroupBy = Literal["reason", "stage", "role", "agent", "branch", "channel", "day", "hour", "minute", "arm"]
TIME_UNITS = {
    "day": timedelta(days=1),
    "hour": timedelta(hours=1),
    "minute": timedelta(minutes=1),
    "10s": timedelta(seconds=10),  # the dashboard's live view; not offered by the API
}
MAX_BUCKETS = 2000
COLUMNS: dict[str, Any] = {
    "reason": col(CallbackView.reason_code),
    "stage": col(CallbackView.stage),
    "role": col(CallbackView.role),
    "agent": col(CallbackView.agent_id),
    "branch": col(CallbackView.branch_id),
    "channel": col(CallbackView.channel),
}
# Local bucket labels: ISO dates, or ISO minutes for hour and minute buckets.
PG_FORMATS = {
    "day": "YYYY-MM-DD",
    "hour": 'YYYY-MM-DD"T"HH24:MI',
    "minute": 'YYYY-MM-DD"T"HH24:MI',
    "10s": 'YYYY-MM-DD"T"HH24:MI:SS',
}
PY_FORMATS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00", "minute": "%Y-%m-%dT%H:%M", "10s": "%Y-%m-%dT%H:%M:%S"}


class Counts(BaseModel):
    closed: int
    completed: int | None  # None for a refusal reason: completions have no reason
    refused: int
    refusal_rate: float | None  # refused ÷ (completed + refused); None when nothing was completed or refused
    rate_low: float | None = None  # the rate's 95% Wilson interval; None with the rate
    rate_high: float | None = None


class Group(Counts):
    key: str | None
    # With group_by=arm: two-sided p-value of this arm's refusal rate against the experiment's first arm.
    p_value: float | None = None


class Period(BaseModel):
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    totals: Counts
    groups: list[Group]


class Change(BaseModel):
    refusal_rate_points: float | None  # current rate − baseline rate
    relative: float | None  # (current − baseline) ÷ baseline


class RefusalStats(BaseModel):
    group_by: str
    experiment: str | None = None
    timezone: str
    branch_id: str | None
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    totals: Counts
    groups: list[Group]
    compare: Period | None
    change: Change | None


class StatsRequestError(ValueError):
    """The query cannot be answered as asked; the message says why."""


def rate(refused: int, completed: int) -> float | None:
    """Refusal rate: refused ÷ (completed + refused)."""
    return refused / (refused + completed) if refused + completed else None


def interval(*, refused: int, answered: int) -> dict[str, float | None]:
    """The rate_low/rate_high fields of refused ÷ answered; both None when nothing was answered."""
    bounds = wilson(successes=refused, trials=answered)
    return {"rate_low": bounds[0] if bounds else None, "rate_high": bounds[1] if bounds else None}


def counts(*, closed: int, completed: int, refused: int) -> Counts:
    """Counts of a group with its refusal rate and the rate's interval."""
    return Counts(
        closed=closed,
        completed=completed,
        refused=refused,
        refusal_rate=rate(refused, completed),
        **interval(refused=refused, answered=refused + completed),
    )


async def keep_arms(*, uow: UnitOfWork, callback_id: str, arms: dict[str, str]) -> None:
    """Remember a callback's experiment arms, as `callback.scheduled` gave them; the first assignment stays."""
    if arms:
        rows = [{"callback_id": callback_id, "experiment": e, "arm": a} for e, a in arms.items()]
        await uow.session.execute(insert_new(CallbackArm.__table__, uow.dialect).values(rows))  # type: ignore[attr-defined]


def arm_groups(*, rows: list[Group], arm_order: list[str]) -> list[Group]:
    """The arms in the policy's order (an arm with no closed callback too), others after by name, with p-values."""
    found = {g.key: g for g in rows}
    empty = counts(closed=0, completed=0, refused=0).model_dump()
    ordered = [found.get(name) or Group(key=name, **empty) for name in arm_order]
    ordered += sorted((g for g in rows if g.key not in arm_order), key=lambda g: g.key or "")
    if not ordered:
        return []
    first = ordered[0]
    base_refused, base_trials = first.refused, first.refused + (first.completed or 0)
    return [
        g.model_copy(
            update={
                "p_value": p_value(
                    refused=g.refused,
                    trials=g.refused + (g.completed or 0),
                    base_refused=base_refused,
                    base_trials=base_trials,
                )
            }
        )
        for g in ordered
    ]


def check_range(*, start: datetime, end: datetime, group_by: str) -> None:
    """Raise StatsRequestError for an empty range or one that would give too many time buckets."""
    if start >= end:
        raise StatsRequestError("`from` must be before `to`")
    unit = TIME_UNITS.get(group_by)
    if unit is not None and (end - start) / unit > MAX_BUCKETS:
        raise StatsRequestError(f"more than {MAX_BUCKETS} {group_by} buckets: narrow the range or group coarser")


def bucket_expr(*, dialect: str, unit: str, tz: str) -> Any:
    """The local time bucket of closed_at, as a label the database computes."""
    closed = col(CallbackView.closed_at)
    if dialect == "postgresql":
        local = sa.func.timezone(tz, closed)
        if unit == "10s":
            tens = sa.func.floor(sa.extract("second", local) / 10) * 10
            start = sa.func.date_trunc("minute", local) + tens * sa.literal_column("interval '1 second'")
        else:
            start = sa.func.date_trunc(unit, local)
        return sa.func.to_char(start, PG_FORMATS[unit])
    return sa.func.huifang_bucket(closed, unit, tz)


def local_label(*, moment: datetime, unit: str, tz: str) -> str:
    """The label of the local time bucket holding an aware moment."""
    local = moment.astimezone(ZoneInfo(tz))
    if unit == "10s":
        local = local.replace(second=local.second // 10 * 10)
    return local.strftime(PY_FORMATS[unit])


def sqlite_bucket(value: str | None, unit: str, tz: str) -> str | None:
    """SQLite function behind bucket_expr: SQLite has no time zone database, Python has."""
    if value is None:
        return None
    return local_label(moment=datetime.fromisoformat(value).replace(tzinfo=UTC), unit=unit, tz=tz)


def install_sqlite_functions(engine: AsyncEngine) -> None:
    """Register huifang_bucket() on every new SQLite connection of this engine."""

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _register(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.create_function("huifang_bucket", 3, sqlite_bucket, deterministic=True)


def _counts() -> list[Any]:
    final = col(CallbackView.final_disposition)
    return [
        sa.func.count().label("closed"),
        sa.func.coalesce(sa.func.sum(sa.case((final == "completed", 1), else_=0)), 0).label("completed"),
        sa.func.coalesce(sa.func.sum(sa.case((final == "refused", 1), else_=0)), 0).label("refused"),
    ]


def group(row: Any) -> Group:
    """A result row (bucket, closed, completed, refused) as a group with its rate and interval."""
    found = counts(closed=row.closed, completed=int(row.completed), refused=int(row.refused))
    return Group(key=row.bucket, **found.model_dump())


def _where(*, start: datetime, end: datetime, branch_id: str | None) -> list[Any]:
    closed = col(CallbackView.closed_at)
    conditions = [closed >= start, closed < end]
    if branch_id is not None:
        conditions.append(col(CallbackView.branch_id) == branch_id)
    return conditions


async def period(
    *,
    uow: UnitOfWork,
    start: datetime,
    end: datetime,
    group_by: str,
    tz: str,
    branch_id: str | None,
    experiment: str | None = None,
    arm_order: list[str] | None = None,
) -> Period:
    """Totals and per-group counts of the callbacks closed in [start, end).

    With group_by=arm, only the callbacks in the experiment count, each under its arm.
    """
    where = _where(start=start, end=end, branch_id=branch_id)
    if group_by == "arm":
        in_experiment = sa.select(col(CallbackArm.callback_id)).where(col(CallbackArm.experiment) == experiment)
        where.append(col(CallbackView.callback_id).in_(in_experiment))
    total = (await uow.session.execute(sa.select(*_counts()).where(*where))).one()
    totals = counts(closed=total.closed, completed=int(total.completed), refused=int(total.refused))
    if group_by == "reason":
        key = COLUMNS["reason"]
        rows = await uow.session.execute(
            sa.select(key.label("bucket"), sa.func.count().label("refused"))
            .where(*where, col(CallbackView.final_disposition) == "refused")
            .group_by(key)
            .order_by(sa.func.count().desc(), key)
        )
        denominator = int(total.completed) + int(total.refused)
        groups = [
            # A reason's rate is its share of all answered calls, so the reasons' rates add up to the total.
            Group(
                key=r.bucket,
                closed=r.refused,
                completed=None,
                refused=r.refused,
                refusal_rate=r.refused / denominator,
                **interval(refused=r.refused, answered=denominator),
            )
            for r in rows
        ]
        return Period(from_=start, to=end, totals=totals, groups=groups)
    if group_by == "arm":
        arm = col(CallbackArm.arm)
        rows = await uow.session.execute(
            sa.select(arm.label("bucket"), *_counts())
            .join(CallbackArm, col(CallbackArm.callback_id) == col(CallbackView.callback_id))
            .where(*where, col(CallbackArm.experiment) == experiment)
            .group_by(arm)
        )
        found = [group(r) for r in rows]
        return Period(from_=start, to=end, totals=totals, groups=arm_groups(rows=found, arm_order=arm_order or []))
    if group_by in TIME_UNITS:
        key = bucket_expr(dialect=uow.dialect, unit=group_by, tz=tz)
        # By label: PostgreSQL would not match the select's and the GROUP BY's separately bound parameters.
        grouping: Any = sa.literal_column("bucket")
        order: list[Any] = [grouping]
    else:
        key = grouping = COLUMNS[group_by]
        order = [grouping.is_(None), grouping]  # "no agent" last on both databases
    rows = await uow.session.execute(
        sa.select(key.label("bucket"), *_counts()).where(*where).group_by(grouping).order_by(*order)
    )
    groups = [group(r) for r in rows]
    return Period(from_=start, to=end, totals=totals, groups=groups)


def change(*, current: Counts, baseline: Counts) -> Change:
    """How the refusal rate moved from the baseline period to the current one."""
    if current.refusal_rate is None or baseline.refusal_rate is None:
        return Change(refusal_rate_points=None, relative=None)
    delta = current.refusal_rate - baseline.refusal_rate
    return Change(refusal_rate_points=delta, relative=delta / baseline.refusal_rate if baseline.refusal_rate else None)


async def refusal_stats(
    *,
    uow: UnitOfWork,
    start: datetime,
    end: datetime,
    group_by: str,
    tz: str,
    branch_id: str | None = None,
    compare: tuple[datetime, datetime] | None = None,
    experiment: str | None = None,
    arm_order: list[str] | None = None,
) -> RefusalStats:
    """Refusal statistics of a period, optionally against a baseline period (before/after a change).

    With group_by=arm, `experiment` names the experiment and `arm_order` its arms as the policy lists
    them (the first is the one the others are tested against).
    """
    if (group_by == "arm") != (experiment is not None):
        raise StatsRequestError("group_by=arm and experiment go together: give both or neither")
    check_range(start=start, end=end, group_by=group_by)
    if compare is not None:
        check_range(start=compare[0], end=compare[1], group_by=group_by)

    async def of(first: datetime, last: datetime) -> Period:
        return await period(
            uow=uow, start=first, end=last, group_by=group_by, tz=tz, branch_id=branch_id,
            experiment=experiment, arm_order=arm_order,
        )  # fmt: skip

    current = await of(start, end)
    baseline = await of(*compare) if compare is not None else None
    return RefusalStats(
        group_by=group_by,
        experiment=experiment,
        timezone=tz,
        branch_id=branch_id,
        from_=start,
        to=end,
        totals=current.totals,
        groups=current.groups,
        compare=baseline,
        change=change(current=current.totals, baseline=baseline.totals) if baseline else None,
    )
