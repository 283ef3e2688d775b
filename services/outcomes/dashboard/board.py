"""What the dashboard shows, read from outcomes' own tables (statistics by SQL aggregates)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from services.outcomes.models import Attempt, CallbackView, EscalationView
from services.outcomes.stats import (
    TIME_UNITS,
    Counts,
    Group,
    Period,
    RefusalStats,
    local_label,
    period,
    refusal_stats,
)
from shared.db import UnitOfWork
from shared.labels import REASONS, Label, Language
from shared.policy import Policy

# window name -> (length, time bucket of the trend chart)
WINDOWS: dict[str, tuple[timedelta, str]] = {
    "10m": (timedelta(minutes=10), "10s"),
    "1h": (timedelta(hours=1), "minute"),
    "24h": (timedelta(hours=24), "hour"),
    "30d": (timedelta(days=30), "day"),
}
# Ops staff read the dashboard in both languages: each name in English, then Chinese.
DASHBOARD_LANGUAGES: tuple[Language, ...] = ("en", "zh-CN")
OPEN_ESCALATIONS = ("open", "acknowledged")
# A difference is called when its p-value is under ALPHA; with fewer answered calls than this in an arm,
# a difference that is not (yet) significant means "not enough data", not "no difference".
ALPHA = 0.05
ENOUGH_ANSWERED = 100


def answered(g: Counts) -> int:
    """The calls a rate is taken over: completed plus refused."""
    return g.refused + (g.completed or 0)


def p_text(p: float) -> str:
    """A p-value as the verdict prints it: two significant digits, and never a bare 0."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


@dataclass(frozen=True)
class Verdict:
    """What an arm's difference from the first arm means, in plain words, in both languages."""

    en: str
    zh: str
    significant: bool = False


def verdict(*, arm: Group, first: Group) -> Verdict:
    """The verdict on one arm against the first: a called difference, not enough data, or no clear difference."""
    name, base = arm.key or "?", first.key or "?"
    if arm.p_value is None or arm.refusal_rate is None or first.refusal_rate is None:
        return Verdict(en="not enough data yet", zh="数据还不够")
    p = p_text(arm.p_value)
    if arm.p_value < ALPHA:
        if arm.refusal_rate < first.refusal_rate:
            return Verdict(en=f"{name} refuses less ({p})", zh=f"{name} 拒绝更少（{p}）", significant=True)
        return Verdict(en=f"{name} refuses more ({p})", zh=f"{name} 拒绝更多（{p}）", significant=True)
    if min(answered(arm), answered(first)) < ENOUGH_ANSWERED:
        return Verdict(en=f"not enough data yet ({p})", zh=f"数据还不够（{p}）")
    return Verdict(en=f"no clear difference from {base} ({p})", zh=f"与 {base} 无明显差异（{p}）")


@dataclass(frozen=True)
class ExperimentPanel:
    """One experiment of the policy: its arms in policy order (the first is the baseline) and the verdicts."""

    name: str
    arms: list[Group]
    verdicts: list[Verdict]  # one per arm after the first

    @property
    def scale(self) -> float:
        """The rate axis' end, in percent: the highest interval end, rounded up to 10, at least 10."""
        top = max((g.rate_high or 0.0 for g in self.arms), default=0.0)
        return float(max(10, -(-round(100 * top) // 10) * 10))


async def experiment_panels(
    *, uow: UnitOfWork, policy: Policy, start: datetime, end: datetime
) -> list[ExperimentPanel]:
    """Each experiment of the policy with its arms' counts, rates, intervals and p-values in the window."""
    panels = []
    for experiment in policy.experiments:
        order = [arm.name for arm in experiment.arms]
        found = await period(
            uow=uow, start=start, end=end, group_by="arm", tz="UTC", branch_id=None,
            experiment=experiment.name, arm_order=order,
        )  # fmt: skip
        arms = found.groups
        verdicts = [verdict(arm=g, first=arms[0]) for g in arms[1:]]
        panels.append(ExperimentPanel(name=experiment.name, arms=arms, verdicts=verdicts))
    return panels


@dataclass(frozen=True)
class PageUse:
    """How parties used their own page in the window: callbacks it closed, of all closed, and moves asked for."""

    closed: int
    closed_on_page: int
    reschedules: int

    @property
    def share(self) -> float | None:
        return self.closed_on_page / self.closed if self.closed else None


async def page_use(*, uow: UnitOfWork, start: datetime, end: datetime) -> PageUse:
    """Callbacks closed in the window (all, and on the party's page), and the reschedules parties made there."""
    in_window = sa.and_(col(CallbackView.closed_at) >= start, col(CallbackView.closed_at) < end)
    on_page = sa.func.coalesce(sa.func.sum(sa.case((col(CallbackView.channel) == "self_service", 1), else_=0)), 0)
    closed, closed_on_page = (await uow.session.execute(sa.select(sa.func.count(), on_page).where(in_window))).one()
    reschedules = await uow.session.scalar(
        sa.select(sa.func.count()).where(
            col(Attempt.channel) == "self_service",
            col(Attempt.disposition) == "reschedule_requested",
            col(Attempt.recorded_at) >= start,
            col(Attempt.recorded_at) < end,
        )
    )
    return PageUse(closed=int(closed), closed_on_page=int(closed_on_page), reschedules=int(reschedules or 0))


@dataclass(frozen=True)
class Board:
    window: str
    start: datetime
    end: datetime
    stats: RefusalStats  # by reason, against the previous window
    trend: Period
    branches: Period
    agents: Period
    open_by_state: dict[str, int]
    overdue_count: int
    overdue: list[CallbackView]
    escalations: list[EscalationView]
    escalation_count: int
    level2_count: int
    page: PageUse = PageUse(closed=0, closed_on_page=0, reschedules=0)
    experiments: tuple[ExperimentPanel, ...] = ()

    def charts(self, tz: str) -> dict[str, Any]:
        """The charts' data, as the page's script reads it."""
        unit = WINDOWS[self.window][1]
        by_bucket = {g.key: g for g in self.trend.groups}
        labels = bucket_labels(start=self.start, end=self.end, unit=unit, tz=tz)
        by_rate = sorted(
            (g for g in self.agents.groups if g.refusal_rate is not None), key=lambda g: -(g.refusal_rate or 0)
        )[:12]
        return {
            "trend": {
                "labels": [label[11:] if unit != "day" else label[5:] for label in labels],
                "rate": [_pct(by_bucket[b].refusal_rate) if b in by_bucket else None for b in labels],
                "completed": [by_bucket[b].completed if b in by_bucket else 0 for b in labels],
                "refused": [by_bucket[b].refused if b in by_bucket else 0 for b in labels],
            },
            "reasons": {
                "labels": [bilingual(REASONS, g.key) for g in self.stats.groups],
                "refused": [g.refused for g in self.stats.groups],
            },
            "branches": rates([g for g in self.branches.groups if g.refusal_rate is not None]),
            "agents": rates(by_rate),
        }


def rates(groups: list[Group]) -> dict[str, list[Any]]:
    """A rate chart's data: each group's rate with its 95% interval (error bar) and n, so small groups look unsure."""
    return {
        # No agent: the party answered on their own page.
        "labels": [f"{g.key or 'page 自助'} (n={answered(g)})" for g in groups],
        "rate": [_pct(g.refusal_rate) for g in groups],
        "low": [_pct(g.rate_low) for g in groups],
        "high": [_pct(g.rate_high) for g in groups],
        "n": [answered(g) for g in groups],
    }


def bilingual(table: Mapping[Any, Label], code: str | None) -> str:
    """A code's name from the label table, as the dashboard shows it; an unknown code shows as itself."""
    label = table.get(code or "")
    return " / ".join(label[lang] for lang in DASHBOARD_LANGUAGES) if label else (code or "?")


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def bucket_labels(*, start: datetime, end: datetime, unit: str, tz: str) -> list[str]:
    """Every local bucket label between start and end, in order, so empty buckets show as gaps."""
    step, labels = TIME_UNITS[unit] / 2, dict[str, None]()
    moment = start
    while moment < end:
        labels[local_label(moment=moment, unit=unit, tz=tz)] = None
        moment += step
    labels[local_label(moment=end - timedelta(microseconds=1), unit=unit, tz=tz)] = None  # the current one
    return list(labels)


async def load_board(*, uow: UnitOfWork, window: str, now: datetime, tz: str, policy: Policy | None = None) -> Board:
    """Everything the dashboard shows for a window ending now."""
    length, unit = WINDOWS[window]
    start = now - length
    previous = (start - length, start)
    stats = await refusal_stats(uow=uow, start=start, end=now, group_by="reason", tz=tz, compare=previous)

    async def by(group_by: str) -> Period:
        return await period(uow=uow, start=start, end=now, group_by=group_by, tz=tz, branch_id=None)

    open_views = sa.and_(col(CallbackView.closed_at).is_(None))
    by_state = await uow.session.execute(
        sa.select(col(CallbackView.state), sa.func.count()).where(open_views).group_by(col(CallbackView.state))
    )
    overdue_where = sa.and_(open_views, col(CallbackView.due_at) < now)
    overdue_count = await uow.session.scalar(sa.select(sa.func.count()).where(overdue_where))
    overdue = (
        await uow.session.execute(
            select(CallbackView).where(overdue_where).order_by(col(CallbackView.due_at)).limit(10)
        )
    ).scalars()
    unresolved = col(EscalationView.state).in_(OPEN_ESCALATIONS)
    escalations = (
        await uow.session.execute(
            select(EscalationView)
            .where(unresolved)
            .order_by(col(EscalationView.level).desc(), col(EscalationView.raised_at))
            .limit(20)
        )
    ).scalars()
    level2 = sa.func.coalesce(sa.func.sum(sa.case((col(EscalationView.level) >= 2, 1), else_=0)), 0)
    counts = (await uow.session.execute(sa.select(sa.func.count(), level2).where(unresolved))).one()
    return Board(
        window=window,
        start=start,
        end=now,
        stats=stats,
        trend=await by(unit),
        branches=await by("branch"),
        agents=await by("agent"),
        open_by_state={state: n for state, n in by_state},
        overdue_count=int(overdue_count or 0),
        overdue=list(overdue),
        escalations=list(escalations),
        escalation_count=int(counts[0]),
        level2_count=int(counts[1]),
        page=await page_use(uow=uow, start=start, end=now),
        experiments=tuple(await experiment_panels(uow=uow, policy=policy, start=start, end=now)) if policy else (),
    )
